"""The local engine on several devices (`--devices`): one worker process per device, each writing its own parts,
one index; a worker killed mid-run loses only what it had not committed and the same command finishes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from extract.errors import UsageError, WorkerLostError
from extract.models.base import ExtractorOptions
from extract.presets import get_preset
from extract.run import ExtractionRun, RunConfig, RunStopped
from extract.run.engine_devices import parse_devices, split_items
from extract.run.plan import WorkItem
from extract.sources import scan_folder
from extract.store import FeatureStore, list_parts, parts_dir
from tests.conftest import run_cli
from tests.standin_models import KillOnce, MeanModel
from tests.store_views import contents, records_per_video
from tests.videos import make_video

CPU = ExtractorOptions(torch.device("cpu"))
FRAMES = get_preset("clip").with_overrides(weights="mean-colour")


def test_devices_are_parsed_into_one_worker_each() -> None:
    assert parse_devices("0,1, 3") == ("cuda:0", "cuda:1", "cuda:3")
    assert parse_devices("cuda:2,cpu,cpu") == ("cuda:2", "cpu", "cpu")
    for wrong in ("gpu0", "", "1;2"):
        with pytest.raises(UsageError, match="--devices"):
            parse_devices(wrong)
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="--devices all: no CUDA GPU is visible"):
            parse_devices("all")


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
