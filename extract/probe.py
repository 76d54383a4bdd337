"""Stream metadata of a video file, read with the ffmpeg binary alone (imageio-ffmpeg ships no ffprobe)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from extract.errors import VideoDecodeError
from extract.ffmpeg_binary import ffmpeg_path, input_args

PROBE_TIMEOUT_S = 120.0

_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"^\s*Stream #(\d+):(\d+)\S*: (Video|Audio): (.*)$", re.MULTILINE)
_SIZE = re.compile(r"[ ,](\d{1,6})x(\d{1,6})[ ,\[]")
_FPS = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")
_SAMPLE_RATE = re.compile(r"(\d+) Hz")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees", re.IGNORECASE)
_FRAMES = re.compile(r"frame=\s*(\d+)")
_LAST_TIME = re.compile(r"time=(\d+):(\d+):(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class StreamMetadata:
    """What one video file holds. width/height are as displayed (after the rotation metadata is applied)."""

    path: str
    size_bytes: int
    duration: float
    fps: float
    frame_count: int
    width: int
    height: int
    has_audio: bool
    codec: str
    rotation: int = 0
    audio_codec: str | None = None
    audio_sample_rate: int | None = None

    def as_attrs(self) -> dict[str, object]:
        """Flat attributes for the feature store (None becomes an empty string: HDF5 has no null)."""
        return {k: ("" if v is None else v) for k, v in dataclasses.asdict(self).items()}


def _seconds(match: re.Match[str]) -> float:
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "ffmpeg gave no message"


def probe(path: str | os.PathLike[str]) -> StreamMetadata:
    """Read the container header and count the video packets (stream copy: nothing is decoded).

    The packet count is the exact frame count, also for variable-frame-rate files, at the cost of one
    demux pass (milliseconds for a typical file).
    """
    file = Path(path)
    if not file.is_file():
        raise VideoDecodeError(f"{file}: no such file")
    size = file.stat().st_size
    if size == 0:
        raise VideoDecodeError(f"{file}: file is empty (0 bytes); re-download or remove it")
    cmd = [ffmpeg_path(), "-hide_banner", "-nostdin", *input_args(file)]
    cmd += ["-map", "0:V:0?", "-c", "copy", "-f", "null", "-"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise VideoDecodeError(f"{file}: probing took over {PROBE_TIMEOUT_S:.0f} s; the file may be damaged") from None
    stderr = result.stderr
    streams = _STREAM.findall(stderr)
    if result.returncode != 0 and not streams:
        raise VideoDecodeError(f"{file}: not a readable media file ({_last_error_line(stderr)})")
    video = next((desc for _, _, kind, desc in streams if kind == "Video" and "attached pic" not in desc), None)
    audio = next((desc for _, _, kind, desc in streams if kind == "Audio"), None)
    if video is None:
        raise VideoDecodeError(f"{file}: has no video stream (audio-only or data file); remove it from the input")
    if result.returncode != 0:
        raise VideoDecodeError(f"{file}: video stream unreadable ({_last_error_line(stderr)})")
    size_match = _SIZE.search(video)
    if size_match is None:
        raise VideoDecodeError(f"{file}: video stream has no frame size ({video.strip()[:80]})")
    width, height = int(size_match.group(1)), int(size_match.group(2))
    rotation_match = _ROTATION.search(stderr)
    rotation = int(round(float(rotation_match.group(1)))) % 360 if rotation_match else 0
    if rotation in (90, 270):
        width, height = height, width
    fps_match = _FPS.search(video)
    fps = float(fps_match.group(1)) * (1000 if fps_match.group(2) else 1) if fps_match else 0.0
    frames = [int(n) for n in _FRAMES.findall(stderr)]
    frame_count = frames[-1] if frames else 0
    if frame_count == 0:
        raise VideoDecodeError(f"{file}: video stream holds no frames; the file is truncated or empty")
    duration_match = _DURATION.search(stderr)
    if duration_match is not None:
        duration = _seconds(duration_match)
    else:
        times = list(_LAST_TIME.finditer(stderr))
        duration = _seconds(times[-1]) if times else (frame_count / fps if fps else 0.0)
    if fps == 0.0 and duration > 0:
        fps = frame_count / duration
    audio_rate = _SAMPLE_RATE.search(audio) if audio else None
    return StreamMetadata(
        path=str(file),
        size_bytes=size,
        duration=duration,
        fps=fps,
        frame_count=frame_count,
        width=width,
        height=height,
        has_audio=audio is not None,
        codec=video.split()[0].rstrip(","),
        rotation=rotation,
        audio_codec=audio.split()[0].rstrip(",") if audio else None,
        audio_sample_rate=int(audio_rate.group(1)) if audio_rate else None,
    )
