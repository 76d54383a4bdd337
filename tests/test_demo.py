"""img-predict serve: the demo page's server refuses every path out of its folder, answers one request at a time,
and the page (in headless Chromium) shows the answer on its timeline."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from img_model.demo_server import create_app, list_videos, media_path
from tests.real_run import RealRun
from tests.test_report import save_screenshot
from tests.videos import make_video


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the served folder, a video outside it): videos at the top and in a subfolder, a link to a video inside,
    a link to the outside video, a link to a folder outside, and a file that is not a video."""
    root = tmp_path_factory.mktemp("demo")
    folder, outside = root / "served", root / "outside"
    make_video(folder / "a.mp4", seconds=1.0, size="64x48")
    make_video(folder / "sub" / "b.mp4", seconds=1.0, size="64x48")
    make_video(outside / "secret.mp4", seconds=1.0, size="64x48")
    (folder / "notes.txt").write_text("not a video")
    os.symlink(folder / "a.mp4", folder / "inside-link.mp4")
    os.symlink(outside / "secret.mp4", folder / "outside-link.mp4")
    os.symlink(outside, folder / "outside-folder")
    return folder, outside / "secret.mp4"


@pytest.mark.parametrize(
    ("requested", "allowed"),
    [
        ("a.mp4", True),
        ("sub/b.mp4", True),
        ("inside-link.mp4", True),
        ("sub/../a.mp4", True),
        ("../outside/secret.mp4", False),
        ("sub/../../outside/secret.mp4", False),
        ("outside-link.mp4", False),
        ("outside-folder/secret.mp4", False),
        ("notes.txt", False),
        ("missing.mp4", False),
        ("", False),
        ("sub", False),
    ],
)
def test_only_video_files_under_the_folder_are_served(served: tuple[Path, Path], requested: str, allowed: bool) -> None:
    folder, _ = served
    found = media_path(folder.resolve(), requested)
    assert (found is not None) == allowed
    if found is not None:
        assert found.is_relative_to(folder.resolve())


def test_an_absolute_path_is_refused(served: tuple[Path, Path]) -> None:
    folder, secret = served
    assert media_path(folder.resolve(), str(secret)) is None


def test_the_video_list_leaves_out_links_out_of_the_folder(served: tuple[Path, Path]) -> None:
    assert list_videos(served[0].resolve()) == ["a.mp4", "inside-link.mp4", "sub/b.mp4"]


# --- the real server, with the real run's model ------------------------------------------------------------


class CountingPredictor:
    """The real Predictor, counting how many of its predict() calls overlap."""

    def __init__(self, predictor: Any) -> None:
        self.predictor, self.top_k = predictor, predictor.top_k
        self.running = self.most = self.calls = 0
        self._lock = threading.Lock()

    def predict(self, *args: Any) -> Any:
        with self._lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.2)  # long enough for the other requests to arrive while this one runs
            return self.predictor.predict(*args)
        finally:
            with self._lock:
                self.running -= 1


@contextlib.contextmanager
def serving(app: Any) -> Iterator[int]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def raw_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (no client-side normalisation of ../ or %2e)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    for key, value in (headers or {}).items():
        connection.putheader(key, value)
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.read()


def post(port: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", "/api/predict", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


@pytest.fixture(scope="module")
def demo_predictor(real_run: RealRun, tmp_path_factory: pytest.TempPathFactory) -> CountingPredictor:
    from img_model.predictor import Predictor

    predictor = Predictor.from_checkpoint(real_run.checkpoint, "cpu", cache_dir=tmp_path_factory.mktemp("cache"),
                                          weights_dir=real_run.weights_dir, clip_model=str(real_run.clip_model),
                                          threads=1)  # fmt: skip
    return CountingPredictor(predictor)


@pytest.mark.slow
def test_the_server_refuses_paths_out_of_its_folder_however_written(
    served: tuple[Path, Path], demo_predictor: CountingPredictor
) -> None:
    folder, secret = served
    with serving(create_app(demo_predictor, folder)) as port:
        assert raw_get(port, "/media/a.mp4") == (200, (folder / "a.mp4").read_bytes())
        status, body = raw_get(port, "/media/sub/b.mp4", {"Range": "bytes=0-99"})
        assert (status, len(body)) == (206, 100)  # range requests: the player can seek
        refused = [
            "/media/../outside/secret.mp4",
            "/media/..%2Foutside%2Fsecret.mp4",
            "/media/%2e%2e/outside/secret.mp4",
            "/media/%2E%2E%2Foutside%2Fsecret.mp4",
            "/media/sub/..%2F..%2Foutside/secret.mp4",
            "/media/outside-link.mp4",
            "/media/outside-folder/secret.mp4",
            f"/media/{secret}",
            f"/media/{str(secret).replace('/', '%2F')}",
            "/media/notes.txt",
            "/media/%00a.mp4",
        ]
        for path in refused:
            status, body = raw_get(port, path)
            assert status == 404 and secret.read_bytes()[:100] not in body, path
        status, answer = post(port, {"video": "../outside/secret.mp4", "query": "a person waves a hand"})
        assert status == 404 and "no video" in answer["error"]
        assert demo_predictor.calls == 0


@pytest.mark.slow
def test_the_model_answers_one_request_at_a_time_and_the_others_wait(
    served: tuple[Path, Path], demo_predictor: CountingPredictor
) -> None:
    folder, _ = served
    with serving(create_app(demo_predictor, folder)) as port:
        results: list[tuple[int, dict[str, Any]]] = []
        queries = ["a person waves a hand", "the door slams shut", "a dog barks loudly", "someone is on the sofa"]
        threads = [threading.Thread(target=lambda q=q: results.append(post(port, {"video": "a.mp4", "query": q})))
                   for q in queries]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        status, error = post(port, {"video": "a.mp4", "query": "   "})
    assert sorted(status for status, _ in results) == [200] * 4
    assert sorted(answer["answers"][0]["query"] for _, answer in results) == sorted(queries)
    assert demo_predictor.most == 1 and demo_predictor.calls >= 4
    assert status == 400 and error["error"].startswith("empty query")


@pytest.mark.slow
def test_the_demo_page_shows_the_answer_on_its_timeline(chromium: Any, real_run: RealRun, tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(real_run.videos / "clip4.mp4", videos / "kitchen.mp4")
    shutil.copy(real_run.videos / "clip5.mp4", videos / "silent.mp4")
    port = free_port()
    command = [sys.executable, "-m", "img_model.predict_cli", "serve", "--videos", str(videos), "--port", str(port),
               *real_run.predict_options(tmp_path / "cache")]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[0]
            with contextlib.suppress(OSError):
                if raw_get(port, "/api/videos")[0] == 200:
                    break
            assert time.monotonic() < deadline, "the demo server did not start"
            time.sleep(0.25)
        page = chromium.new_page(viewport={"width": 1300, "height": 760})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#video option", state="attached")
        assert page.locator("#video option").all_inner_texts() == ["kitchen.mp4", "silent.mp4"]
        page.fill("#query", "someone knocks on the door")
        page.fill("#topk", "3")
        page.click("#submit")
        page.wait_for_selector("#timeline .span.best", timeout=120_000)
        spans = page.locator("#timeline .span")
        assert spans.count() == 3
        status, answer = post(port, {"video": "kitchen.mp4", "query": "someone knocks on the door", "top_k": 3})
        best = answer["answers"][0]
        assert status == 200 and float(spans.first.get_attribute("data-start")) == pytest.approx(best["start"])
        assert float(spans.first.get_attribute("data-end")) == pytest.approx(best["end"])
        assert page.inner_text("#importance-value") == f"{best['audio_importance']:.3f}"
        assert "knocks" in page.inner_text("#status")  # the unknown word is named
        page.wait_for_function(f"Math.abs(document.getElementById('player').currentTime - {best['start']}) < 1.5")
        save_screenshot(page, tmp_path / "demo.png", "demo.png")

        page.select_option("#video", "silent.mp4")
        page.click("#submit")
        page.wait_for_selector("#timeline .span.best", timeout=120_000)
        assert "answered by the visual-only branch" in page.inner_text("#importance")
        assert not errors, errors
    finally:
        server.terminate()
        server.wait(timeout=30)
