"""img-predict serve: the demo page's server refuses every path out of its folder and every Host header that does
not name this machine, answers one request at a time while the page stays responsive, says every error as one
JSON line, and the page (in headless Chromium) shows the answer on its timeline."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request

from img_model.predict.demo_media import UploadRefused, upload_name
from img_model.predict.demo_server import RequestBodyLimit, create_app, host_names, list_videos, media_path
from tests.broken_media import make_broken_audio_video
from tests.img_cli import run_img_predict
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

    def predict(self, *args: Any, **options: Any) -> Any:
        with self._lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(0.2)  # long enough for the other requests to arrive while this one runs
            return self.predictor.predict(*args, **options)
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


class BodyCounter:
    """ASGI wrapper around the app: counts the request body bytes the server hands to it (what it has read)."""

    def __init__(self, app: Any) -> None:
        self.app, self.read = app, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def counted() -> Any:
            message = await receive()
            self.read += len(message.get("body", b"")) if message["type"] == "http.request" else 0
            return message

        await self.app(scope, counted, send)


@dataclass
class CliServer:
    """`img-predict serve` as a user starts it; `output` (stdout and stderr) once it stopped."""

    process: subprocess.Popen[str]
    output: str = ""


@contextlib.contextmanager
def serving_cli(real_run: RealRun, videos: Path, cache: Path, *options: str) -> Iterator[tuple[int, CliServer]]:
    """`img-predict serve --videos VIDEOS` with the real run's checkpoint (a subprocess), once it answers."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "img_model.cli.predict",
        "serve",
        "--videos",
        str(videos),
        "--port",
        str(port),
        *options,
        *real_run.predict_options(cache),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    server = CliServer(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.process.poll() is None, server.process.communicate()[0]
            with contextlib.suppress(OSError):
                if raw_get(port, "/api/videos")[0] == 200:
                    break
            assert time.monotonic() < deadline, "the demo server did not start"
            time.sleep(0.25)
        yield port, server
    finally:
        server.process.terminate()
        server.output = server.process.communicate(timeout=30)[0]


@dataclass
class StreamedPost:
    sent: int  # body bytes the client got onto the socket before the answer came
    status: int
    answer: dict[str, Any]


def post_streaming(port: int, body: bytes, chunked: bool, send_body: bool = True) -> StreamedPost:
    """POST /api/predict sending `body` 64 KiB at a time (chunked, or after a Content-Length header), stopping
    as soon as the server answers or closes; then read the answer."""
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % len(body)
    connection = socket.create_connection(("127.0.0.1", port), timeout=60)
    connection.sendall(
        b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%s\r\n\r\n" % framing
    )
    sent = 0
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while send_body and sent < len(body) and not select.select([connection], [], [], 0)[0]:
            piece = body[sent : sent + 65536]
            connection.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
        if send_body and chunked and sent == len(body):
            connection.sendall(b"0\r\n\r\n")
    reply = b""
    with contextlib.suppress(ConnectionResetError), connection:
        while chunk := connection.recv(65536):
            reply += chunk
    head, _, text = reply.partition(b"\r\n\r\n")
    return StreamedPost(sent, int(head.split(b" ")[1]), json.loads(text))


@contextlib.contextmanager
def logged() -> Iterator[list[logging.LogRecord]]:
    """The records the server logs meanwhile (uvicorn's own and the product's)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(name) for name in ("uvicorn", "img_vmr")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def raw_get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, bytes]:
    """GET with the path sent exactly as written (no client-side normalisation of ../ or %2e)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.putrequest("GET", path, skip_accept_encoding=True, skip_host="Host" in (headers or {}))
    for key, value in (headers or {}).items():
        connection.putheader(key, value)
    connection.endheaders()
    response = connection.getresponse()
    return response.status, response.read()


def post(port: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    payload = body if isinstance(body, str) else json.dumps(body)
    connection.request("POST", "/api/predict", payload, {"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    text = response.read()
    return response.status, json.loads(text) if text.startswith(b"{") else {"text": text.decode()}


@pytest.fixture(scope="module")
def demo_predictor(real_run: RealRun, tmp_path_factory: pytest.TempPathFactory) -> CountingPredictor:
    from img_model.predict.predictor import Predictor, PredictorOptions

    options = PredictorOptions(
        device="cpu",
        cache_dir=tmp_path_factory.mktemp("cache"),
        weights_dir=real_run.weights_dir,
        clip_model=str(real_run.clip_model),
        threads=1,
    )
    predictor = Predictor.from_checkpoint(real_run.checkpoint, options)
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
        threads = [
            threading.Thread(target=lambda q=q: results.append(post(port, {"video": "a.mp4", "query": q})))
            for q in queries
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        status, error = post(port, {"video": "a.mp4", "query": "   "})
    assert sorted(status for status, _ in results) == [200] * 4
    assert sorted(answer["answers"][0]["query"] for _, answer in results) == sorted(queries)
    assert demo_predictor.most == 1 and demo_predictor.calls >= 4
    assert status == 400 and error["error"].startswith("empty query")


class GatedPredictor:
    """The real Predictor behind a gate the test opens: the model stays busy for as long as the test needs.
    Counts the calls and how many overlap."""

    def __init__(self, predictor: Any) -> None:
        self.predictor, self.top_k = predictor, predictor.top_k
        self.gate = threading.Event()
        self.calls = self.running = self.most = 0
        self._lock = threading.Lock()

    def predict(self, *args: Any, **options: Any) -> Any:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            self.gate.wait(timeout=300)
            return self.predictor.predict(*args, **options)
        finally:
            with self._lock:
                self.running -= 1


class BrokenPredictor:
    """The real Predictor failing the way a GPU out of memory does."""

    def __init__(self, predictor: Any) -> None:
        self.top_k = predictor.top_k

    def predict(self, *args: Any, **options: Any) -> Any:
        raise RuntimeError("CUDA out of memory")


def wait_until(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def send_and_leave(port: int, body: dict[str, Any]) -> socket.socket:
    """A POST whose client will go away before the answer (the caller closes the socket)."""
    payload = json.dumps(body).encode()
    connection = socket.create_connection(("127.0.0.1", port))
    connection.sendall(
        b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
    )
    return connection


@pytest.mark.slow
def test_the_page_and_media_answer_while_predictions_queue_and_gone_clients_are_dropped(
    served: tuple[Path, Path], demo_predictor: CountingPredictor
) -> None:
    folder, _ = served
    gated = GatedPredictor(demo_predictor.predictor)
    app = create_app(gated, folder)
    queued = 50  # more than the 40 threads a server gives its blocking endpoints
    results: list[tuple[int, dict[str, Any]]] = []
    ask = {"video": "a.mp4", "query": "a person waves a hand"}
    threads = [threading.Thread(target=lambda: results.append(post(port, ask))) for _ in range(queued)]
    with serving(app) as port:
        try:
            for thread in threads:
                thread.start()
            wait_until(lambda: app.state.waiting == queued, "the predictions did not all queue")
            gone = [send_and_leave(port, {"video": "a.mp4", "query": "someone is on the sofa"}) for _ in range(3)]
            wait_until(lambda: app.state.waiting == queued + 3, "the requests of the clients that leave did not queue")
            for connection in gone:
                connection.close()
            wait_until(lambda: app.state.waiting == queued, "requests whose clients went away stayed in line")
            assert raw_get(port, "/", timeout=10)[0] == 200  # a server with every thread waiting for the model hangs
            assert raw_get(port, "/api/videos", timeout=10)[0] == 200
            assert raw_get(port, "/media/a.mp4", {"Range": "bytes=0-99"}, timeout=10)[0] == 206
        finally:
            gated.gate.set()
            for thread in threads:
                thread.join(timeout=300)
    assert [status for status, _ in results] == [200] * queued
    assert gated.calls == queued and gated.most == 1  # one at a time; the three gone never reached the model


@pytest.mark.slow
def test_a_host_header_naming_another_machine_is_refused(
    served: tuple[Path, Path], demo_predictor: CountingPredictor
) -> None:
    folder, _ = served
    calls = demo_predictor.calls
    with serving(create_app(demo_predictor, folder)) as port:
        evil = {"Host": f"evil.example:{port}"}  # a web page that rebound evil.example to 127.0.0.1
        refusal = {  # JSON, as every other error: the page shows its "error" (it was Starlette's plain text)
            "error": "this server answers requests for 127.0.0.1, localhost, [::1]; this request's Host header names "
            "'evil.example' (a page elsewhere may be rebinding its name to this machine); to reach the page by "
            "another name, start img-predict serve with --allow-host NAME"
        }
        for path in ("/", "/api/videos", "/media/a.mp4"):
            status, body = raw_get(port, path, evil)
            assert (status, json.loads(body)) == (400, refusal), path
        assert post(port, {"video": "a.mp4", "query": "a person waves a hand"}, evil) == (400, refusal)
        for host in ("[::1", "[::2]:80", "127.0.0.1.evil.example", ""):
            status, body = raw_get(port, "/api/videos", {"Host": host})
            assert status == 400 and "--allow-host NAME" in json.loads(body)["error"], host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert raw_get(port, "/api/videos", {"Host": host})[0] == 200, host
    assert demo_predictor.calls == calls
    assert host_names("0.0.0.0") == ["127.0.0.1", "localhost", "[::1]", "0.0.0.0"]
    assert host_names("::1") == ["127.0.0.1", "localhost", "[::1]"]


@pytest.mark.slow
def test_every_error_is_one_json_line(served: tuple[Path, Path], demo_predictor: CountingPredictor) -> None:
    folder, _ = served
    with serving(create_app(demo_predictor, folder)) as port:
        too_few = post(port, {"video": "a.mp4", "query": "a person", "top_k": 0})
        assert too_few == (422, {"error": "top_k: Input should be greater than or equal to 1"})
        assert post(port, {"video": "a.mp4"}) == (422, {"error": "query: Field required"})
        status, error = post(port, "{not json")
        assert status == 422 and list(error) == ["error"] and "JSON" in error["error"]
        status, body = raw_get(port, "/api/nothing")
        assert (status, json.loads(body)) == (404, {"error": "Not Found"})
    with serving(create_app(BrokenPredictor(demo_predictor), folder)) as port:
        failed = post(port, {"video": "a.mp4", "query": "a person waves a hand"})
        assert failed == (500, {"error": "internal error: RuntimeError: CUDA out of memory"})
        assert raw_get(port, "/api/videos")[0] == 200  # and it keeps serving


FORTY_MB_QUERY = json.dumps({"video": "a.mp4", "query": "a person waves " * 2_800_000}).encode()


@pytest.mark.slow
def test_a_body_over_the_limit_is_refused_while_it_arrives(
    served: tuple[Path, Path], demo_predictor: CountingPredictor
) -> None:
    """A 40 MB body was read whole and tokenised (16.6 s, RSS 1.6 -> 2.3 GB). Now a Content-Length over the limit
    is refused before one byte is read, and a chunked body once the count passes the limit."""
    calls = demo_predictor.calls
    app = BodyCounter(create_app(demo_predictor, served[0]))
    refusal = {"error": "request body larger than 1048576 bytes, this server's limit (--max-body-bytes)"}
    with serving(app) as port, logged() as records:
        declared = post_streaming(port, FORTY_MB_QUERY, chunked=False, send_body=False)
        assert (declared.status, declared.answer, app.read) == (413, refusal, 0)
        streamed = post_streaming(port, FORTY_MB_QUERY, chunked=True)
        assert (streamed.status, streamed.answer) == (413, refusal)
        assert 2**20 < app.read <= 2**20 + 2**19  # the limit and at most one network read past it
        assert streamed.sent < len(FORTY_MB_QUERY) // 2  # the client was stopped (what it sent sits in buffers)
        small = json.dumps({"video": "a.mp4", "query": "a person waves a hand"}).encode()
        assert post_streaming(port, small, chunked=True).status == 200  # under the limit, chunked or not
        assert post(port, {"video": "a.mp4", "query": "a person waves a hand", "top_k": 3})[0] == 200
    assert demo_predictor.calls == calls + 2
    assert not [record for record in records if record.exc_info or record.levelno >= logging.ERROR]
    with serving(create_app(demo_predictor, served[0], max_body_bytes=4096)) as port:
        status, answer = post(port, {"video": "a.mp4", "query": "x " * 2100})
    assert (status, answer) == (
        413,
        {"error": "request body larger than 4096 bytes, this server's limit (--max-body-bytes)"},
    )


def test_a_streamed_upload_with_a_limit_of_its_own_is_stopped_at_it_and_leaves_no_file(tmp_path: Path) -> None:
    """How the video upload (a later issue) reuses RequestBodyLimit: its route's own limit, its body streamed to
    disk, the partial file removed when the limit stops it."""
    app = FastAPI()
    target = tmp_path / "upload.part"

    @app.post("/api/upload")
    async def upload(request: Request) -> dict[str, int]:
        try:
            with open(target, "wb") as file:
                async for chunk in request.stream():
                    file.write(chunk)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return {"bytes": target.stat().st_size}

    app.add_middleware(RequestBodyLimit, max_bytes=1024, route_limits={"/api/upload": (3 * 2**20, "--max-upload")})
    with serving(app) as port:

        def send(body: bytes) -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.putrequest("POST", "/api/upload")
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for start in range(0, len(body), 2**16):
                    piece = body[start : start + 2**16]
                    connection.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                connection.send(b"0\r\n\r\n")
            response = connection.getresponse()
            return response.status, response.read()

        assert send(bytes(2 * 2**20)) == (200, b'{"bytes":2097152}')  # over the default limit, under its own
        status, text = send(bytes(40 * 2**20))
        assert status == 413 and b"larger than 3145728 bytes, this server's limit (--max-upload)" in text
        assert not target.exists()


@pytest.mark.slow
def test_invalid_text_and_overlong_queries_are_400_and_never_reach_the_model(
    served: tuple[Path, Path], demo_predictor: CountingPredictor
) -> None:
    """A lone surrogate was predicted, then the answer failed to encode: a 500 and a traceback in the log."""
    calls = demo_predictor.calls
    with serving(create_app(demo_predictor, served[0])) as port, logged() as records:
        lone = post(port, '{"video": "a.mp4", "query": "a person \\ud800 waves"}')
        assert lone == (400, {"error": "query is not valid text: a lone UTF-16 surrogate (U+D800) at character 10"})
        in_video = post(port, '{"video": "sub/\\udcff.mp4", "query": "a person waves"}')
        assert in_video == (400, {"error": "video is not valid text: a lone UTF-16 surrogate (U+DCFF) at character 5"})
        status, body = raw_get(port, "/media/%ED%A0%80.mp4")
        assert (status, json.loads(body)) == (404, {"error": "no such video under the served folder"})
        long = post(port, {"video": "a.mp4", "query": "a" * 1001})
        assert long == (400, {"error": "query too long: 1001 characters, at most 1000"})
        deep = post(port, {"video": "sub/" * 1250 + "a.mp4", "query": "a person waves"})
        assert deep == (400, {"error": "video too long: 5005 characters, at most 4096"})
        status, answer = post(port, {"video": "a.mp4", "query": "ü" * 400 + " a person waves a hand"})
        assert status == 200, answer  # a long query of real text within the limit is answered
    assert demo_predictor.calls == calls + 1
    assert not [record for record in records if record.exc_info or record.levelno >= logging.ERROR]


def resident_bytes(pid: int) -> int:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024


@pytest.mark.slow  # a subprocess CLI (~5 s of imports)
def test_max_body_and_upload_bytes_are_bounded(tmp_path: Path) -> None:
    for value in ("100", str(64 * 2**20)):
        result = run_img_predict("serve", "--videos", tmp_path, "--max-body-bytes", value, "--checkpoint", "x.pt")
        assert result.returncode == 2 and "'--max-body-bytes'" in result.stderr and "1024<=x<=16777216" in result.stderr
    result = run_img_predict("serve", "--videos", tmp_path, "--max-upload-bytes", "1000", "--checkpoint", "x.pt")
    assert (
        result.returncode == 2
        and "'--max-upload-bytes'" in result.stderr
        and "1048576<=x<=68719476736" in result.stderr
    )


@pytest.mark.slow
def test_an_answer_names_the_video_as_served_never_by_the_servers_path(
    demo_predictor: CountingPredictor, tmp_path: Path
) -> None:
    folder = tmp_path / "served"
    make_broken_audio_video(folder / "sub" / "broken-audio.mkv")
    with serving(create_app(demo_predictor, folder)) as port:
        status, answer = post(port, {"video": "sub/broken-audio.mkv", "query": "a person waves a hand"})
    assert status == 200 and not answer["audio_used"] and answer["video"] == "sub/broken-audio.mkv"
    assert answer["note"].startswith(
        "its audio could not be used: sub/broken-audio.mkv failed at the audio stage: decoding failed ("
    )
    assert str(tmp_path) not in json.dumps(answer)


@pytest.mark.slow  # a subprocess CLI (~5 s of imports)
def test_serve_on_a_port_in_use_is_one_line_before_the_model_loads(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_img_predict("serve", "--videos", tmp_path, "--port", port, "--checkpoint", tmp_path / "best.pt")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"img-predict: error: --port {port}: cannot listen on 127.0.0.1:{port} (another program listens there); "
        "pick another --port\n"
    )


@pytest.mark.slow
def test_the_page_shows_the_servers_error_message(
    chromium: Any, served: tuple[Path, Path], demo_predictor: CountingPredictor
) -> None:
    with serving(create_app(BrokenPredictor(demo_predictor), served[0])) as port:
        page = chromium.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#video option", state="attached")
        page.fill("#query", "a person waves a hand")
        page.click("#submit")
        page.wait_for_selector("#status.error")
        assert page.inner_text("#status") == "internal error: RuntimeError: CUDA out of memory"


@pytest.mark.slow
def test_the_page_keeps_queries_to_the_servers_limit_and_shows_its_refusal(
    chromium: Any, served: tuple[Path, Path], demo_predictor: CountingPredictor
) -> None:
    with serving(create_app(demo_predictor, served[0], max_query_chars=40)) as port:
        page = chromium.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#video option", state="attached")
        assert page.eval_on_selector("#query", "input => input.maxLength") == 40
        page.eval_on_selector("#query", "input => { input.value = 'a person waves a hand '.repeat(3); }")  # pasted
        page.click("#submit")
        page.wait_for_selector("#status.error")
        assert page.inner_text("#status") == "query too long: 66 characters, at most 40"


def shown_probability(value: float) -> str:
    """A probability as the page writes it (contract: below 0.001 and above 0, "< 0.001"; never "0.000")."""
    return "0" if value == 0 else "< 0.001" if value < 0.001 else f"{value:.3f}"


@pytest.mark.slow
def test_serve_refuses_a_40_mb_body_without_growing_and_its_page_shows_the_answer_on_its_timeline(
    chromium: Any, real_run: RealRun, tmp_path: Path
) -> None:
    """One `img-predict serve` (its start and model load are the expensive part): first its --max-body-bytes
    refuses 40 MB bodies without the server growing, then the page in Chromium asks it and draws the answer."""
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(real_run.videos / "clip4.mp4", videos / "kitchen.mp4")
    shutil.copy(real_run.videos / "clip5.mp4", videos / "silent.mp4")
    query = "someone knocks on the door"
    options = ("--allow-host", "demo.local", "--max-body-bytes", "65536")
    with serving_cli(real_run, videos, tmp_path / "cache", *options) as (port, server):
        assert post_streaming(port, FORTY_MB_QUERY[: 2**17], chunked=True).status == 413  # its imports done
        before = resident_bytes(server.process.pid)
        declared = post_streaming(port, FORTY_MB_QUERY, chunked=False)
        streamed = post_streaming(port, FORTY_MB_QUERY, chunked=True)
        grown = resident_bytes(server.process.pid) - before
        evil = raw_get(port, "/api/videos", {"Host": "evil.example"})
        refusal = {"error": "request body larger than 65536 bytes, this server's limit (--max-body-bytes)"}
        assert (declared.status, declared.answer) == (streamed.status, streamed.answer) == (413, refusal)
        assert grown < 16 * 2**20, f"the server grew by {grown / 2**20:.0f} MiB"
        assert evil[0] == 400 and b"--allow-host" in evil[1]

        page = chromium.new_page(viewport={"width": 1300, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(
            f"http://127.0.0.1:{port}/?video=kitchen.mp4&q={query.replace(' ', '+')}&k=8&start=4&end=9&drop_audio=1"
        )
        page.wait_for_selector("#timeline .span.best", timeout=120_000)
        assert page.locator("#video option").all_inner_texts() == ["kitchen.mp4", "silent.mp4"]
        spans = page.locator("#timeline .span")
        assert spans.count() == 8
        timeline = page.locator("#timeline").bounding_box()
        for number in range(8):  # every top span is drawn inside the timeline, which grows with k
            box = spans.nth(number).bounding_box()
            assert box["y"] + box["height"] <= timeline["y"] + timeline["height"], number
        request = {"video": "kitchen.mp4", "query": query, "top_k": 8, "start": 4, "end": 9, "drop_audio": True}
        status, answer = post(port, request)
        best = answer["answers"][0]
        assert status == 200 and float(spans.first.get_attribute("data-start")) == pytest.approx(best["start"])
        assert float(spans.first.get_attribute("data-end")) == pytest.approx(best["end"])
        assert page.inner_text("#importance-value") == shown_probability(best["audio_importance"])
        assert "knocks" in page.inner_text("#words")  # the unknown word is named
        rows = page.locator("#branches tr").evaluate_all("rows => rows.map((row) => row.dataset.branch)")
        assert rows == ["fused", "visual only", "audio only", "fused, audio dropped", "truth"]
        for name, branch in (("fused", "fused"), ("visual only", "visual"), ("audio only", "audio")):
            cells = page.locator(f"#branches tr[data-branch='{name}'] td").all_inner_texts()
            assert cells[1] == f"{best['branches'][branch]['start']:.2f} s", name
            assert cells[4] == f"{best['iou'][branch]:.3f}", name
        dropped = page.locator("#branches tr[data-branch='fused, audio dropped'] td").all_inner_texts()
        assert dropped[1:3] == [f"{best['drop_audio'][key]:.2f} s" for key in ("start", "end")]
        assert page.locator("#saliency").count() == (1 if best["saliency"] else 0)
        assert page.locator("#waveform").count() == 1
        page.wait_for_function(  # every top span's keyframe, made by the server, decoded by the browser
            "[...document.querySelectorAll('#spans img')]"
            ".every((image) => image.complete && image.naturalWidth === 160)"
        )
        assert page.locator("#spans img").count() == 8
        page.wait_for_function(  # the answer plays (and stops at its end)
            f"player.currentTime >= {best['start']} - 0.05 && player.currentTime <= {best['end']} + 0.05"
        )
        save_screenshot(page, tmp_path / "demo.png", "demo.png")

        page.select_option("#video", "silent.mp4")
        page.fill("#truth-start", "")
        page.fill("#truth-end", "")
        page.click("#submit")
        page.wait_for_selector("#timeline .span.best", timeout=120_000)
        assert "answered by the visual-only branch" in page.inner_text("#importance")
        audio_only = page.locator("#branches tr[data-branch='audio only'] td").all_inner_texts()
        assert audio_only[1:] == ["n/a"] * 4
        assert not errors, errors
        assert raw_get(port, "/api/videos", {"Host": f"demo.local:{port}"})[0] == 200  # --allow-host
        assert raw_get(port, "/api/videos", {"Host": f"evil.example:{port}"})[0] == 400
    assert f"img-predict: demo page on http://127.0.0.1:{port} (Ctrl-C stops it)" in server.output
    assert "Traceback" not in server.output and "ERROR" not in server.output, server.output


@pytest.mark.parametrize(
    ("name", "kept"),
    [
        ("clip.mp4", "clip.mp4"),
        ("my clip (1).MKV", "my_clip_1_.mkv"),
        ("../../etc/passwd.mp4", "passwd.mp4"),
        ("C:\\Users\\me\\x.webm", "x.webm"),
        (".hidden.mp4", "hidden.mp4"),
        (".mp4", "video.mp4"),
        ("a" * 300 + ".mp4", "a" * 96 + ".mp4"),
        ("notes.txt", None),
        ("clip.mp4.exe", None),
    ],
)
def test_an_upload_is_kept_under_a_plain_video_name(name: str, kept: str | None) -> None:
    if kept is None:
        with pytest.raises(UploadRefused, match="is not a video file name: upload a file ending in one of"):
            upload_name(name)
    else:
        assert upload_name(name) == kept


@pytest.mark.slow
def test_the_true_span_keyframes_and_waveform_are_checked_before_use(
    served: tuple[Path, Path], demo_predictor: CountingPredictor
) -> None:
    calls = demo_predictor.calls
    ask = {"video": "a.mp4", "query": "a person waves a hand"}
    with serving(create_app(demo_predictor, served[0])) as port:
        assert post(port, {**ask, "start": 5, "end": 2}) == (422, {"error": "start 5 s must be before end 2 s"})
        assert post(port, {**ask, "start": 1}) == (
            422,
            {"error": "start and end: give both (the true span) or neither"},
        )
        below = post(port, {**ask, "start": -1, "end": 2})
        assert below == (422, {"error": "start: Input should be greater than or equal to 0"})
        not_finite = post(port, json.dumps({**ask, "start": float("nan"), "end": 2}))
        assert not_finite == (422, {"error": "start: Input should be a finite number"})
        status, image = raw_get(port, "/api/keyframe?video=sub/b.mp4&t=0.5")
        assert status == 200 and image[:3] == b"\xff\xd8\xff"  # a JPEG
        for address in ("/api/keyframe?video=a.mp4&t=-1", "/api/keyframe?video=a.mp4&t=inf"):
            assert raw_get(port, address)[0] == 422, address
        status, body = raw_get(port, "/api/keyframe?video=a.mp4&t=30")
        assert status == 422 and json.loads(body)["error"].startswith("a.mp4: no frame at 30.00 s, past its end")
        for address in ("/api/keyframe?video=outside-link.mp4&t=0", "/api/waveform?video=../outside/secret.mp4"):
            assert raw_get(port, address) == (404, b'{"error":"no such video under the served folder"}'), address
        status, body = raw_get(port, "/api/waveform?video=a.mp4")
        wave = json.loads(body)
        assert status == 200 and wave["duration"] == pytest.approx(1.0, abs=0.05) and len(wave["peaks"]) == 800
        assert 0.1 < max(high for _, high in wave["peaks"]) < 0.2  # make_video's sine: lavfi's amplitude, 1/8
    assert demo_predictor.calls == calls


# --- the page's upload, playback, chart, link and download, in headless Chromium ------------------------------


def open_page(chromium: Any, port: int, address: str = "/") -> Any:
    """The demo page at `address`, its video list loaded; page errors fail the test when it ends (see answered)."""
    page = chromium.new_page(viewport={"width": 1300, "height": 760})
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.goto(f"http://127.0.0.1:{port}{address}")
    page.wait_for_selector("#video option", state="attached")
    return page


def ask_on_page(page: Any, query: str = "a person waves a hand") -> dict[str, Any]:
    """Type `query`, press Find, and return the answer the page holds once it is drawn."""
    page.fill("#query", query)
    page.click("#submit")
    page.wait_for_function(
        "query => answer && answer.answers[0].query === query && !document.getElementById('submit').disabled",
        arg=query,
        timeout=120_000,
    )
    return answered(page)


def answered(page: Any) -> dict[str, Any]:
    page.wait_for_selector("#timeline .span.best", timeout=120_000)
    assert not page.errors, page.errors
    return page.evaluate("answer")


@pytest.mark.slow
def test_the_page_uploads_a_video_and_refuses_what_is_not_one(
    chromium: Any, demo_predictor: CountingPredictor, tmp_path: Path
) -> None:
    folder = tmp_path / "served"
    make_video(folder / "a.mp4", seconds=1.0, size="64x48")
    clip = make_video(tmp_path / "my clip.mp4", seconds=1.0, size="64x48")
    (tmp_path / "fake.mp4").write_text("ffconcat version 1.0\nfile a.mp4\n")  # a video's name, not its content
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "big.mp4").write_bytes(bytes(200_000))
    with serving(create_app(demo_predictor, folder, max_upload_bytes=100_000)) as port:
        page = open_page(chromium, port)

        def upload(name: str) -> str:
            page.set_input_files("#upload", tmp_path / name)
            page.wait_for_function("!document.getElementById('status').textContent.startsWith('Uploading')")
            return page.inner_text("#status")

        assert upload("my clip.mp4") == "Uploaded as uploads/my_clip.mp4"
        assert upload("my clip.mp4") == "Uploaded as uploads/my_clip-1.mp4"  # never replaces a file
        assert page.locator("#video option").all_inner_texts() == [
            "a.mp4",
            "uploads/my_clip-1.mp4",
            "uploads/my_clip.mp4",
        ]
        assert page.input_value("#video") == "uploads/my_clip-1.mp4"
        assert raw_get(port, "/media/uploads/my_clip.mp4") == (200, clip.read_bytes())  # served as the others
        fake = upload("fake.mp4")
        assert fake.startswith("fake.mp4: not a readable media file (") and fake.endswith("; upload a video file")
        assert upload("notes.txt").startswith("'notes.txt' is not a video file name: upload a file ending in one of")
        too_big = "request body larger than 100000 bytes, this server's limit (--max-upload-bytes)"
        assert upload("big.mp4") == too_big  # the page says the server's refusal before sending the file
        assert page.eval_on_selector("#status", "node => node.className") == "error"
        assert not page.errors, page.errors
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/api/upload?name=big.mp4", bytes(200_000))
        response = connection.getresponse()
        assert (response.status, json.loads(response.read())) == (413, {"error": too_big})
    assert sorted(path.name for path in (folder / "uploads").iterdir()) == ["my_clip-1.mp4", "my_clip.mp4"]


@pytest.mark.slow
def test_an_upload_the_folder_cannot_keep_is_one_line_without_the_servers_path(
    demo_predictor: CountingPredictor, tmp_path: Path
) -> None:
    folder = tmp_path / "served"
    make_video(folder / "a.mp4", seconds=1.0, size="64x48")
    (folder / "uploads").write_text("a file where the uploads folder would be")
    with serving(create_app(demo_predictor, folder)) as port, logged() as records:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.request("POST", "/api/upload?name=clip.mp4", (folder / "a.mp4").read_bytes())
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert raw_get(port, "/api/videos")[0] == 200  # and it keeps serving
    assert (response.status, answer) == (
        500,
        {"error": "cannot keep the upload in the served folder's uploads/: File exists"},
    )
    assert [record.levelno for record in records if "cannot keep an upload" in record.getMessage()] == [logging.ERROR]


@pytest.mark.slow
def test_a_span_plays_to_its_end_and_stops_or_loops(
    chromium: Any, served: tuple[Path, Path], demo_predictor: CountingPredictor
) -> None:
    address = "/?video=a.mp4&q=a+person+waves+a+hand&start=0.1&end=0.45"
    with serving(create_app(demo_predictor, served[0])) as port:
        page = open_page(chromium, port, address)
        answered(page)
        page.evaluate("player.pause()")
        page.evaluate(  # what the player does from now on: its times, when it starts playing, where it seeks to
            "window.seen = []; player.addEventListener('timeupdate', () => seen.push(player.currentTime));"
            "player.addEventListener('playing', () => seen.push('playing'));"
            "player.addEventListener('seeked', () => seen.push('seeked ' + player.currentTime.toFixed(2)))"
        )
        page.click("#play-truth")
        page.wait_for_function("seen.includes('playing') && player.paused", timeout=30_000)
        assert page.evaluate("player.currentTime") == pytest.approx(0.45)  # stopped at the truth's end, not 1.0 s
        assert max(t for t in page.evaluate("seen") if isinstance(t, float)) <= 0.45 + 0.1
        page.select_option("#at-end", "loop")
        page.evaluate("seen = []")
        page.click("#play-truth")
        page.wait_for_function(  # played to the end and went back to the start twice, and plays on
            "seen.slice(seen.indexOf('playing')).filter((event) => event === 'seeked 0.10').length >= 2",
            timeout=30_000,
        )
        assert not page.evaluate("player.paused")
        assert max(t for t in page.evaluate("seen") if isinstance(t, float)) <= 0.45 + 0.1
        assert not page.errors, page.errors


@pytest.mark.slow
def test_p_start_and_p_end_share_one_labelled_probability_axis(
    chromium: Any, real_run: RealRun, demo_predictor: CountingPredictor, tmp_path: Path
) -> None:
    (tmp_path / "videos").mkdir()
    shutil.copy(real_run.videos / "clip4.mp4", tmp_path / "videos" / "kitchen.mp4")  # 12 s: 12 steps
    with serving(create_app(demo_predictor, tmp_path / "videos")) as port:
        page = open_page(chromium, port)
        answer = ask_on_page(page)["answers"][0]
        scales = []  # pixels per unit of probability, of each curve
        for name, values in (("p-start", answer["start_probabilities"]), ("p-end", answer["end_probabilities"])):
            heights = [float(point.split(",")[1]) for point in page.get_attribute(f"#{name}", "points").split()]
            low, high = values.index(min(values)), values.index(max(values))
            scales.append((heights[low] - heights[high]) / (values[high] - values[low]))
        assert scales[0] == pytest.approx(scales[1], rel=1e-2)  # each scaled to its own peak, they differ
        top = float(page.get_attribute("#probability-axis", "data-max"))
        peak = max(answer["start_probabilities"] + answer["end_probabilities"])
        assert peak <= top < 5 * peak
        labels = page.locator("#probability-axis text").evaluate_all("nodes => nodes.map((node) => node.textContent)")
        assert "probability" in labels and f"{top:g}" in labels
        step = page.evaluate(
            "Math.min(answer.num_steps - 1, Math.floor(player.currentTime / answer.duration * answer.num_steps))"
        )
        legend = page.inner_text("#playhead-legend")
        assert f"P(start) {answer['start_probabilities'][step]:.3f}" in legend.replace("< 0.001", "0.000")
        sizes = page.evaluate(
            "[...document.querySelectorAll('#timeline text, .legend, #playhead-legend')]"
            ".map((node) => parseFloat(getComputedStyle(node).fontSize))"
        )
        assert min(sizes) >= 11
        assert not page.errors, page.errors


@pytest.mark.slow
def test_a_shared_link_restores_the_query_and_runs_it(
    chromium: Any, served: tuple[Path, Path], demo_predictor: CountingPredictor
) -> None:
    address = "/?video=sub%2Fb.mp4&q=a+person+waves+a+hand&k=3&start=0.2&end=0.6"
    with serving(create_app(demo_predictor, served[0])) as port:
        page = open_page(chromium, port, address)
        answer = answered(page)["answers"][0]
        assert page.input_value("#video") == "sub/b.mp4" and page.input_value("#query") == "a person waves a hand"
        assert (page.input_value("#topk"), page.input_value("#truth-start"), page.input_value("#truth-end")) == (
            "3",
            "0.2",
            "0.6",
        )
        assert answer["truth"] == {"start": 0.2, "end": 0.6} and page.evaluate("asked.top_k") == 3
        assert float(page.get_attribute("#truth-bar", "data-end")) == 0.6
        fused = page.locator("#branches tr[data-branch='fused'] td").all_inner_texts()
        assert fused[-1] == f"{answer['iou']['fused']:.3f}"
        page.fill("#truth-start", "")
        page.fill("#truth-end", "")
        ask_on_page(page, "the door slams shut")
        assert page.evaluate("location.search") == "?video=sub%2Fb.mp4&q=the+door+slams+shut&k=3"
        assert page.get_attribute("#share", "href") == "/" + page.evaluate("location.search")
        assert not page.errors, page.errors


@pytest.mark.slow
def test_the_answer_downloads_as_the_servers_json(
    chromium: Any, served: tuple[Path, Path], demo_predictor: CountingPredictor, tmp_path: Path
) -> None:
    with serving(create_app(demo_predictor, served[0])) as port:
        page = open_page(chromium, port)
        shown = ask_on_page(page)
        with page.expect_download() as download:
            page.click("#download")
        saved = tmp_path / "answer.json"
        download.value.save_as(saved)
        assert download.value.suggested_filename == "a-answer.json"
        direct = post(port, {"video": "a.mp4", "query": "a person waves a hand"})
    assert direct == (200, shown) and json.loads(saved.read_text()) == shown
