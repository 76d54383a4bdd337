"""Per-(video, feature) outcomes as a user gets them from `img-extract`: a broken audio stream keeps the visual
tracks, only missing tracks are computed, truncated files are flagged and redone on request."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import pytest

from extract.store import FeatureStore, parts_dir
from extract.store.ids import unescape_id
from tests.broken_media import make_broken_audio_video, make_empty_audio_video, make_truncated_video
from tests.conftest import run_cli
from tests.videos import make_video

pytestmark = pytest.mark.slow  # real extraction runs through the CLI, several seconds each


def _parts(out: Path) -> list[Path]:
    return sorted(parts_dir(out).glob("part-*.h5"))


def _part_contents(part: Path) -> tuple[dict[str, list[str]], list[str]]:
    """(video id -> tracks, failed video ids) of one part file, as written."""
    with h5py.File(part, "r") as f:
        videos = {unescape_id(name): sorted(f["videos"][name]) for name in f["videos"]}
        return videos, sorted(unescape_id(name) for name in f["failures"])


@pytest.fixture(scope="module")
def audio_run(tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path, published_weights: Path):
    root = tmp_path_factory.mktemp("tracks")
    videos = root / "videos"
    make_video(videos / "good.mp4", seconds=2, size="160x120")
    make_empty_audio_video(videos / "empty audio.mkv")
    make_broken_audio_video(videos / "broken audio.mkv")
    out = root / "feats.h5"
    args = (videos, "--out", out, "--features", "clip,vggish", "--clip-model", tiny_clip)
    args += ("--weights-dir", published_weights, "--trust-weights", "--batch-size", "4")
    return root, out, args, run_cli(*args)


def test_a_broken_audio_stream_fails_the_audio_track_only(audio_run) -> None:
    _, out, _, result = audio_run
    assert result.returncode == 1, result.stderr
    assert "3 done, 0 skipped (already in store), 1 failed, 1 without audio" in result.stderr
    with FeatureStore(out) as store:
        assert store.feature_names("broken audio") == ["clip"]  # its frames were embedded and kept
        (failure,) = store.failures()
        assert (failure.video_id, failure.stage, failure.features) == ("broken audio", "audio", ("vggish",))
        assert store.feature_names("good") == ["clip", "vggish"]


def test_an_audio_stream_without_samples_is_recorded_as_no_audio(audio_run) -> None:
    _, out, _, _ = audio_run
    with FeatureStore(out) as store:
        assert store.feature_names("empty audio") == ["clip"]
        assert not store.metadata("empty audio")["has_audio"]
        assert store.failed_features("empty audio") == frozenset()


def test_resume_skips_and_retry_failed_redoes_only_the_failed_track(audio_run) -> None:
    _, out, args, _ = audio_run
    before = _parts(out)
    rerun = run_cli(*args)
    assert rerun.returncode == 1
    assert "0 done, 2 skipped (already in store), 0 failed" in rerun.stderr
    assert "1 videos failed in an earlier run and were skipped (--retry-failed)" in rerun.stderr
    assert _parts(out) == before
    retry = run_cli(*args, "--retry-failed")
    assert retry.returncode == 1 and "0 done, 2 skipped (already in store), 1 failed" in retry.stderr
    (new,) = [part for part in _parts(out) if part not in before]
    assert _part_contents(new) == ({}, ["broken audio"])  # no clip rows computed again, only the failure
    with FeatureStore(out) as store:
        assert store.feature_names("broken audio") == ["clip"] and store.failed_features("broken audio") == {"vggish"}


def test_adding_a_feature_computes_only_its_tracks(tmp_path: Path, tiny_clip: Path, published_weights: Path) -> None:
    make_video(tmp_path / "v" / "a.mp4", seconds=2, size="160x120")
    make_video(tmp_path / "v" / "b.mp4", seconds=3, size="160x120")
    out = tmp_path / "feats.h5"
    common = (tmp_path / "v", "--out", out, "--clip-model", tiny_clip, "--weights-dir", published_weights)
    assert run_cli(*common, "--features", "clip").returncode == 0
    (clip_part,) = _parts(out)
    stamp = clip_part.stat().st_mtime_ns
    result = run_cli(*common, "--features", "clip,vggish", "--trust-weights")
    assert result.returncode == 0, result.stderr
    assert "2 done" in result.stderr and " 0.0 frames/s decoded" in result.stderr  # no frame was decoded
    (new,) = [part for part in _parts(out) if part != clip_part]
    assert _part_contents(new) == ({"a": ["vggish"], "b": ["vggish"]}, [])
    assert clip_part.stat().st_mtime_ns == stamp
    with FeatureStore(out) as store:
        assert store.feature_names("a") == ["clip", "vggish"] and store.track("b", "clip").features.shape == (3, 16)


def test_a_truncated_file_is_flagged_and_redone_with_retry_failed(tmp_path: Path, tiny_clip: Path) -> None:
    whole = tmp_path / "whole.mp4"
    half = make_truncated_video(tmp_path / "v" / "half.mp4", whole, seconds=6)
    make_video(tmp_path / "v" / "fine.mp4", seconds=2, size="160x120")
    out = tmp_path / "feats.h5"
    args = (tmp_path / "v", "--out", out, "--clip-model", tiny_clip)
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "1 truncated: their video stream ends before their header says (half)" in first.stderr
    with FeatureStore(out) as store:
        assert store.metadata("half")["truncated"] and not store.metadata("fine")["truncated"]
        assert len(store.track("half", "clip").features) == 3  # of 6 s: the half that was downloaded
    shown = run_cli("inspect", out)
    assert "1 truncated" in shown.stdout and "half  6.00" in shown.stdout and "TRUNCATED" in shown.stdout
    assert "1 truncated videos in the store were kept" in run_cli(*args).stderr
    shutil.copy(whole, half)  # the re-download
    retry = run_cli(*args, "--retry-failed")
    assert retry.returncode == 0 and "1 done, 1 skipped" in retry.stderr
    with FeatureStore(out) as store:
        assert not store.metadata("half")["truncated"] and len(store.track("half", "clip").features) == 6
