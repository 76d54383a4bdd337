"""The Ray engine on a local Ray cluster started by this module (one for all its tests): the same store as the
local engine, exactly once when workers, actors or the driver are killed, failures kept as records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from extract.core.errors import UsageError, WorkerLostError
from extract.media.sources import scan_folder
from extract.models.base import ExtractorOptions
from extract.models.presets import get_preset
from extract.run import ExtractionRun, RunConfig
from extract.run.engine_ray import RayEngine, connect, import_ray
from extract.store import FeatureStore, list_parts, parts_dir
from tests.broken_media import make_broken_audio_video
from tests.standin_models import HangOnce, KillOnce, KillThenFailToLoad, MeanModel
from tests.store_views import contents, records_per_video, store_differences
from tests.videos import make_video

ROOT = Path(__file__).resolve().parents[1]
CPU = ExtractorOptions(torch.device("cpu"))
FRAMES = get_preset("clip").with_options(weights="mean-colour")
AUDIO = get_preset("vggish")


def test_without_ray_the_engine_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as when it is not installed
    with pytest.raises(UsageError, match=r'pip install -e "\.\[ray\]"'):
        import_ray()


os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the test cluster listens on loopback only (read at import)
ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install -e ".[ray]"')


@pytest.fixture(scope="module")
def cluster() -> str:
    """A local cluster with 2 CPUs and one (pretend) GPU, so a 'GPU' actor runs beside two decode tasks."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # workers import tests.standin_models
    # no memory monitor: it kills workers when the machine is above 95% memory, other programs' memory included
    ray.init(
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        logging_level="WARNING",
        _system_config={"memory_monitor_refresh_ms": 0},
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ray") / "videos"
    for name, seconds in (("a", 2), ("b", 3), ("c", 2), ("d", 1)):
        make_video(folder / f"{name}.mp4", seconds=seconds, size="96x64")
    make_video(folder / "quiet.mp4", seconds=2, size="96x64", silent=True)  # MeanModel fails its audio
    make_broken_audio_video(folder / "broken_audio.mp4")
    (folder / "junk.mp4").write_bytes(b"not a video")
    return folder


def _extract(videos: Path, out: Path, engine: str, build=MeanModel, **config) -> ExtractionRun:
    settings = {"progress": False, "batch_size": 4, "commit_every": 2, "engine": engine, **config}
    run = ExtractionRun(scan_folder(videos), out, [FRAMES, AUDIO], CPU, RunConfig(**settings), build)
    try:
        run.run()
    finally:
        run.close()
    return run


@pytest.fixture(scope="module")
def local_store(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "feats.h5"
    _extract(videos, out, "local")
    return out


@pytest.mark.slow
def test_ray_engine_makes_the_local_engines_store(
    cluster: str, videos: Path, local_store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "feats.h5"
    _extract(videos, out, "ray")
    ray_store, local = contents(out), contents(local_store)
    assert ray_store == local  # features and timestamps bit for bit, ids, metadata, failure records
    assert sorted(local["videos"]) == ["a", "b", "broken_audio", "c", "d", "quiet"]
    assert ("junk", ("clip", "vggish"), "probe", "VideoDecodeError") in local["failures"]
    assert ("quiet", ("vggish",), "compute", "ValueError") in local["failures"]
    assert set(records_per_video(out).values()) == {1}
    assert not list(parts_dir(out).glob("*.tmp"))


@pytest.mark.slow
def test_killed_decode_worker_and_model_actor_lose_and_repeat_nothing(
    cluster: str, videos: Path, local_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "feats.h5"
    _extract(videos, out, "ray", build=KillOnce(markers, decode=True, model=True))
    assert {p.name for p in markers.iterdir()} == {"decode", "model"}  # both processes really were killed
    assert contents(out) == contents(local_store)
    assert set(records_per_video(out).values()) == {1}
    # the lost decode task's video started again; the lost actor's batch went to its restarted self (Ray's retry)
    retried = [r.getMessage() for r in caplog.records if "starting it again" in r.getMessage()]
    assert len(retried) == 1 and "decoding it was lost (WorkerCrashedError" in retried[0]


@pytest.mark.slow
def test_a_killed_driver_resumes_with_every_video_exactly_once(cluster: str, tiny_clip: Path, tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    for n in range(10):  # 1 s each: what is checked is which videos are in the store, and bit for bit
        make_video(videos / f"v{n}.mp4", seconds=1, size="96x64", audio=False)
    out = tmp_path / "feats.h5"

    def command(store: Path, *engine: str) -> list[str]:
        options = ["--clip-model", tiny_clip, "--no-progress", "--batch-size", "1", "--commit-every", "1", *engine]
        return [sys.executable, "-m", "extract.cli", *map(str, [videos, "--out", store, *options])]

    ray_engine = ("--engine", "ray", "--ray-address", cluster)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def stop_after_a_part(how: signal.Signals) -> tuple[int, str]:
        """Start the driver, send `how` once it committed a part; its exit status and stderr."""
        before = len(list_parts(parts_dir(out)))
        driver = subprocess.Popen(command(out, *ray_engine), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 240
        while len(list_parts(parts_dir(out))) == before and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        still_running = driver.poll() is None
        driver.send_signal(how)
        stderr = driver.communicate(timeout=120)[1].decode()
        assert still_running, f"the driver ended before it could be stopped: {stderr}"
        return driver.returncode, stderr

    code, stderr = stop_after_a_part(signal.SIGTERM)  # preemption: finished videos are committed, exit 143
    assert code == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("img-extract: error: terminated (SIGTERM); ")
    assert "re-run the same command to resume" in stderr
    code, stderr = stop_after_a_part(signal.SIGKILL)  # the driver lost at any moment
    assert code == -signal.SIGKILL
    first = len(list_parts(parts_dir(out)))
    assert 2 <= first < 10  # stopped in the middle of the run, twice

    again = subprocess.run(command(out, *ray_engine), env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert f"10 videos: {10 - first} to extract, {first} already in" in again.stderr
    # the reference runs on the actor's one thread (Ray's OMP_NUM_THREADS for an actor without whole CPUs): on some
    # CPUs a float32 matmul split over two threads sums in another order and differs in the last bit
    one_thread = {**env, "OMP_NUM_THREADS": "1"}
    local = subprocess.run(command(tmp_path / "local.h5"), env=one_thread, capture_output=True, text=True)
    assert local.returncode == 0, local.stderr
    assert not (differences := store_differences(out, tmp_path / "local.h5")), "\n".join(differences)  # bit for bit
    assert records_per_video(out) == {f"v{n}": 1 for n in range(10)}
    assert not list(parts_dir(out).glob("*.tmp"))
    with FeatureStore(out) as store:
        assert len(store.video_ids()) == 10


def _in_time(call: Callable[[], object], seconds: float) -> tuple[bool, BaseException | None]:
    """Whether `call` returned (or raised) within `seconds`, and what it raised; a hang stays in its thread."""
    raised: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), raised[0] if raised else None


@pytest.mark.slow
def test_a_hung_decode_task_loses_its_video_after_stall_seconds_and_it_starts_again(
    cluster: str, videos: Path, local_store: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "feats.h5"
    # 30 s, the CLI's smallest: the restarted video's decode task must send its first object within stall_seconds
    # of the restart (a fresh Ray worker process); 15 s ran out at load 17 ("waiting for 2 decode tasks to start")
    finished, error = _in_time(lambda: _extract(videos, out, "ray", build=HangOnce(markers), stall_seconds=30.0), 240)
    assert finished and error is None, f"the driver waited on a hung decode task ({error})"
    assert (markers / "hang").exists()
    assert contents(out) == contents(local_store)
    retried = [r.getMessage() for r in caplog.records if "starting it again" in r.getMessage()]
    assert len(retried) == 1 and "no decoding progress for 30 s" in retried[0]


class _GpuHolder:
    def ready(self) -> bool:
        return True


def test_model_actors_the_cluster_cannot_place_are_an_error_naming_what_they_ask(cluster: str) -> None:
    holder = ray.remote(num_gpus=1, num_cpus=0)(_GpuHolder).remote()  # the cluster's only GPU is taken
    ray.get(holder.ready.remote())
    engine = RayEngine([FRAMES], CPU, RunConfig(progress=False, engine="ray", ray_device="cuda"), MeanModel)
    engine.actors_ready_s = 2.0
    try:
        finished, error = _in_time(engine.prepare, 60)
    finally:
        ray.kill(holder)
        engine.close()
    assert finished, "prepare() waited forever for an actor that cannot be placed"
    assert isinstance(error, WorkerLostError)
    assert "1 of 1 model actors did not start within 2 s; each asks the Ray cluster for 1 GPU and 0 CPU" in str(error)


@pytest.mark.slow
def test_a_restarted_actor_that_cannot_load_its_models_fails_the_videos_naming_why(
    cluster: str, videos: Path, tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "feats.h5"
    _extract(videos, out, "ray", build=KillThenFailToLoad(markers))
    assert (markers / "model").exists()  # the first actor was killed; its restarted self could not load
    with FeatureStore(out) as store:
        messages = [failure.message for failure in store.failures()]
    lost = [message for message in messages if "lost on all 3 tries" in message]
    assert lost and all("could not load its models (RuntimeError: the weights are gone)" in m for m in lost)
    assert not any("KeyError" in message for message in messages)


def test_without_an_address_the_engine_starts_a_cluster_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never one that `ray start` left running on this machine (ray.init() with no address would join it)."""
    calls: list[dict] = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: calls.append(options))
    assert connect(None) is True
    assert calls[0]["address"] == "local"
    assert connect("10.0.0.1:6379") is False and calls[1]["address"] == "10.0.0.1:6379"
