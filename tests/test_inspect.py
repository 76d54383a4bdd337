"""`img-extract inspect` on every kind of store: imported, with failures per track, truncated videos, damage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from extract.store import FailureRecord, StoreWriter, Track, VideoRecord, parts_dir
from tests.conftest import run_cli

PROVENANCE = {
    "clip": {"recipe": {"preset": "clip"}, "software": {"ffmpeg": "7"}, "runtime": {}},
    "panns": {"recipe": {"preset": "panns"}, "software": {"ffmpeg": "7"}, "runtime": {}},
}


def _store(path: Path) -> Path:
    metadata = {"duration": 10.0, "fps": 25.0, "frame_count": 250, "width": 64, "height": 48, "has_audio": True}
    track = Track(np.zeros((5, 4), np.float32), np.zeros((5, 2)))
    writer = StoreWriter(path, PROVENANCE)
    writer.add_video(VideoRecord("cut", {**metadata, "truncated": True}, {"clip": track}))
    writer.add_video(VideoRecord("whole", {**metadata, "truncated": False}, {"clip": track, "panns": track}))
    writer.add_failure(FailureRecord("cut", "/cut.mp4", "audio", "VideoDecodeError", "no audio packets", ("panns",)))
    writer.add_failure(FailureRecord("gone", "/gone.mp4", "probe", "VideoDecodeError", "empty", ("clip", "panns")))
    writer.close()
    return path


def test_inspect_shows_failures_per_track_and_truncated_videos(tmp_path: Path) -> None:
    store = _store(tmp_path / "feats.h5")
    result = run_cli("inspect", store)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "2 extracted, 0 without audio, 2 failed, 1 truncated" in out
    assert "feature panns: 1 videos, 2 failed" in out and "feature clip: 2 videos, 1 failed" in out
    assert "  cut  panns  [audio] no audio packets" in out and "  gone  clip,panns  [probe] empty" in out
    assert "truncated (the decoded stream ends" in out and "  cut  10.00 s in the header" in out
    assert "  cut  10.00  25.00  250  64x48  yes  clip 5x4  panns FAILED  TRUNCATED" in out
    report = json.loads(run_cli("inspect", store, "--json").stdout)
    cut = next(v for v in report["per_video"] if v["video_id"] == "cut")
    assert cut["truncated"] is True and cut["failed_tracks"] == ["panns"]
    assert [f["features"] for f in report["failures"]] == [["panns"], ["clip", "panns"]]


def test_inspect_reads_a_store_written_by_import_img(tmp_path: Path) -> None:
    source = tmp_path / "released"
    source.mkdir()
    np.save(source / "v_a.npy", np.ones((4, 8), np.float32))
    imported = run_cli("import-img", source, "--out", tmp_path / "f.h5", "--feature", "i3d-released")
    assert imported.returncode == 0, imported.stderr
    result = run_cli("inspect", tmp_path / "f.h5")
    assert result.returncode == 0, result.stderr
    assert "  v_a  -  -  -  -  yes  i3d-released 4x8" in result.stdout
    assert "imported_from" in result.stdout


def test_inspect_names_a_damaged_part_and_shows_the_rest(tmp_path: Path) -> None:
    store = _store(tmp_path / "feats.h5")
    damaged = parts_dir(store) / "part-20000101T000000.000000-host-1-000001.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    result = run_cli("inspect", store)
    assert result.returncode == 0, result.stderr
    assert f"DAMAGED  {damaged.name}: " in result.stdout and "2 extracted" in result.stdout
