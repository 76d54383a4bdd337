"""The local engine on several devices (`--devices`): one worker process per device, each writing its own parts,
one index; a worker killed mid-run loses only what it had not committed and the same command finishes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import pytest
import torch

from extract.core.errors import ProvenanceMismatchError, UsageError, WorkerLostError
from extract.media.sources import scan_folder
from extract.models.base import ExtractorOptions
from extract.models.presets import get_preset
from extract.run import ExtractionRun, RunConfig, RunStopped
from extract.run.engine_devices import parse_devices, split_items
from extract.run.plan import WorkItem
from extract.run.provenance import check_same_recipes
from extract.store import FeatureStore, list_parts, parts_dir
from tests.conftest import run_cli
from tests.standin_models import KillAfterCommit, KillOnce, MeanModel
from tests.store_views import contents, records_per_video
from tests.videos import make_video

CPU = ExtractorOptions(torch.device("cpu"))
FRAMES = get_preset("clip").with_options(weights="mean-colour")


def test_devices_are_parsed_into_one_worker_each() -> None:
    assert parse_devices("0,1, 3") == ("cuda:0", "cuda:1", "cuda:3")
    assert parse_devices("cuda:2,cpu,cpu") == ("cuda:2", "cpu", "cpu")
    for wrong in ("gpu0", "", "1;2", "²", "cuda:٣"):
        with pytest.raises(UsageError, match="--devices"):
            parse_devices(wrong)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="--devices all: no CUDA GPU is visible"):
            parse_devices("all")


def test_workers_that_would_make_a_feature_differently_are_named_with_the_difference() -> None:
    records = {"clip": {"recipe": {"preset": "clip", "precision": "fp16"}}}
    check_same_recipes([("cuda:0", records), ("cuda:1", records)], "one kind")
    other = {"clip": {"recipe": {"preset": "clip", "precision": "fp32"}}}
    with pytest.raises(ProvenanceMismatchError) as refused:
        check_same_recipes([("cuda:0", records), ("cuda:1", records), ("cpu", other)], "give devices of one kind")
    assert str(refused.value) == (
        "the workers on cuda:0 and cpu would make 'clip' features differently (precision: 'fp16' -> 'fp32'); "
        "give devices of one kind"
    )


def test_work_is_split_by_file_size_onto_the_least_loaded_worker(tmp_path: Path) -> None:
    items = []
    for name, size in (("a", 50), ("b", 10), ("c", 40), ("d", 30), ("e", 20)):
        (tmp_path / name).write_bytes(b"x" * size)
        items.append(WorkItem(name, tmp_path / name, ("clip",)))
    shares = split_items(items, 2)
    assert [[item.video_id for item in share] for share in shares] == [["a", "b", "e"], ["c", "d"]]  # 80 and 70 bytes
    assert sorted(i.video_id for share in split_items(items, 7) for i in share) == ["a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("devices") / "videos"
    for n in range(6):
        make_video(folder / f"v{n}.mp4", seconds=1 + n % 3, size="96x64", audio=False)
    (folder / "junk.mp4").write_bytes(b"not a video")
    return folder


def _run(videos: Path, out: Path, build, devices: tuple[str, ...] = ("cpu", "cpu")) -> ExtractionRun:
    config = RunConfig(progress=False, batch_size=4, commit_every=1, devices=devices)
    run = ExtractionRun(scan_folder(videos), out, [FRAMES], CPU, config, build)
    try:
        run.run()
    finally:
        run.close()
    return run


@pytest.mark.slow
def test_two_workers_make_the_one_process_store_and_survive_a_killed_worker(videos: Path, tmp_path: Path) -> None:
    single = tmp_path / "single.h5"
    _run(videos, single, MeanModel, devices=())
    both = tmp_path / "both.h5"
    _run(videos, both, MeanModel)
    assert contents(both) == contents(single)
    writers = {part.name.split("-")[-2] for part in list_parts(parts_dir(both))}
    assert len(writers) == 2  # each worker committed its own parts (named with its pid)
    assert not list(parts_dir(both).glob("*.tmp"))

    markers = tmp_path / "markers"
    markers.mkdir()
    killed = tmp_path / "killed.h5"
    with pytest.raises(RunStopped) as stopped:
        _run(videos, killed, KillOnce(markers, model=True))
    assert isinstance(stopped.value.cause, WorkerLostError)
    assert "died (killed by SIGKILL)" in str(stopped.value.cause)
    with FeatureStore(killed) as store:  # the index was built over what the other worker committed
        assert 0 < len(store.video_ids()) < 6
    _run(videos, killed, MeanModel)  # the same command again
    assert contents(killed) == contents(single)
    assert set(records_per_video(killed).values()) == {1}


@pytest.mark.slow
def test_devices_option_runs_workers_through_the_cli(videos: Path, tmp_path: Path, tiny_clip: Path) -> None:
    out = tmp_path / "feats.h5"
    result = run_cli(videos, "--out", out, "--clip-model", tiny_clip, "--devices", "cpu,cpu", "--no-progress")
    assert result.returncode == 1, result.stderr  # junk.mp4 fails, the others are extracted
    assert "img-extract[cpu]: device: cpu" in result.stderr
    assert "summary: 6 done, 0 skipped (already in store), 1 failed" in result.stderr
    with FeatureStore(out) as store:
        assert len(store.video_ids()) == 6 and [f.video_id for f in store.failures()] == ["junk"]
    both = run_cli(videos, "--out", out, "--device", "cpu", "--devices", "cpu,cpu")
    assert both.returncode == 2 and "give --device (one) or --devices (several), not both" in both.stderr


@pytest.mark.slow
def test_the_committed_count_includes_what_a_lost_worker_committed(videos: Path, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "feats.h5"
    with pytest.raises(RunStopped) as stopped:
        _run(videos, out, KillAfterCommit(markers, parts_dir(out)))
    assert "died (killed by SIGKILL)" in str(stopped.value.cause)
    with FeatureStore(out) as store:
        held, failed = len(store), len(store.failures())
    writers = Counter(part.name.split("-")[-2] for part in list_parts(parts_dir(out)))
    assert len(writers) == 2  # the lost worker had committed a part before it died
    assert (stopped.value.summary.committed_videos, stopped.value.summary.committed_failures) == (held, failed)


# --- the parent signalled or killed: real processes ---------------------------------------------------------


def _start_driver(videos: Path, out: Path, markers: Path, seconds: float) -> tuple[subprocess.Popen[str], list[int]]:
    """tests/devices_driver.py in a session of its own (so its process group can be signalled); its workers' pids."""
    markers.mkdir(exist_ok=True)
    command = [sys.executable, "-m", "tests.devices_driver", str(videos), str(out), str(markers), str(seconds)]
    driver = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    line = driver.stdout.readline() if driver.stdout else ""
    if not line.startswith("workers "):
        driver.kill()
        raise AssertionError(f"the driver did not start its workers: {line}{driver.communicate()[1]}")
    return driver, [int(pid) for pid in line.split()[1:]]


def _parts_by_writer(out: Path) -> Counter[str]:
    if not parts_dir(out).is_dir():
        return Counter()
    return Counter(part.name.split("-")[-2] for part in list_parts(parts_dir(out)))


def _holds_videos(part: Path) -> bool:
    with h5py.File(part, "r") as f:
        return len(f["videos"]) > 0


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _finish_cleanly(videos: Path, out: Path) -> None:
    """The same run again (the driver's, in this process: its two workers are processes of their own), fast: it
    completes, with every video exactly once."""
    config = RunConfig(progress=False, batch_size=1, commit_every=1, devices=("cpu", "cpu"))
    run = ExtractionRun(scan_folder(videos), out, [FRAMES], CPU, config, MeanModel)
    try:
        run.run()  # junk.mp4 fails as a record; the run finishes
    finally:
        run.close()
    with FeatureStore(out) as store:
        assert len(store) == 6 and [f.video_id for f in store.failures()] == ["junk"]
    assert set(records_per_video(out).values()) == {1}


@pytest.mark.slow
def test_a_process_group_sigterm_waits_for_the_busy_worker_and_keeps_the_finished_ones(
    videos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "feats.h5"
    driver, _ = _start_driver(videos, out, tmp_path / "markers", 6.0)
    try:
        # one worker is slow (6 s a frame, deaf to signals meanwhile); the other finishes its share, says so and
        # waits for the next run
        assert _wait_for(lambda: max(_parts_by_writer(out).values(), default=0) >= 3, 120), "no worker finished"
        time.sleep(0.5)
        os.killpg(driver.pid, signal.SIGTERM)  # Slurm's way: the whole process group
        stdout, stderr = driver.communicate(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 143, stderr  # the interrupt, not a lost worker
    assert "died" not in stderr and "stopped: Terminated" in stderr
    with FeatureStore(out) as store:
        committed = len(store)
    assert f"committed {committed}" in stdout and committed >= 3
    with h5py.File(out, "r") as index:  # built after every worker had committed
        indexed = {Path(part).name for part in json.loads(index.attrs["parts"])}
    assert indexed == {part.name for part in list_parts(parts_dir(out)) if _holds_videos(part)}
    _finish_cleanly(videos, out)


@pytest.mark.slow
def test_workers_whose_parent_is_killed_commit_and_exit(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats.h5"
    driver, pids = _start_driver(videos, out, tmp_path / "markers", 1.5)
    try:
        assert _wait_for(lambda: sum(_parts_by_writer(out).values()) >= 1, 120), "nothing was committed"
        driver.kill()  # SIGKILL: the parent cannot tell anyone
        driver.wait()
        gone = _wait_for(lambda: not any(_running(pid) for pid in pids), 30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    assert gone, "a worker outlived its parent"
    assert not list(parts_dir(out).glob("*.tmp"))
    _finish_cleanly(videos, out)
