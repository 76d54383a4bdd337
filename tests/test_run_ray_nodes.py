"""The Ray engine on a real multi-node cluster on this machine (tests/ray_nodes.py: a head without CPUs and two
one-CPU nodes, each a `ray start` of its own), killed as a cluster loses things: a node's raylet, a decode
worker, the model actor's process, the driver; and a cluster left without any CPU. Every run goes through
img-extract as a user runs it, and every video must be in the store exactly once.

A kill must land mid-run, on a video being decoded, not between two: the nodes run a wrapper as their ffmpeg
that holds the first ffmpeg reading one chosen video (HOLD_VIDEO) until the test has done its deed, and writes
the pid of the Ray worker decoding it. Videos before it are committed by then, videos after it wait for it
(one decode task at a time: 2 CPUs less the model actor's one).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from extract.media.ffmpeg import ffmpeg_path
from extract.store import FeatureStore
from extract.store.parts import list_parts, parts_dir
from tests.store_views import records_per_video
from tests.videos import make_video

ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install -e ".[ray]"')

from tests.ray_nodes import LocalCluster  # noqa: E402 (after the importorskip)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = [f"v{n}" for n in range(5)]
HOLD_VIDEO = "v2"  # in the middle: two committed before it, two waiting behind it
RUN_TIMEOUT_S = 240.0  # a driver that has not ended by then hangs: the test fails (it used to wait forever)

HOLD_FFMPEG = """#!/bin/sh
# the test's ffmpeg: the first one that reads the video named in $hold/video waits until $hold/release exists,
# after writing the pid of its parent (the Ray worker decoding the video) to $hold/held/pid
hold="{hold}"
if [ -f "$hold/video" ]; then
  case "$*" in
    *"$(cat "$hold/video")"*)
      if mkdir "$hold/held" 2>/dev/null; then
        echo "$PPID" > "$hold/held/pid.tmp" && mv "$hold/held/pid.tmp" "$hold/held/pid"
        while [ ! -e "$hold/release" ]; do sleep 0.05; done
      fi ;;
  esac
fi
exec "{ffmpeg}" "$@"
"""


class Hold:
    """The wrapper's control folder: which video to hold, the held worker's pid, the release."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ffmpeg = folder.parent / "ffmpeg-hold"
        self.ffmpeg.write_text(HOLD_FFMPEG.format(hold=folder, ffmpeg=ffmpeg_path()))
        self.ffmpeg.chmod(0o755)

    def arm(self, video: Path) -> None:
        for name in ("release", "held/pid", "held/pid.tmp", "video"):
            (self.folder / name).unlink(missing_ok=True)
        if (self.folder / "held").exists():
            (self.folder / "held").rmdir()
        (self.folder / "video").write_text(str(video))

    def held_worker(self) -> int | None:
        pid = self.folder / "held" / "pid"
        return int(pid.read_text()) if pid.exists() else None

    def release(self) -> None:
        (self.folder / "release").touch()


@pytest.fixture(scope="module")
def hold(tmp_path_factory: pytest.TempPathFactory) -> Hold:
    return Hold(tmp_path_factory.mktemp("hold") / "control")


@pytest.fixture(scope="module")
def cluster(hold: Hold) -> Iterator[LocalCluster]:
    """A head without CPUs (it keeps the GCS; nothing of a run lands on it, so any node may be killed) and two
    one-CPU nodes. Stopped by pid at the end, with every process they started."""
    paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {"IMG_FFMPEG": str(hold.ffmpeg), "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    started = LocalCluster.start([0], env)
    try:
        started.add_nodes([1, 1])
        yield started
    finally:
        started.stop()
        assert not started.leftovers(), "a Ray process outlived the cluster"


@pytest.fixture
def two_cpu_nodes(cluster: LocalCluster) -> LocalCluster:
    """The cluster with two live one-CPU nodes (a node killed by an earlier test is replaced)."""
    alive = [node for node in cluster.nodes[1:] if node.process.poll() is None and node.processes()]
    missing = 2 - len(alive)
    if missing > 0:
        cluster.add_nodes([1] * missing)
    return cluster


@pytest.fixture
def cpu_nodes(cluster: LocalCluster) -> LocalCluster:
    """The cluster with at least one live one-CPU node (one is started only when none is left): the test that
    kills every CPU node runs on what the lost-node test left, without waiting for a node to start."""
    if not [node for node in cluster.nodes[1:] if node.process.poll() is None and node.processes()]:
        cluster.add_nodes([1])
    return cluster


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    for name in VIDEOS:
        make_video(folder / f"{name}.mp4", seconds=1, size="64x48", audio=False)
    return folder


class Driver:
    """img-extract --engine ray on the cluster, as a user runs it (a subprocess), stderr kept in a file."""

    def __init__(self, cluster: LocalCluster, hold: Hold, videos: Path, out: Path, tiny_clip: Path) -> None:
        self.cluster, self.hold, self.videos, self.out, self.tiny_clip = cluster, hold, videos, out, tiny_clip
        self.runs = 0

    def command(self, *extra: str) -> list[str]:
        options = ["--engine", "ray", "--ray-address", self.cluster.address, "--device", "cpu", "--no-progress"]
        options += ["--clip-model", str(self.tiny_clip), "--batch-size", "2", "--commit-every", "1", *extra]
        return [sys.executable, "-m", "extract.cli", str(self.videos), "--out", str(self.out), *options]

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        self.runs += 1
        self.stderr = self.out.with_name(f"driver-{self.runs}.err")
        env = {**self.cluster.driver_env(), "HF_HUB_OFFLINE": "1", "IMG_FFMPEG": str(self.hold.ffmpeg)}
        with self.stderr.open("wb") as err:
            return subprocess.Popen(self.command(*extra), env=env, stdout=subprocess.DEVNULL, stderr=err)

    def wait(self, process: subprocess.Popen[bytes], timeout: float = RUN_TIMEOUT_S) -> tuple[int, str]:
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"img-extract did not end within {timeout:.0f} s: {self.lines()[-8:]}")
        return code, self.stderr.read_text(errors="replace")

    def lines(self) -> list[str]:
        """What the user read: img-extract's own lines (Ray's forwarded worker and raylet logs left out)."""
        text = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        return [line for line in text.splitlines() if line.startswith("img-extract: ")]

    def held_mid_run(self, process: subprocess.Popen[bytes]) -> int:
        """Wait until HOLD_VIDEO is held in its decode task and a part is committed; the held worker's pid."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            pid = self.hold.held_worker()
            if pid is not None and list_parts(parts_dir(self.out)):
                return pid
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the run never reached {HOLD_VIDEO} with a part committed: {self.lines()}")
            time.sleep(0.05)


@pytest.fixture
def driver(cluster: LocalCluster, hold: Hold, videos: Path, tmp_path: Path, tiny_clip: Path) -> Driver:
    hold.arm(videos / f"{HOLD_VIDEO}.mp4")
    return Driver(cluster, hold, videos, tmp_path / "feats.h5", tiny_clip)


def assert_every_video_once(out: Path, videos: list[str] = VIDEOS) -> None:
    assert records_per_video(out) == {name: 1 for name in videos}  # none missing, none repeated
    with FeatureStore(out) as store:
        assert sorted(store.video_ids()) == sorted(videos)
        assert not store.failures()
    assert not list(parts_dir(out).glob("*.tmp"))


def report(name: str, started: float, driver: Driver, out: Path) -> None:
    """What the closing note of issue 15 lists per kill (shown with pytest -rP)."""
    counts = records_per_video(out)
    print(
        f"{name}: {len(counts)} videos committed, {sum(counts.values()) - len(counts)} repeated, "
        f"{time.monotonic() - started:.0f} s"
    )
    for line in driver.lines():
        print("   ", line)


def test_a_killed_model_actor_and_decode_worker_lose_nothing_the_video_decoding_starts_again(
    two_cpu_nodes, driver, hold
) -> None:
    """One run, two kills while HOLD_VIDEO is held mid-decode: the model actor's process (Ray restarts it; the
    rest is embedded by its restarted self) and the Ray worker decoding HOLD_VIDEO (the driver starts that video
    again). Each kill used to have a run of its own; the run (a driver, its actor and workers) is the cost."""
    started = time.monotonic()
    process = driver.start()
    worker = driver.held_mid_run(process)
    [actor] = two_cpu_nodes.titled("ray::ModelWorker")
    os.kill(actor, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while not [pid for pid in two_cpu_nodes.titled("ray::ModelWorker") if pid != actor]:  # Ray restarts it
        assert time.monotonic() < deadline and process.poll() is None, driver.lines()
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    hold.release()  # the held video starts again; it and the two behind it are embedded by the restarted actor
    code, stderr = driver.wait(process)
    assert code == 0, stderr
    assert_every_video_once(driver.out)
    lost = [line for line in driver.lines() if "a Ray worker decoding it was lost" in line]
    assert len(lost) == 1 and lost[0].startswith(f"img-extract: {HOLD_VIDEO}: ") and "try 2 of 3" in lost[0]
    report("model actor and decode worker killed", started, driver, driver.out)


def test_a_killed_driver_leaves_committed_videos_and_the_same_command_finishes(two_cpu_nodes, driver, hold) -> None:
    started = time.monotonic()
    process = driver.start()
    driver.held_mid_run(process)
    process.kill()
    code, _ = driver.wait(process)
    hold.release()
    assert code == -signal.SIGKILL
    committed = len(list_parts(parts_dir(driver.out)))
    assert 1 <= committed < len(VIDEOS)
    again = driver.start()
    code, stderr = driver.wait(again)
    assert code == 0, stderr
    assert f"{len(VIDEOS)} videos: {len(VIDEOS) - committed} to extract, {committed} already in" in stderr
    assert_every_video_once(driver.out)
    report("driver killed, then the same command", started, driver, driver.out)


# --- SIGTERM and cancellation at the wrong moment (issue 15, item 2) ------------------------------------------

SIGTERM_INSIDE_RAY_INIT = """
import os, signal, sys
import ray
from ray._private import utils
import ray._raylet as raylet

moment = sys.argv.pop(1)
if moment == "ray-handler":  # ray.init has just installed a SIGTERM handler of its own (its first step)
    install = utils.set_sigterm_handler
    def installing(handler):
        install(handler)
        os.kill(os.getpid(), signal.SIGTERM)
    utils.set_sigterm_handler = installing
else:  # the driver's C++ core has just started (with it, Ray's crash handler, which takes SIGTERM too)
    CoreWorker = raylet.CoreWorker
    def starting(*args, **kwargs):
        core = CoreWorker(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return core
    raylet.CoreWorker = starting
from extract.cli.main import main
sys.argv[0] = "img-extract"
main()
"""


@pytest.mark.parametrize("moment", ["ray-handler", "core-worker"])
def test_a_sigterm_inside_ray_init_ends_img_extract_with_its_own_line_and_143(
    cluster: LocalCluster, videos: Path, tmp_path: Path, tiny_clip: Path, moment: str
) -> None:
    """ray.init used to replace img-extract's SIGTERM handler with a bare sys.exit (exit 15, no line) and Ray's C++
    crash handler took SIGTERM until connect() put img-extract's back (a stack dump, exit 134). A fault point
    delivers SIGTERM at each of those moments."""
    out = tmp_path / "feats.h5"
    options = ["--engine", "ray", "--ray-address", cluster.address, "--device", "cpu", "--no-progress"]
    command = [
        sys.executable,
        "-c",
        SIGTERM_INSIDE_RAY_INIT,
        moment,
        str(videos),
        "--out",
        str(out),
        *options,
        "--clip-model",
        str(tiny_clip),
    ]
    env = {**cluster.driver_env(), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    lines = [line for line in result.stderr.splitlines() if line.startswith("img-extract: ")]
    assert result.returncode == 143, result.stderr[-3000:]
    assert lines[-1] == (
        "img-extract: error: terminated (SIGTERM) before any video was extracted; nothing was committed"
    ), result.stderr[-3000:]
    assert "Handlers" not in result.stderr and "SIGTERM received" not in result.stderr


CANCEL_WHILE_READING_ARGUMENTS = """
import sys, time
from pathlib import Path
import ray
from extract.run.engine_ray import cancel_decode, decode_task
from extract.run.plan import WorkItem
from tests.standin_models import ReadSlowly

folder = Path(sys.argv[2])
ray.init(address=sys.argv[1], logging_level="WARNING")
task = decode_task(ray).remote(WorkItem("v0", Path("v0.mp4"), ("clip",)), ray.put(ReadSlowly(folder)))
deadline = time.monotonic() + 120
while not (folder / "reading").exists():  # the worker is reading the task's arguments
    assert time.monotonic() < deadline, "the decode task never started"
    time.sleep(0.05)
cancel_decode(ray, task)  # as the driver does when it stops, loses the video elsewhere, or finds it stalled
try:
    for ref in task:
        ray.get(ref)
    print("ended without an error")
except Exception as error:
    print(type(error).__name__, "|", " ".join(str(error).split())[-300:])
"""


def test_a_decode_task_cancelled_while_it_reads_its_arguments_ends_cancelled(
    two_cpu_nodes: LocalCluster, tmp_path: Path
) -> None:
    """Ray's gentle cancel, arriving while a worker reads the task's arguments, failed the task with "TypeError:
    'Handlers' object is not callable" in a cluster whose processes ignore SIGINT (started in the background, as
    these nodes are): issue 15's error at the end of a SIGTERMed driver's output. The driver's cancel is delivered
    right inside that window here (the argument's reading lasts until the cancel has reached the worker)."""
    folder = tmp_path / "argument"
    folder.mkdir()
    env = {**two_cpu_nodes.driver_env(), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", CANCEL_WHILE_READING_ARGUMENTS, two_cpu_nodes.address, str(folder)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("TaskCancelledError"), result.stdout + result.stderr[-3000:]
    assert "Handlers" not in result.stdout + result.stderr


# --- nodes lost (last: the cluster is left with fewer nodes, so no later test starts new ones) ---------------


def test_a_lost_node_never_hangs_the_run_its_work_moves_to_the_node_left(two_cpu_nodes, driver, hold) -> None:
    """Issue 15: two one-CPU nodes, one lost mid-run. The model actor used to hold the last CPU, so no decode task
    could start again and the run waited forever, silently."""
    started = time.monotonic()
    process = driver.start()
    worker = driver.held_mid_run(process)
    lost = two_cpu_nodes.worker_node_of(worker)
    two_cpu_nodes.kill_raylet(lost)  # its workers, its objects and maybe the model actor go with it
    hold.release()
    code, stderr = driver.wait(process)
    assert code == 0, stderr
    assert_every_video_once(driver.out)
    retried = [line for line in driver.lines() if "a Ray worker decoding it was lost" in line]
    assert any(line.startswith(f"img-extract: {HOLD_VIDEO}: ") for line in retried), driver.lines()
    report("node lost (raylet killed)", started, driver, driver.out)


def test_a_cluster_left_without_cpus_stops_the_run_after_stall_seconds_saying_what_it_waits_for(
    cpu_nodes, driver, hold
) -> None:
    started = time.monotonic()
    process = driver.start("--stall-seconds", "30")  # the smallest the CLI accepts
    driver.held_mid_run(process)
    for node in cpu_nodes.nodes[1:]:
        if node.processes():
            cpu_nodes.kill_raylet(node)
    hold.release()
    code, stderr = driver.wait(process, timeout=180)
    lines = driver.lines()
    assert code == 3, stderr
    assert any("Ray: no progress for" in line and "waiting for" in line for line in lines), lines
    last = lines[-1]
    assert last.startswith("img-extract: error: the run stopped: WorkerLostError: no progress on the Ray cluster")
    assert "decode task" in last and "to start (each asks 0.99 CPU)" in last, last  # what it waits for
    assert "the cluster has no CPU and no GPU free on 1 live node" in last, last  # and what the cluster has
    assert "re-run the same command to resume" in last
    committed = records_per_video(driver.out)
    assert committed and set(committed.values()) == {1}  # what had finished is in the store, once
    assert f"{len(committed)} finished video" in last
    report("every CPU node lost (--stall-seconds 30)", started, driver, driver.out)
