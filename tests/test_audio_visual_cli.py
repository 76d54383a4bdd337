"""`img-extract --features i3d-charades-vslnet,panns,vggish-quantized` on real files with the goldens' weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from extract.models.windows import frame_windows
from extract.store import FeatureStore
from img_model.data.alignment import aligned_tracks
from tests.conftest import run_cli
from tests.videos import REAL_VIDEO, make_video

FEATURES = "i3d-charades-vslnet,panns,vggish-quantized"
REAL_ID = "v_ZNVhz7ctTq0"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, published_weights: Path):
    root = tmp_path_factory.mktemp("av")
    videos = root / "videos"
    videos.mkdir()
    shutil.copy(REAL_VIDEO, videos / f"{REAL_ID}.mp4")
    # 1 s each: one I3D window apiece (the model's time goes to the real video), at least one audio row each
    make_video(videos / "stereo48k.mp4", seconds=1, size="160x120", audio_rate=48000, channels=2)
    make_video(videos / "tone8k.mp4", seconds=1, size="160x120", audio_rate=8000)
    make_video(videos / "silent.mp4", seconds=1, size="160x120", silent=True)
    make_video(videos / "short audio.mp4", seconds=1, size="160x120", audio_seconds=0.3)
    make_video(videos / "tiny no audio.mp4", seconds=0.5, size="160x120", audio=False)
    out = root / "feats.h5"
    args = (videos, "--out", out, "--features", FEATURES, "--weights-dir", published_weights, "--trust-weights")
    result = run_cli(*args, "--batch-size", "8", timeout=900)  # three real-size models: minutes on a loaded machine
    return root, out, result, args


def test_run_succeeds_and_reports(run) -> None:
    _, _, result, _ = run
    assert result.returncode == 0, result.stderr
    assert "6 done, 0 skipped (already in store), 0 failed, 1 without audio" in result.stderr


def test_i3d_rows_follow_vslnet_windows_with_timestamps(run) -> None:
    _, out, _, _ = run
    with FeatureStore(out) as store:
        track = store.track(REAL_ID, "i3d-charades-vslnet")
        windows = frame_windows(14 * 24, 24, 24)  # 14.0 s of video stream at 24 fps
        assert track.features.shape == (2 * len(windows), 1024)
        first, last = windows[0], windows[-1]
        np.testing.assert_allclose(track.timestamps[:2], [[first[0] / 24, 16 / 24], [8 / 24, 24 / 24]])
        np.testing.assert_allclose(track.timestamps[-1], [(last[0] + 8) / 24, last[1] / 24])
        tiny = store.track("tiny no audio", "i3d-charades-vslnet")
        assert tiny.features.shape == (2, 1024)  # 12 frames padded to one 24-frame window
        assert np.isfinite(track.features).all() and track.features.std() > 0


def test_audio_tracks_cover_the_audio_at_their_own_rates(run) -> None:
    _, out, _, _ = run
    with FeatureStore(out) as store:
        panns = store.track(REAL_ID, "panns")
        audio_seconds = 14.048  # AAC at 44.1 kHz, decoded to 32 kHz
        assert panns.features.shape == (1 + int(np.ceil((audio_seconds - 1.0) / 0.5)), 2048)
        np.testing.assert_allclose(panns.timestamps[:3, 0], [0.0, 0.5, 1.0])
        assert panns.timestamps[-1, 1] == pytest.approx(audio_seconds, abs=0.01)
        vggish = store.track(REAL_ID, "vggish-quantized")
        assert vggish.features.dtype == np.uint8 and vggish.features.shape == (14, 128)
        np.testing.assert_allclose(vggish.timestamps[1], [0.96, 1.92])
        for video_id in ("stereo48k", "tone8k", "silent", "short audio"):
            for name in ("panns", "vggish-quantized"):
                rows = store.track(video_id, name).features
                assert len(rows) >= 1 and np.isfinite(rows.astype(np.float64)).all(), (video_id, name)
        assert store.track("short audio", "panns").timestamps.tolist() == [[0.0, pytest.approx(0.3, abs=0.03)]]
        assert "panns" not in store.feature_names("tiny no audio")
        assert store.metadata("tiny no audio")["has_audio"] in (False, 0)


def test_tracks_align_for_img_both_ways(run) -> None:
    _, out, _, _ = run
    with FeatureStore(out) as store:
        for rule in ("img", "time"):
            aligned = aligned_tracks(store, REAL_ID, "i3d-charades-vslnet", "vggish-quantized", 128, rule)
            assert aligned.audio is not None and aligned.audio.shape == (len(aligned.visual), 128)
            assert aligned.audio.min() >= 0.0 and aligned.audio.max() <= 1.0  # uint8 / 255
        empty = aligned_tracks(store, "tiny no audio", "i3d-charades-vslnet", "panns")
        assert empty.audio is None


def test_provenance_records_the_recipe(run) -> None:
    _, out, _, _ = run
    with FeatureStore(out) as store:
        i3d = store.provenance("i3d-charades-vslnet")
        assert i3d["frames.fps"] == 24.0 and i3d["windowing.window"] == 24 and i3d["weights_file"] == "rgb_charades.pt"
        assert i3d["frames.resize"] == "shorter_if_below" and i3d["frames.short_side"] == 226
        assert len(i3d["weights_sha256"]) == 64
        panns = store.provenance("panns")
        assert panns["audio.sample_rate"] == 32000 and panns["windowing.hop_seconds"] == 0.5
        assert store.provenance("vggish-quantized")["extra_weights"] == ["vggish_pca_params-970ea276.pth"]


def test_published_checksum_is_enforced_without_trust(run) -> None:
    _, _, _, args = run
    result = run_cli(*args[:-1], "--no-resume")
    assert result.returncode == 2 and "rgb_charades.pt has git blob id" in result.stderr
    assert "not the published ae56da9f0d1cdefd9643d1ca6c1b5b944f9e7467" in result.stderr


def test_export_for_the_authors_code(run) -> None:
    root, out, _, _ = run
    result = run_cli(
        "export-img",
        "--store",
        out,
        "--out",
        root / "img",
        "--visual",
        "i3d-charades-vslnet",
        "--audio",
        "vggish-quantized",
    )
    assert result.returncode == 0, result.stderr
    assert np.load(root / "img" / "i3d_video" / f"{REAL_ID}.npy").shape == (28, 1024)
    assert (root / "img" / "audio" / "VGGish.pickle").exists()


def test_resume_does_not_redo_videos_without_audio(run) -> None:
    _, _, _, args = run
    result = run_cli(*args)
    assert result.returncode == 0 and "0 done, 6 skipped" in result.stderr
