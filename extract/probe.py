"""Stream metadata of a video file, read with the ffmpeg binary alone (imageio-ffmpeg ships no ffprobe)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extract.errors import VideoDecodeError
from extract.ffmpeg_binary import ffmpeg_path, input_args

PROBE_TIMEOUT_S = 120.0

_CONTAINER = re.compile(r"^Input #0, (.+?), from ", re.MULTILINE)
_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"^\s*Stream #(\d+):(\d+)\S*: (Video|Audio): (.*)$", re.MULTILINE)
_SIZE = re.compile(r"[ ,](\d{1,6})x(\d{1,6})[ ,\[]")
_FPS = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")
_SAMPLE_RATE = re.compile(r"(\d+) Hz")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees", re.IGNORECASE)
_TIMEBASE = re.compile(r"^#tb 0: (\d+)/(\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class StreamMetadata:
    """What one video file holds. width/height are as displayed (after the rotation metadata is applied)."""

    path: str
    size_bytes: int
    duration: float  # of the container (the longest stream)
    fps: float  # the stream's nominal rate
    frame_count: int
    video_start: float  # presentation time of the first frame, seconds on the file's timeline
    video_end: float  # end of the last frame on that timeline (0 = the start of the earliest stream)
    width: int
    height: int
    has_audio: bool
    codec: str
    container: str = ""
    rotation: int = 0
    audio_codec: str | None = None
    audio_sample_rate: int | None = None

    @property
    def average_fps(self) -> float:
        span = self.video_end - self.video_start
        return self.frame_count / span if span > 0 else self.fps

    @property
    def native_fps(self) -> float:
        """The nominal rate, unless it is far from the average (VFR files often report a timebase instead)."""
        average = self.average_fps
        if self.fps > 0 and abs(self.fps - average) <= 0.25 * average:
            return self.fps
        return average

    def as_attrs(self) -> dict[str, object]:
        """Flat attributes for the feature store (None becomes an empty string: HDF5 has no null)."""
        return {k: ("" if v is None else v) for k, v in dataclasses.asdict(self).items()}


def _seconds(match: re.Match[str]) -> float:
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


_COMPONENT = re.compile(r"^\[[^\]]+ @ 0x[0-9a-f]+\] ")
_HINTS = {"moov atom not found": "the file is truncated or was never finished"}


def _ffmpeg_reason(stderr: str) -> str:
    """ffmpeg's most specific complaint (a demuxer's own line beats the generic 'Error opening input')."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    specific = [
        _COMPONENT.sub("", line) for line in lines if _COMPONENT.match(line) and "Error opening input" not in line
    ]
    reason = specific[0] if specific else (lines[-1] if lines else "ffmpeg gave no message")
    hint = next((h for key, h in _HINTS.items() if key in reason), None)
    return f"{reason}: {hint}" if hint else reason


def _packet_times(listing: str) -> tuple[int, float, float]:
    """(frames, first pts, end of the last frame) in seconds from a `-f framecrc` packet listing.

    The end is the largest pts + duration (not the last dts + duration, which is short on files with B-frames).
    """
    timebase = _TIMEBASE.search(listing)
    rows = [line.split(",") for line in listing.splitlines() if line and not line.startswith("#")]
    if not rows or timebase is None:
        return 0, 0.0, 0.0
    unit = int(timebase.group(1)) / int(timebase.group(2))
    pts = np.array([int(row[2]) for row in rows], np.int64)
    durations = np.array([int(row[3]) for row in rows], np.int64)
    if len(pts) > 1 and (durations <= 0).any():
        step = int(np.median(np.diff(np.sort(pts))))
        durations = np.where(durations > 0, durations, step)
    return len(rows), float(pts.min() * unit), float((pts + durations).max() * unit)


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
    cmd = [ffmpeg_path(), "-hide_banner", "-nostdin", "-nostats", *input_args(file)]
    cmd += ["-map", "0:V:0?", "-c", "copy", "-f", "framecrc", "-"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise VideoDecodeError(f"{file}: probing took over {PROBE_TIMEOUT_S:.0f} s; the file may be damaged") from None
    stderr, progress = result.stderr, result.stdout
    streams = _STREAM.findall(stderr)
    if result.returncode != 0 and not streams:
        raise VideoDecodeError(f"{file}: not a readable media file ({_ffmpeg_reason(stderr)})")
    video = next((desc for _, _, kind, desc in streams if kind == "Video" and "attached pic" not in desc), None)
    audio = next((desc for _, _, kind, desc in streams if kind == "Audio"), None)
    if video is None:
        raise VideoDecodeError(f"{file}: has no video stream (audio-only or data file); remove it from the input")
    if result.returncode != 0:
        raise VideoDecodeError(f"{file}: video stream unreadable ({_ffmpeg_reason(stderr)})")
    size_match = _SIZE.search(video)
    if size_match is None:
        raise VideoDecodeError(f"{file}: video stream has no frame size ({video.strip()[:80]})")
    width, height = int(size_match.group(1)), int(size_match.group(2))
    rotation_match = _ROTATION.search(stderr)
    rotation = round(float(rotation_match.group(1))) % 360 if rotation_match else 0
    if rotation in (90, 270):
        width, height = height, width
    fps_match = _FPS.search(video)
    fps = float(fps_match.group(1)) * (1000 if fps_match.group(2) else 1) if fps_match else 0.0
    frame_count, video_start, video_end = _packet_times(progress)
    if frame_count == 0:
        raise VideoDecodeError(f"{file}: video stream holds no frames; the file is truncated or empty")
    duration_match = _DURATION.search(stderr)
    duration = _seconds(duration_match) if duration_match is not None else video_end
    if video_end <= 0:
        video_end = duration if duration > 0 else frame_count / (fps or 1.0)
    if fps == 0.0:
        fps = frame_count / video_end
    audio_rate = _SAMPLE_RATE.search(audio) if audio else None
    return StreamMetadata(
        path=str(file),
        size_bytes=size,
        duration=duration,
        fps=fps,
        frame_count=frame_count,
        video_end=video_end,
        video_start=video_start,
        width=width,
        height=height,
        has_audio=audio is not None,
        codec=video.split()[0].rstrip(","),
        container=container.group(1) if (container := _CONTAINER.search(stderr)) else "",
        rotation=rotation,
        audio_codec=audio.split()[0].rstrip(",") if audio else None,
        audio_sample_rate=int(audio_rate.group(1)) if audio_rate else None,
    )
