"""img-extract as a user runs it: real subprocesses, real video files made with ffmpeg, real HDF5."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from extract.store import FeatureStore, StoreWriter, parts_dir
from tests.conftest import run_cli
from tests.videos import REAL_VIDEO, ffmpeg, make_indexed_video, make_video


def _zoo(folder: Path) -> dict[str, str]:
    """Good and bad inputs side by side; returns the expected outcome per video id."""
    make_video(folder / "plain.mp4", seconds=3)
    make_video(folder / "no audio.mp4", seconds=2, audio=False)
    make_video(folder / "odd" / "17x9.mp4", seconds=2, size="17x9", extra=("-pix_fmt", "yuv444p"))
    plain = folder / "plain.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(plain), "-c", "copy", str(folder / "rotated.mp4"))
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=25",
        "-frames:v",
        "1",
        "-c:v",
        "libx264",
        str(folder / "one frame.mp4"),
    )
    make_indexed_video(folder / "vfr.mkv", [0.0, 0.1, 1.5, 1.6, 2.9])
    (folder / "sub dir" / "ünïcode 名前").mkdir(parents=True)
    (folder / "sub dir" / "ünïcode 名前" / "clip #1.mp4").write_bytes(REAL_VIDEO.read_bytes())
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "notes.mp4").write_text("meeting notes, not a video\n" * 50)
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(folder / "song.mp4"))
    whole = make_video(folder / "tmp-whole.mp4", seconds=3)
    (folder / "truncated.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return {
        "plain": "ok",
        "no audio": "ok",
        "odd/17x9": "ok",
        "rotated": "ok",
        "one frame": "ok",
        "vfr": "ok",
        "sub dir/ünïcode 名前/clip #1": "ok",
        "zero": "empty (0 bytes)",
        "notes": "not a readable media file",
        "song": "no video stream",
        "truncated": "moov atom not found: the file is truncated",
    }


@pytest.fixture(scope="module")
def zoo_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path
) -> tuple[Path, dict[str, str], subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("zoo")
    expected = _zoo(root / "videos")
    result = run_cli(root / "videos", "--out", root / "feats.h5", "--clip-model", tiny_clip, "--batch-size", "4")
    return root, expected, result


def test_bad_inputs_fail_alone_and_the_rest_is_extracted(zoo_run) -> None:
    root, expected, result = zoo_run
    assert result.returncode == 1, result.stderr
    with FeatureStore(root / "feats.h5") as store:
        good = sorted(v for v, outcome in expected.items() if outcome == "ok")
        assert store.video_ids() == good
        failures = {f.video_id: f.message for f in store.failures()}
        assert sorted(failures) == sorted(v for v, outcome in expected.items() if outcome != "ok")
    for video_id, outcome in expected.items():
        if outcome != "ok":
            assert outcome in failures[video_id]
            assert "\n" not in failures[video_id]
            line = next(x for x in result.stderr.splitlines() if x.startswith(f"img-extract: failed {video_id}:"))
            assert str(root / "videos") in line  # names the file
    assert "7 done, 0 skipped (already in store), 4 failed, 3 without audio" in result.stderr


def test_tracks_carry_timestamps_metadata_and_provenance(zoo_run) -> None:
    root, _, _ = zoo_run
    with FeatureStore(root / "feats.h5") as store:
        real = store.track("sub dir/ünïcode 名前/clip #1", "clip")
        assert real.features.shape == (14, 16) and real.features.dtype == np.float32
        np.testing.assert_allclose(real.timestamps[:, 0], np.arange(14))
        np.testing.assert_allclose(real.timestamps[:, 1], np.arange(14) + 1)
        meta = store.metadata("sub dir/ünïcode 名前/clip #1")
        assert meta["has_audio"] and meta["frame_count"] == 420 and meta["size_bytes"] == REAL_VIDEO.stat().st_size
        assert store.metadata("no audio")["has_audio"] is False or store.metadata("no audio")["has_audio"] == 0
        assert store.track("one frame", "clip").features.shape == (1, 16)
        assert store.track("vfr", "clip").features.shape == (3, 16)
        rotated = store.metadata("rotated")
        assert (rotated["width"], rotated["height"]) == (240, 320)
        full = store.part_provenance("plain", "clip")
        assert full["recipe"]["frames.fps"] == 1.0 and full["recipe"]["weights_sha256"]
        assert full["software"]["ffmpeg"] and full["software"]["frame_decoder"] == "ffmpeg"


def test_rerun_skips_everything_and_recomputes_nothing(zoo_run, tiny_clip: Path) -> None:
    root, _, _ = zoo_run
    before = sorted(parts_dir(root / "feats.h5").glob("part-*.h5"))
    result = run_cli(root / "videos", "--out", root / "feats.h5", "--clip-model", tiny_clip)
    assert result.returncode == 1  # the failed videos are still not extracted
    assert "0 done, 7 skipped (already in store), 0 failed" in result.stderr
    assert "4 videos failed in an earlier run and were skipped (--retry-failed)" in result.stderr
    assert sorted(parts_dir(root / "feats.h5").glob("part-*.h5")) == before


def test_retry_failed_retries_only_the_failures(zoo_run, tiny_clip: Path) -> None:
    root, _, _ = zoo_run
    result = run_cli(root / "videos", "--out", root / "feats.h5", "--clip-model", tiny_clip, "--retry-failed")
    assert result.returncode == 1
    assert "0 done, 7 skipped (already in store), 4 failed" in result.stderr


def test_inspect_lists_counts_provenance_failures_and_lengths(zoo_run) -> None:
    root, _, _ = zoo_run
    result = run_cli("inspect", root / "feats.h5", "--videos", "0")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "7 extracted, 3 without audio, 4 failed" in out
    assert "frames.fps" in out and "weights_sha256" in out and "ffmpeg" in out
    assert "[probe]" in out and "sub dir/ünïcode 名前/clip #1  14.05" in out
    report = json.loads(run_cli("inspect", root / "feats.h5", "--json").stdout)
    assert report["videos"] == 7 and report["features"]["clip"]["videos"] == 7


def test_index_opens_with_plain_h5py(zoo_run) -> None:
    root, _, _ = zoo_run
    with h5py.File(root / "feats.h5", "r") as index:
        assert len(index["videos"]) == 7
        assert index["videos"]["plain"]["clip"]["features"].shape == (3, 16)


def _copies(video: Path, paths: list[Path]) -> None:
    """One ffmpeg-made video under several names (each name is a video of its own), made once: ffmpeg per copy
    would cost more than the extraction it tests."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(video, path)


def test_manifests_jsonl_and_csv(tmp_path: Path, tiny_clip: Path) -> None:
    make_video(tmp_path / "media" / "a.mp4", seconds=2)
    make_video(tmp_path / "media" / "b.mp4", seconds=3, audio=False)
    (tmp_path / "list.jsonl").write_text(
        json.dumps({"video_id": "first/one", "path": "media/a.mp4"})
        + "\n"
        + json.dumps({"video_id": "second", "path": str(tmp_path / "media" / "b.mp4")})
        + "\n"
    )
    (tmp_path / "list.csv").write_text("video_id,path\nx y,media/a.mp4\n")
    for manifest, ids in (("list.jsonl", ["first/one", "second"]), ("list.csv", ["x y"])):
        out = tmp_path / f"{manifest}.h5"
        result = run_cli(tmp_path / manifest, "--out", out, "--clip-model", tiny_clip)
        assert result.returncode == 0, result.stderr
        with FeatureStore(out) as store:
            assert store.video_ids() == ids


def test_limit_then_resume_extracts_the_rest(tmp_path: Path, tiny_clip: Path) -> None:
    _copies(make_video(tmp_path / "made.mp4", seconds=1), [tmp_path / "v" / f"{i}.mp4" for i in range(3)])
    out = tmp_path / "feats.h5"
    first = run_cli(tmp_path / "v", "--out", out, "--clip-model", tiny_clip, "--limit", "2")
    assert first.returncode == 0 and "2 done" in first.stderr
    second = run_cli(tmp_path / "v", "--out", out, "--clip-model", tiny_clip)
    assert "1 done, 2 skipped" in second.stderr
    again = run_cli(tmp_path / "v", "--out", out, "--clip-model", tiny_clip, "--no-resume")
    assert "3 done, 0 skipped" in again.stderr
    with FeatureStore(out) as store:
        assert store.video_ids() == ["0", "1", "2"]


def test_changed_settings_are_refused_instead_of_mixed(tmp_path: Path, tiny_clip: Path) -> None:
    make_video(tmp_path / "v" / "a.mp4", seconds=1)
    out = tmp_path / "feats.h5"
    assert run_cli(tmp_path / "v", "--out", out, "--clip-model", tiny_clip).returncode == 0
    result = run_cli(tmp_path / "v", "--out", out, "--clip-model", tiny_clip, "--fps", "2", "--no-resume")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("img-extract: error: ")
    assert "frames.fps: 1.0 -> 2.0" in result.stderr
    resumed = run_cli(tmp_path / "v", "--out", out, "--clip-model", tiny_clip, "--fps", "2")  # no model loaded
    assert resumed.returncode == 2 and "made differently (frames.fps: 1.0 -> 2.0)" in resumed.stderr


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty_folder", "no video files under"),
        ("duplicate_ids", "duplicate video id 'a'"),
        ("unwritable_out", "cannot write the store"),
        ("missing_input", "does not exist"),
        ("unknown_preset", "unknown feature preset 'i4d'"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, tiny_clip: Path, setup: str, message: str) -> None:
    videos, out, features = tmp_path / "videos", tmp_path / "feats.h5", "clip"
    videos.mkdir()
    if setup == "duplicate_ids":
        make_video(videos / "a.mp4", seconds=1)
        make_video(videos / "a.mkv", seconds=1)
    elif setup == "unwritable_out":
        make_video(videos / "a.mp4", seconds=1)
        (tmp_path / "file").write_text("a file, not a folder")
        out = tmp_path / "file" / "feats.h5"
    elif setup == "missing_input":
        videos = tmp_path / "nowhere"
    elif setup == "unknown_preset":
        features = "i4d"
    result = run_cli(videos, "--out", out, "--clip-model", tiny_clip, "--features", features)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("img-extract: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    if setup == "duplicate_ids":
        assert "a.mp4" in errors[0] and "a.mkv" in errors[0]


def test_second_writer_is_refused_and_the_first_keeps_its_store(tmp_path: Path, tiny_clip: Path) -> None:
    make_video(tmp_path / "v" / "a.mp4", seconds=1)
    out = tmp_path / "feats.h5"
    holder = StoreWriter(out, {})
    try:
        result = run_cli(tmp_path / "v", "--out", out, "--clip-model", tiny_clip)
    finally:
        holder.close()
    assert result.returncode == 2
    assert f"is being written by pid {os.getpid()}" in result.stderr
    assert run_cli(tmp_path / "v", "--out", out, "--clip-model", tiny_clip).returncode == 0


def test_kill_9_loses_only_uncommitted_work_and_resume_completes(tmp_path: Path, tiny_clip: Path) -> None:
    count = 24
    made = make_video(tmp_path / "made.mp4", seconds=4, size="160x120", audio=False)
    _copies(made, [tmp_path / "v" / f"{i:02d}.mp4" for i in range(count)])
    out = tmp_path / "feats.h5"
    args = [
        tmp_path / "v",
        "--out",
        out,
        "--clip-model",
        tiny_clip,
        "--commit-every",
        "1",
        "--workers",
        "1",
        "--batch-size",
        "2",
        "--fps",
        "4",
    ]
    script = Path(sys.executable).parent / "img-extract"
    process = subprocess.Popen(
        [str(script), *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts_dir(out).glob("part-*.h5"))) < 2:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with FeatureStore(out) as store:  # readable right after the kill, index or not
        committed = set(store.video_ids())
        assert not store.corrupt_parts
    assert 2 <= len(committed) < count, "the run finished before it could be killed"
    first_parts = {p: p.stat().st_mtime_ns for p in parts_dir(out).glob("part-*.h5")}
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert f"{count - len(committed)} done, {len(committed)} skipped" in result.stderr
    assert all(p.stat().st_mtime_ns == m for p, m in first_parts.items())  # committed parts untouched
    seen: list[str] = []
    for part in parts_dir(out).glob("part-*.h5"):
        with h5py.File(part, "r") as f:
            seen += list(f["videos"])
    assert sorted(seen) == sorted(f"{i:02d}" for i in range(count))  # every video exactly once


def test_a_file_name_that_is_not_utf8_is_extracted_and_round_trips(tmp_path: Path, tiny_clip: Path) -> None:
    folder = tmp_path / "v"
    make_video(folder / "plain.mp4", seconds=1)
    raw = os.fsencode(str(folder)) + b"/caf\xe9.mp4"
    os.rename(make_video(folder / "tmp.mp4", seconds=1), raw)
    result = run_cli(folder, "--out", tmp_path / "f.h5", "--clip-model", tiny_clip)
    assert result.returncode == 0, result.stderr
    with FeatureStore(tmp_path / "f.h5") as store:
        assert store.video_ids() == sorted(["plain", os.fsdecode(b"caf\xe9")])
