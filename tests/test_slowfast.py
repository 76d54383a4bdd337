"""The `slowfast` preset: HERO's decoding, the published file in the weights registry, `img-extract` end to end."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.core.errors import UsageError
from extract.media.decode import iter_frames
from extract.media.ffmpeg import ffmpeg_path
from extract.media.probe import probe
from extract.models import ExtractorOptions, build_extractor
from extract.models.presets import SLOWFAST
from extract.store import FeatureStore
from tests.conftest import run_cli
from tests.videos import REAL_VIDEO, make_video


def hero_decode(video: Path) -> np.ndarray:
    """The frames HERO's extraction reads: the command its ffmpeg-python calls compile to
    (slowfast/extract_feature/video_loader.py: fps 30, scale to a 224 short side, centre crop 224, rgb24)."""
    stream = probe(video)
    w, h = stream.width, stream.height
    height, width = (int(h * 224 / w), 224) if h >= w else (224, int(w * 224 / h))
    x, y = int((width - 224) / 2.0), int((height - 224) / 2.0)
    graph = f"[0]fps=fps=30[s0];[s0]scale={width}:{height}[s1];[s1]crop=224:224:{x}:{y}[s2]"
    command = [
        ffmpeg_path(),
        "-v",
        "error",
        "-i",
        str(video),
        "-filter_complex",
        graph,
        "-map",
        "[s2]",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "pipe:",
    ]
    out = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(out, np.uint8).reshape(-1, 224, 224, 3)


@pytest.mark.parametrize(
    ("name", "size", "rate"), [("real", None, None), ("pal", "720x576", 25), ("portrait", "226x400", 60)]
)
def test_frames_are_those_of_heros_ffmpeg_command(tmp_path: Path, name: str, size: str | None, rate: int) -> None:
    video = REAL_VIDEO if size is None else make_video(tmp_path / f"{name}.mp4", 1.5, size, rate, audio=False)
    assert SLOWFAST.frames is not None
    ours = np.concatenate([batch.data for batch in iter_frames(probe(video), SLOWFAST.frames)])
    hero = hero_decode(video)
    assert ours.shape == hero.shape
    np.testing.assert_array_equal(ours, hero)


def test_a_frame_rate_that_is_not_whole_is_refused_before_any_weights_are_looked_for(tmp_path: Path) -> None:
    options = ExtractorOptions(device=torch.device("cpu"), weights_dir=tmp_path)  # empty: no weights
    with pytest.raises(UsageError, match=r"--fps 0\.5 does not fit slowfast: .* a run of its own without --fps"):
        build_extractor(SLOWFAST.with_options(fps=0.5), options)  # e.g. with Moment-DETR's 0.5-fps CLIP


def test_the_published_file_is_in_the_weights_registry(tmp_path: Path) -> None:
    listing = run_cli("weights", "list", "--weights-dir", tmp_path)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("SLOWFAST_8x8_R50.pkl "))
    assert lines[at].endswith("missing") and "presets: slowfast" in lines[at + 1]
    assert lines[at + 2].strip() == SLOWFAST.weights_url
    assert lines[at + 3].strip() == "published checksum: none"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, published_weights: Path):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("slowfast-run")
    make_video(root / "videos" / "three seconds.mp4", seconds=3, size="320x240", rate=25)
    make_video(root / "videos" / "short.mp4", seconds=0.5, size="160x120", rate=30, audio=False)
    out = root / "feats.h5"
    result = run_cli(root / "videos", "--out", out, "--features", "slowfast", "--weights-dir", published_weights)
    return out, result


@pytest.mark.slow
def test_img_extract_writes_one_float16_row_per_two_second_clip(run) -> None:
    out, result = run
    assert result.returncode == 0, result.stderr
    assert "2 done, 0 skipped (already in store), 0 failed" in result.stderr
    with FeatureStore(out) as store:
        track = store.track("three seconds", "slowfast")  # 90 frames at 30 fps: clips 0-2 s and 2-3 s (padded)
        assert track.features.dtype == np.float16 and track.features.shape == (2, 2304)
        np.testing.assert_allclose(track.timestamps, [[0, 2], [2, 3]])
        assert np.isfinite(track.features).all() and not np.array_equal(*track.features)
        short = store.track("short", "slowfast")  # 15 frames: one clip of repeats
        assert short.features.shape == (1, 2304)
        np.testing.assert_allclose(short.timestamps, [[0, 0.5]])


@pytest.mark.slow
def test_provenance_records_the_clip_rule_and_the_weights(run, published_weights: Path) -> None:
    out, _ = run
    with FeatureStore(out) as store:
        recipe = store.provenance("slowfast")
        runtime = store.part_provenance("short", "slowfast")["runtime"]
    assert recipe["windowing.clip_seconds"] == "2" and recipe["windowing.samples_per_clip"] == 32
    assert recipe["frames.fps"] == 30.0 and recipe["frames.interpolation"] == "swscale_default"
    assert recipe["frames.selection"] == "ffmpeg_fps_near" and recipe["preprocessing.output_dtype"] == "float16"
    assert recipe["weights_file"] == "SLOWFAST_8x8_R50.pkl" and recipe["output_dim"] == 2304
    from extract.models.weights import sha256_file

    assert recipe["weights_sha256"] == sha256_file(published_weights / "SLOWFAST_8x8_R50.pkl")
    assert runtime["weights_checked"] is False  # the model zoo publishes no checksum to compare
