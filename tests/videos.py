"""Real media files for tests, made with the same ffmpeg binary the project runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from extract.media.ffmpeg import ffmpeg_path
from tests.testdata import REAL_VIDEO as REAL_VIDEO  # re-exported for the tests that make videos


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_path(), "-v", "error", "-nostdin", "-y", *args], check=True)


LOSSLESS_RGB = ("-c:v", "libx264rgb", "-qp", "0")  # the frames' RGB bytes back exactly
LOSSLESS_YUV444 = ("-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv444p", "-preset", "ultrafast")


def encode_frames(
    path: Path, frames: np.ndarray, rate: str, codec: tuple[str, ...] = LOSSLESS_RGB, filters: tuple[str, ...] = ()
) -> Path:
    """A video of `frames` (N, H, W, 3) uint8 RGB at `rate` frames per second, piped raw into ffmpeg."""
    height, width = frames.shape[1:3]
    source = ("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", rate, "-i", "pipe:0")
    command = [ffmpeg_path(), "-v", "error", "-nostdin", "-y", *source, *filters, *codec, str(path)]
    subprocess.run(command, input=np.ascontiguousarray(frames).tobytes(), check=True)
    return path


def make_video(
    path: Path,
    seconds: float = 2.0,
    size: str = "320x240",
    rate: int = 25,
    audio: bool = True,
    audio_rate: int = 44100,
    extra: tuple[str, ...] = (),
    audio_seconds: float | None = None,
    channels: int = 1,
    silent: bool = False,
) -> Path:
    """An H.264 (+ AAC) mp4 with a moving test pattern and a sine tone (or silence)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={seconds}"]
    if audio:
        length = seconds if audio_seconds is None else audio_seconds
        layout = "mono" if channels == 1 else "stereo"
        source = (
            f"anullsrc=channel_layout={layout}:sample_rate={audio_rate}"
            if silent
            else f"sine=frequency=440:sample_rate={audio_rate}"
        )
        args += ["-f", "lavfi", "-t", str(length), "-i", source]
    args += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    args += ["-c:a", "aac", "-ac", str(channels), "-ar", str(audio_rate)] if audio else []
    ffmpeg(*args, *extra, str(path))
    return path


def make_indexed_video(path: Path, pts: list[float], size: int = 64) -> Path:
    """A lossless video whose frame i is a flat grey of level 8 * i, shown from pts[i] seconds (VFR allowed).

    A decoded frame's mean grey level then tells which source frame it is.
    """
    frames = np.stack([np.full((size, size, 3), 8 * i, np.uint8) for i in range(len(pts))])
    # ffmpeg's setpts with a per-frame lookup table: build the expression from the list of times.
    expression = "+".join(f"eq(N\\,{i})*{t}" for i, t in enumerate(pts))
    filters = ("-vf", f"setpts=({expression})/TB", "-fps_mode", "passthrough")
    return encode_frames(path, frames, "1000", LOSSLESS_YUV444, filters)


def grey_index(frame: np.ndarray) -> int:
    """Which source frame of make_indexed_video this decoded frame is."""
    return round(float(frame.mean()) / 8)


def make_numbered_video(path: Path, frames: int, rate: str, size: int = 64) -> Path:
    """A lossless constant-rate video of `frames` frames at `rate` (e.g. "30000/1001") whose frame i shows i.

    The number is written in base 16 as three vertical stripes of flat grey (16 * digit + 8), so a decoded,
    resized or cropped frame still tells which source frame it is (frame_number), up to 4096 frames.
    """
    index = np.arange(frames)
    pixels = np.zeros((frames, size, size, 3), np.uint8)
    for digit in range(3):
        level = 16 * ((index // 16**digit) % 16) + 8
        pixels[:, :, digit * size // 3 : (digit + 1) * size // 3] = level[:, None, None, None]
    return encode_frames(path, pixels, rate, LOSSLESS_YUV444)


def frame_number(frame: np.ndarray) -> int:
    """Which source frame of make_numbered_video this decoded frame is (the middle of each stripe is read)."""
    width = frame.shape[1]
    number = 0
    for digit in range(3):
        left, right = digit * width // 3, (digit + 1) * width // 3
        middle = frame[:, left + (right - left) // 4 : right - (right - left) // 4]
        number += 16**digit * round((float(middle.mean()) - 8) / 16)
    return number


def make_video_with_waveform(path: Path, waveform: np.ndarray, sample_rate: int, size: str = "64x48") -> Path:
    """A video whose soundtrack is exactly `waveform` ([n] mono or [n, channels], float in [-1, 1]).

    The audio is stored losslessly (float PCM in Matroska), so what the product decodes is the array itself.
    """
    samples = np.asarray(waveform, np.float32)
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    seconds = len(samples) / sample_rate
    subprocess.run(
        [
            ffmpeg_path(),
            "-v",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate=25:duration={seconds}",
            "-f",
            "f32le",
            "-ar",
            str(sample_rate),
            "-ac",
            str(channels),
            "-i",
            "pipe:0",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "pcm_f32le",
            str(path),
        ],
        input=samples.tobytes(),
        check=True,
    )
    return path
