from pathlib import Path

import numpy as np
import pytest

from extract.decode import AudioSampling, FrameSampling, iter_audio, iter_frames, sample_times
from extract.errors import VideoDecodeError
from extract.probe import probe
from tests.videos import REAL_VIDEO, ffmpeg, grey_index, make_indexed_video, make_video

# Frames shown from these times (seconds): bursts and gaps, i.e. a variable-frame-rate file.
VFR_PTS = [0.0, 0.1, 0.2, 0.3, 1.3, 1.4, 2.9, 3.0, 3.05, 3.5]


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_indexed_video(tmp_path_factory.mktemp("vfr") / "vfr.mp4", VFR_PTS)


def _decode(path: Path, sampling: FrameSampling) -> tuple[np.ndarray, np.ndarray]:
    batches = list(iter_frames(probe(path), sampling))
    return np.concatenate([b.data for b in batches]), np.concatenate([b.pts_seconds for b in batches])


@pytest.mark.parametrize("decoder", ["ffmpeg", "decord"])
@pytest.mark.parametrize("fps", [1.0, 4.0])
def test_frame_k_is_the_frame_shown_at_k_over_fps_on_vfr_files(vfr_video: Path, decoder: str, fps: float) -> None:
    frames, pts = _decode(vfr_video, FrameSampling(fps=fps, short_side=64, crop=0, decoder=decoder))
    expected = [max(i for i, t in enumerate(VFR_PTS) if t <= k / fps + 1e-9) for k in range(len(frames))]
    assert [grey_index(f) for f in frames] == expected
    np.testing.assert_allclose(pts, np.arange(len(frames)) / fps)
    assert len(frames) == int(np.ceil(3.5 * fps)) + (1 if fps == 4.0 else 0)


def test_both_decoders_pick_the_same_frames_on_real_footage() -> None:
    sampling = FrameSampling(fps=1.0, short_side=224, crop=224)
    pipe, pipe_pts = _decode(REAL_VIDEO, sampling)
    seek, seek_pts = _decode(REAL_VIDEO, FrameSampling(fps=1.0, short_side=224, crop=224, decoder="decord"))
    assert pipe.shape == seek.shape == (14, 224, 224, 3)
    np.testing.assert_array_equal(pipe_pts, seek_pts)
    # Same frames; only the resize kernels differ (decord uses swscale's default bicubic): ~1.5 grey levels.
    # A neighbouring frame of this footage differs by 5 to 19 levels on average.
    assert np.abs(pipe.astype(int) - seek).mean() < 3.0


def test_frames_arrive_in_bounded_chunks_with_timestamps() -> None:
    batches = list(iter_frames(probe(REAL_VIDEO), FrameSampling(fps=24.0, chunk_frames=16)))
    assert all(len(b) <= 16 for b in batches)
    assert sum(len(b) for b in batches) == 14 * 24  # the video stream ends at 14.0 s (420 frames at 30 fps)
    assert all(b.data.shape[1:] == (224, 224, 3) and b.data.dtype == np.uint8 for b in batches)
    pts = np.concatenate([b.pts_seconds for b in batches])
    np.testing.assert_allclose(np.diff(pts), 1 / 24)


def test_resize_keeps_aspect_and_centre_crops() -> None:
    sampling = FrameSampling(fps=1.0, short_side=224, crop=0)
    assert sampling.output_size(480, 360) == (298, 224)  # long side truncated, as CLIPImageProcessor does
    assert sampling.output_size(17, 9) == (423, 224)
    assert FrameSampling(short_side=256, resize="shorter_if_below", crop=0).output_size(640, 480) == (640, 480)
    frames, _ = _decode(REAL_VIDEO, sampling)
    assert frames.shape[1:] == (224, 298, 3)


@pytest.mark.parametrize("decoder", ["ffmpeg", "decord"])
def test_odd_sizes_decode(tmp_path: Path, decoder: str) -> None:
    path = make_video(tmp_path / "odd.mp4", size="17x9", audio=False, extra=("-pix_fmt", "yuv444p"))
    frames, _ = _decode(path, FrameSampling(fps=2.0, decoder=decoder))
    assert frames.shape == (4, 224, 224, 3)


def test_rotated_video_is_decoded_upright(tmp_path: Path) -> None:
    plain = make_video(tmp_path / "plain.mp4", size="320x240", audio=False)
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(plain), "-c", "copy", str(rotated))
    for decoder in ("ffmpeg", "decord"):  # decord cannot rotate, so rotated files always go through ffmpeg
        frames, _ = _decode(rotated, FrameSampling(fps=1.0, short_side=100, crop=0, decoder=decoder))
        assert frames.shape[1:] == (133, 100, 3)


def test_single_frame_video(tmp_path: Path) -> None:
    path = tmp_path / "one.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-frames:v", "1", "-c:v", "libx264", str(path))
    frames, pts = _decode(path, FrameSampling(fps=1.0, short_side=48, crop=48))
    assert frames.shape == (1, 48, 48, 3) and pts.tolist() == [0.0]


def test_sample_times_cover_the_stream() -> None:
    targets, indices = sample_times(np.array([0.0, 0.5, 1.0]), 1.5, 2.0)
    assert targets.tolist() == [0.0, 0.5, 1.0] and indices.tolist() == [0, 1, 2]


def test_audio_is_mono_float_at_the_model_rate_in_chunks() -> None:
    meta = probe(REAL_VIDEO)
    chunks = list(iter_audio(meta, AudioSampling(sample_rate=16000, chunk_seconds=4.0)))
    assert all(len(c.samples) <= 64000 for c in chunks)
    assert [c.start_seconds for c in chunks] == [0.0, 4.0, 8.0, 12.0]
    samples = np.concatenate([c.samples for c in chunks])
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) / 16000 == pytest.approx(14.05, abs=0.05)
    assert 0.01 < np.abs(samples).max() <= 1.0


def test_audio_of_a_silent_video_is_refused_clearly(tmp_path: Path) -> None:
    meta = probe(make_video(tmp_path / "silent.mp4", audio=False))
    with pytest.raises(VideoDecodeError, match="no audio stream"):
        next(iter_audio(meta, AudioSampling()))


def test_corrupt_stream_fails_with_ffmpeg_message(tmp_path: Path) -> None:
    whole = make_video(tmp_path / "whole.mp4", seconds=4, extra=("-movflags", "+faststart"))
    data = bytearray(whole.read_bytes())
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(bytes(data[: len(data) * 2 // 3]))
    meta = probe(cut) if _probe_ok(cut) else None
    if meta is None:
        pytest.skip("this ffmpeg refuses the cut file at probe time (covered in test_probe)")
    frames = sum(len(b) for b in iter_frames(meta, FrameSampling(fps=5.0)))
    assert 0 < frames <= 20


def _probe_ok(path: Path) -> bool:
    try:
        probe(path)
    except VideoDecodeError:
        return False
    return True


def test_b_frames_do_not_shorten_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "bframes.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=30:duration=4", "-c:v", "libx264", "-bf", "3", str(path))
    meta = probe(path)
    assert meta.frame_count == 120 and meta.stream_end == pytest.approx(4.0)
    for decoder in ("ffmpeg", "decord"):
        frames, _ = _decode(path, FrameSampling(fps=24.0, short_side=48, crop=48, decoder=decoder))
        assert len(frames) == 96


def test_audio_that_starts_late_keeps_its_place_on_the_timeline(tmp_path: Path) -> None:
    tone = tmp_path / "tone.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000:duration=4", "-c:a", "aac", str(tone))
    path = tmp_path / "late_audio.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25:duration=6", "-itsoffset", "2", "-i", str(tone),
           "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-c:a", "copy", str(path))  # fmt: skip
    meta = probe(path)
    samples = np.concatenate([c.samples for c in iter_audio(meta, AudioSampling(sample_rate=16000))])
    assert len(samples) / 16000 == pytest.approx(6.0, abs=0.1)
    assert np.abs(samples[: 16000 * 19 // 10]).max() < 0.01  # silence until the audio stream starts at 2 s
    assert np.abs(samples[16000 * 21 // 10 : 16000 * 3]).max() > 0.1
