"""Real media files for tests, made with the same ffmpeg binary the project runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from extract.ffmpeg_binary import ffmpeg_path
from tests.testdata import REAL_VIDEO as REAL_VIDEO  # re-exported for the tests that make videos


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_path(), "-v", "error", "-nostdin", "-y", *args], check=True)


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
    subprocess.run(
        [
            ffmpeg_path(),
            "-v",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{size}x{size}",
            "-r",
            "1000",
            "-i",
            "pipe:0",
            "-vf",
            f"setpts=({expression})/TB",
            "-fps_mode",
            "passthrough",
            "-c:v",
            "libx264",
            "-qp",
            "0",
            "-pix_fmt",
            "yuv444p",
            "-preset",
            "ultrafast",
            str(path),
        ],
        input=frames.tobytes(),
        check=True,
    )
    return path


def grey_index(frame: np.ndarray) -> int:
    """Which source frame of make_indexed_video this decoded frame is."""
    return round(float(frame.mean()) / 8)
