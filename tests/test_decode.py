import dataclasses
import itertools
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from extract.core.errors import VideoDecodeError
from extract.media import decode
from extract.media.decode import AudioSampling, FrameSampling, frame_ticks, iter_audio, iter_frames, sample_times
from extract.media.ffmpeg import ffmpeg_path
from extract.media.probe import channel_count, probe
from extract.models.presets import get_preset
from extract.models.windows import FrameWindows
from tests.videos import (
    REAL_VIDEO,
    ffmpeg,
    frame_number,
    grey_index,
    make_indexed_video,
    make_numbered_video,
    make_video,
    make_video_with_waveform,
)

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


def test_the_long_side_comes_from_the_ratio_so_whole_ratios_stay_whole(tmp_path: Path) -> None:
    # 720 * (1 + (224 - 576) / 576) is 279.99999999999994; CLIPImageProcessor and torchvision compute
    # int(720 * 224 / 576) = 280.
    sampling = FrameSampling(fps=1.0, short_side=224, crop=224)
    assert sampling.resized_size(720, 576) == (280, 224) and sampling.resized_size(576, 720) == (224, 280)
    assert sampling.crop_offsets(280, 224) == (28, 0)
    clip = get_preset("clip").frames
    assert clip is not None and clip.resized_size(720, 576) == (280, 224)
    frames, _ = _decode(
        make_video(tmp_path / "pal.mp4", 1, "720x576", audio=False), dataclasses.replace(sampling, crop=0)
    )
    assert frames.shape[1:] == (224, 280, 3)


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
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=64x48:rate=25:duration=6",
        "-itsoffset",
        "2",
        "-i",
        str(tone),
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "libx264",
        "-c:a",
        "copy",
        str(path),
    )
    meta = probe(path)
    samples = np.concatenate([c.samples for c in iter_audio(meta, AudioSampling(sample_rate=16000))])
    assert len(samples) / 16000 == pytest.approx(6.0, abs=0.1)
    assert np.abs(samples[: 16000 * 19 // 10]).max() < 0.01  # silence until the audio stream starts at 2 s
    assert np.abs(samples[16000 * 21 // 10 : 16000 * 3]).max() > 0.1


# --- VSLNet's frame selection: ffmpeg's `fps` filter at its defaults ------------------------------------------

VSLNET_CHARADES = get_preset("i3d-charades-vslnet")


@pytest.fixture(scope="module")
def clip_2997(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50.02 s at 29.97 fps (1499 frames): 1200.4 ticks of 1/24 s, where rounding up and to nearest part."""
    return make_numbered_video(tmp_path_factory.mktemp("ntsc") / "ntsc.mp4", 1499, "30000/1001")


@pytest.fixture(scope="module")
def late_start(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 frames at 29.97 fps that start 0.5 s after the soundtrack (so t = 0 shows no frame yet)."""
    folder = tmp_path_factory.mktemp("late")
    picture = make_numbered_video(folder / "picture.mp4", 60, "30000/1001")
    path = folder / "late.mp4"
    ffmpeg(
        "-itsoffset",
        "0.5",
        "-i",
        str(picture),
        "-f",
        "lavfi",
        "-t",
        "3",
        "-i",
        "sine=sample_rate=16000",
        "-map",
        "0:v",
        "-map",
        "1:a",
        "-c:v",
        "copy",
        "-c:a",
        "aac",
        str(path),
    )
    return path


def _vslnet_reference(path: Path, folder: Path, identify) -> list[int]:  # type: ignore[no-untyped-def]
    """The frames of VSLNet's own extraction, `ffmpeg -i VIDEO -filter:v fps=fps=24 DIR/ID-%6d.jpg` (as PNG here,
    so that nothing but the selection can differ), identified by their content."""
    import cv2

    folder.mkdir()
    ffmpeg("-i", str(path), "-filter:v", "fps=fps=24", str(folder / "frame-%6d.png"))
    return [identify(cv2.imread(str(image))[:, :, ::-1]) for image in sorted(folder.glob("frame-*.png"))]


def _selected(path: Path, sampling: FrameSampling, identify) -> list[int]:  # type: ignore[no-untyped-def]
    return [identify(frame) for batch in iter_frames(probe(path), sampling) for frame in batch.data]


@pytest.mark.parametrize("decoder", ["ffmpeg", "decord"])
@pytest.mark.parametrize("video", ["clip_2997", "late_start", "vfr_video"])
def test_vslnet_presets_take_the_frames_of_ffmpeg_fps_filter(request, tmp_path: Path, video: str, decoder: str) -> None:
    path = request.getfixturevalue(video)
    identify = grey_index if video == "vfr_video" else frame_number
    assert VSLNET_CHARADES.frames is not None and VSLNET_CHARADES.frames.selection == "ffmpeg_fps_near"
    sampling = dataclasses.replace(VSLNET_CHARADES.frames, decoder=decoder, crop=0, resize="none")
    ours = _selected(path, sampling, identify)
    reference = _vslnet_reference(path, tmp_path / "frames", identify)
    assert len(ours) == len(reference) and ours == reference
    if video == "clip_2997" and decoder == "ffmpeg":
        shown_at = _selected(path, dataclasses.replace(sampling, selection="shown_at"), identify)
        differ = np.mean([a != b for a, b in zip(shown_at, ours, strict=False)])
        print(f"\n29.97 fps -> 24: {len(ours)} frames (shown_at: {len(shown_at)}), {differ:.0%} of them differ")


def test_a_50_02_second_ntsc_clip_gives_vslnets_100_rows(clip_2997: Path) -> None:
    meta = probe(clip_2997)
    assert meta.stream_end == pytest.approx(50.0167, abs=1e-3)
    windowing = VSLNET_CHARADES.windowing
    windower = FrameWindows(windowing.window, windowing.stride, windowing.chunk)
    assert VSLNET_CHARADES.frames is not None
    frames, rows = 0, 0
    for batch in iter_frames(meta, dataclasses.replace(VSLNET_CHARADES.frames, short_side=64, crop=64)):
        frames += len(batch)
        units = windower.push(batch)
        rows += 0 if units is None else units.spans.shape[0] * units.spans.shape[1]
    tail = windower.finish()
    rows += 0 if tail is None else tail.spans.shape[0] * tail.spans.shape[1]
    assert (frames, rows) == (1200, 100)  # rounding up gave 1201 frames and 102 rows


def test_selection_rules_are_recorded_in_provenance() -> None:
    assert VSLNET_CHARADES.recipe()["frames.selection"] == "ffmpeg_fps_near"
    assert get_preset("i3d-anet-vslnet").recipe()["frames.selection"] == "ffmpeg_fps_near"
    assert get_preset("i3d-anet-vslnet").recipe()["frames.interpolation"] == "cv2_bilinear"
    assert get_preset("clip").recipe()["frames.selection"] == "shown_at"
    assert get_preset("i3d").recipe()["frames.selection"] == "shown_at"
    assert get_preset("panns").recipe()["audio.downmix"] == "channel_mean"


def test_frame_ticks_round_half_ticks_up_as_ffmpeg_does() -> None:
    starts = np.array([0.0, 1 / 48, 2 / 48, 3 / 48])  # 48 fps to 24: every other frame sits on a half tick
    assert frame_ticks(starts, 24.0, "ffmpeg_fps_near").tolist() == [0, 1, 1, 2]
    assert frame_ticks(starts, 24.0, "shown_at").tolist() == [0, 1, 1, 2]
    assert sample_times(starts, 4 / 48, 24.0, "ffmpeg_fps_near")[1].tolist() == [0, 2]


# --- VSLNet's resize: cv2.resize(fx=fy=scale), bilinear without antialiasing ----------------------------------


def _cv2_reference_difference(path: Path, preset: str, chunks: int = 3) -> tuple[float, int, int]:
    """Mean and max |ours - cv2| over the sampled frames of the first `chunks` chunks, and their count.

    The reference is VSLNet's code on the same decoded frames: cv2.resize(frame, (0, 0), fx=s, fy=s) with
    s = 1 + (short_side - min(h, w)) / min(h, w), then the centre crop at int(np.round((h - 224) / 2.)).
    """
    import cv2

    frames = get_preset(preset).frames
    assert frames is not None
    meta = probe(path)
    unscaled = dataclasses.replace(frames, resize="none", crop=0)
    total, peak, count = 0.0, 0, 0
    pairs = zip(iter_frames(meta, frames), iter_frames(meta, unscaled), strict=True)
    for ours, plain in itertools.islice(pairs, chunks):
        height, width = plain.data.shape[1:3]
        short = min(height, width)
        scale = 1 + (frames.short_side - short) / short
        for got, frame in zip(ours.data, plain.data, strict=True):
            resized = cv2.resize(frame, (0, 0), fx=scale, fy=scale) if frames.scale(width, height) else frame
            top = int(np.round((resized.shape[0] - 224) / 2.0))
            left = int(np.round((resized.shape[1] - 224) / 2.0))
            difference = np.abs(got.astype(np.int16) - resized[top : top + 224, left : left + 224])
            total, peak, count = total + float(difference.mean()), max(peak, int(difference.max())), count + 1
    return total / count, peak, count


def test_activitynet_downscale_is_cv2_bilinear_without_antialiasing() -> None:
    mean, peak, count = _cv2_reference_difference(REAL_VIDEO, "i3d-anet-vslnet")
    print(f"\ni3d-anet-vslnet vs cv2 on the real video (480x360 -> 299x224): mean |diff| {mean:.3f}, max {peak}")
    assert count == 144 and mean < 0.5 and peak <= 1  # swscale's antialiased bilinear: mean 2.0, max 76


def test_charades_upscale_is_cv2_bilinear(tmp_path: Path) -> None:
    path = make_video(tmp_path / "small.mp4", seconds=2, size="320x180", audio=False)
    mean, peak, count = _cv2_reference_difference(path, "i3d-charades-vslnet")
    print(f"\ni3d-charades-vslnet vs cv2 (320x180 -> 402x226): mean |diff| {mean:.3f}, max {peak}")
    assert count == 48 and mean < 0.5 and peak <= 1  # swscale's bilinear: mean 1.1, max 93


# --- audio: channel mean, resampy's filter ----------------------------------------------------------------------


def _decoded_audio(path: Path, sample_rate: int) -> np.ndarray:
    return np.concatenate([c.samples for c in iter_audio(probe(path), AudioSampling(sample_rate=sample_rate))])


def test_stereo_soundtrack_is_the_mean_of_its_channels(tmp_path: Path) -> None:
    t = np.arange(2 * 16000) / 16000
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), 0.25 * np.sin(2 * np.pi * 1000 * t)
    path = make_video_with_waveform(tmp_path / "stereo.mkv", np.stack([left, right], axis=1), 16000)
    samples = _decoded_audio(path, 16000)
    assert len(samples) == len(t)
    np.testing.assert_allclose(samples, (left + right) / 2, atol=1e-6)  # ffmpeg's -ac 1: 0.7071 * (L + R)


def test_every_channel_of_a_5_1_soundtrack_weighs_the_same(tmp_path: Path) -> None:
    levels = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])  # FL FR FC LFE BL BR, each a constant
    path = make_video_with_waveform(tmp_path / "surround.mkv", np.tile(levels, (16000, 1)), 16000)
    meta = probe(path)
    assert meta.audio_channels == 6
    np.testing.assert_allclose(_decoded_audio(path, 16000)[100:-100], levels.mean(), atol=1e-6)


def test_resampling_follows_resampys_kaiser_best(tmp_path: Path) -> None:
    """torchvggish resamples with resampy's kaiser_best (librosa < 0.10 too); torchaudio documents the same
    filter in its own parameters, which serve as the reference here."""
    import torch
    import torchaudio.functional

    rate = 48000
    t = np.arange(3 * rate) / rate
    noise = np.random.default_rng(0).standard_normal(len(t))
    waveform = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.15 * np.sin(2 * np.pi * (300 * t + 200 * t * t)) + 0.05 * noise
    path = make_video_with_waveform(tmp_path / "48k.mkv", waveform, rate)
    kaiser_best = {
        "lowpass_filter_width": 64,
        "rolloff": 0.9475937167399596,
        "resampling_method": "sinc_interp_kaiser",
        "beta": 14.769656459379492,
    }
    reference = torchaudio.functional.resample(torch.from_numpy(waveform), rate, 16000, **kaiser_best).numpy()
    ours = _decoded_audio(path, 16000)
    assert abs(len(ours) - len(reference)) <= 1
    inner = slice(100, min(len(ours), len(reference)) - 100)  # both filters see the edges differently
    difference = np.abs(ours[inner] - reference[inner]).max()
    print(f"\n48 kHz -> 16 kHz vs resampy's kaiser_best: max |diff| {difference:.2g} (swresample's default: 1e-2)")
    assert difference < 1e-4


LAYOUTS = [("mono", 1), ("stereo", 2), ("5.1(side)", 6), ("7.1", 8), ("6 channels", 6), ("FL+FR+LFE", 3), ("x", None)]


@pytest.mark.parametrize(("layout", "channels"), LAYOUTS)
def test_channel_counts_of_ffmpeg_layouts(layout: str, channels: int | None) -> None:
    assert channel_count(layout) == channels


# --- the stall watchdog -----------------------------------------------------------------------------------------


def test_a_busy_consumer_does_not_make_the_decoder_look_stalled(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(decode, "STALL_TIMEOUT_S", 1.0)
    path = make_video(tmp_path / "v.mp4", seconds=2, size="64x48", audio=False)
    frames = 0
    for batch in iter_frames(probe(path), FrameSampling(fps=8.0, short_side=48, crop=48, chunk_frames=4)):
        if frames == 0:
            time.sleep(1.8)  # the model (or a full queue) holds the first chunk longer than the timeout
        frames += len(batch)
    assert frames == 16


def test_a_slow_but_steady_decoder_is_not_stalled(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A chunk that takes longer than the timeout to fill is fine while bytes keep coming (--fps 0.1, 4K HEVC)."""
    monkeypatch.setattr(decode, "STALL_TIMEOUT_S", 1.0)
    frame_bytes = 16 * 16 * 3
    cmd = [
        ffmpeg_path(),
        "-v",
        "error",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=16x16:rate=10:duration=2.5",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "pipe:1",
    ]  # -re: one frame every 0.1 s
    blocks = list(decode._pipe_chunks(cmd, frame_bytes * 100, "slow"))
    assert sum(len(b) for b in blocks) == 25 * frame_bytes


def test_a_silent_decoder_is_stopped(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(decode, "STALL_TIMEOUT_S", 1.0)
    start = time.monotonic()
    with pytest.raises(VideoDecodeError, match="sent nothing for 1 s and was stopped"):
        list(decode._pipe_chunks([sys.executable, "-c", "import time; time.sleep(60)"], 100, "hung"))
    assert time.monotonic() - start < 10


def test_a_stalled_decord_call_fails_the_video(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import decord

    monkeypatch.setattr(decode, "STALL_TIMEOUT_S", 1.0)
    hung = threading.Event()
    monkeypatch.setattr(decord.VideoReader, "get_batch", lambda self, indices: hung.wait(30))
    path = make_video(tmp_path / "v.mp4", seconds=1, size="64x48", audio=False)
    with pytest.raises(VideoDecodeError, match="decoder stalled for 1 s"):
        list(iter_frames(probe(path), FrameSampling(fps=4.0, short_side=48, crop=48, decoder="decord")))
    hung.set()


def test_native_rate_sampling_takes_every_frame_of_a_23_976_fps_video_once(tmp_path: Path) -> None:
    """i3d-anet-vslnet samples at the native rate, as VSLNet writes every frame. The header prints "23.98" for
    24000/1001; sampling at that rate repeated frame 0 (round up) or a frame near 2 min (round to nearest)."""
    path = make_numbered_video(tmp_path / "film.mp4", 3100, "24000/1001")
    meta = probe(path)
    assert meta.fps == pytest.approx(24000 / 1001, rel=1e-12)
    frames = get_preset("i3d-anet-vslnet").frames
    assert frames is not None and frames.fps is None
    sampling = dataclasses.replace(frames, resize="none", crop=0)
    assert [frame_number(f) for batch in iter_frames(meta, sampling) for f in batch.data] == list(range(3100))


@pytest.mark.parametrize("decoder", ["ffmpeg", "decord"])
def test_every_decoder_read_reaches_the_threads_progress_listener(tmp_path: Path, decoder: str) -> None:
    """How the engine's worker watchdog hears a slow decode: every read (or decord call), not every chunk."""
    from extract.media.watchdog import progress_reports

    meta = probe(make_video(tmp_path / "v.mp4", seconds=2, size="64x48", audio=True))
    sampling = FrameSampling(fps=8.0, short_side=48, crop=48, chunk_frames=16, decoder=decoder)
    reads: list[str] = []
    elsewhere: list[int] = []
    other = threading.Thread(target=lambda: elsewhere.append(sum(len(b) for b in iter_frames(meta, sampling))))
    with progress_reports(lambda: reads.append(threading.current_thread().name)):
        other.start()  # a decode in another thread reports to its own listener, not to this one
        chunks = list(iter_frames(meta, sampling))
        audio = list(iter_audio(meta, AudioSampling(chunk_seconds=10.0)))
        other.join()
    assert len(chunks) == 1 and len(audio) == 1 and elsewhere == [16]
    assert len(reads) > len(chunks) + len(audio) and set(reads) == {threading.current_thread().name}
