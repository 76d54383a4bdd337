"""What the demo page shows of a video file besides the model's answer: a keyframe at a time (a JPEG made by the
project's ffmpeg), the waveform's peaks (the project's audio decoding), and the uploads it keeps.

An upload is checked as every other input video is: its name must end in a video extension (extract.media.sources)
and its content must open as a video through probe(), whose ffmpeg reads only self-contained container formats
(extract.media.ffmpeg), whatever the name says. It is written under a temporary name first and then linked to
its final name, which never replaces a file: "clip.mp4" becomes "clip-1.mp4" when a clip.mp4 is there already.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path

from extract.core.errors import VideoDecodeError
from extract.media.ffmpeg import ffmpeg_path, input_args
from extract.media.probe import ffmpeg_reason, probe, stored_duration
from extract.media.sources import VIDEO_EXTENSIONS
from img_model.predict.plot import read_envelope

KEYFRAME_WIDTH = 160  # px: a thumbnail beside a span
KEYFRAME_TIMEOUT_S = 60.0
WAVEFORM_BINS = 800  # peaks across the timeline: about one per pixel of the page's chart
UPLOAD_NAME_CHARS = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class UploadRefused(ValueError):
    """An upload that is not kept (a name that is no video's, content that is no video): one line, the client's."""


@dataclass(frozen=True)
class Waveform:
    duration: float  # seconds the peaks cover, as the video's features count them (stored_duration)
    peaks: list[tuple[float, float]] | None  # (min, max) of the mono soundtrack per equal slice; None: no audio

    def as_json(self) -> dict[str, object]:
        return {"duration": self.duration, "peaks": self.peaks}


def video_duration(path: Path) -> float:
    """The duration the features of `path` cover (its header's, else where its packets end)."""
    duration = stored_duration(probe(path).as_attrs())
    if duration is None:
        raise VideoDecodeError(f"{path}: no duration in its header or packets")
    return duration


def waveform(path: Path, bins: int = WAVEFORM_BINS) -> Waveform:
    """The soundtrack's (min, max) in `bins` equal slices of the video's duration, rounded to 4 decimals."""
    duration = video_duration(path)
    envelope = read_envelope(path, duration, bins)
    if envelope is None:
        return Waveform(duration, None)
    return Waveform(duration, [(round(float(low), 4), round(float(high), 4)) for low, high in envelope])


def keyframe_jpeg(path: Path, seconds: float, width: int = KEYFRAME_WIDTH) -> bytes:
    """The frame shown at `seconds`, `width` px wide, as a JPEG (ffmpeg seeks to the keyframe before it and
    decodes up to the time)."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a keyframe's time must be finite and >= 0 seconds, not {seconds}")
    command = [ffmpeg_path(), "-hide_banner", "-nostdin", "-v", "error", "-ss", f"{seconds:.3f}", *input_args(path)]
    command += ["-frames:v", "1", "-vf", f"scale={width}:-2", "-f", "image2", "-c:v", "mjpeg", "pipe:1"]
    made = subprocess.run(command, capture_output=True, timeout=KEYFRAME_TIMEOUT_S, check=False)
    if made.returncode != 0 or not made.stdout:
        reason = ffmpeg_reason(made.stderr.decode(errors="replace"), path) if made.returncode else "past its end"
        raise VideoDecodeError(f"{path}: no frame at {seconds:.2f} s, past its end or not decodable ({reason})")
    return made.stdout


def upload_name(name: str) -> str:
    """The file name an upload called `name` (by the client) is kept under: its last path part, characters other
    than letters, digits, '.', '_' and '-' as '_', at most UPLOAD_NAME_CHARS; refused unless it ends in a video
    extension."""
    base = _UNSAFE.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1])
    stem, dot, extension = base.rpartition(".")
    suffix = f".{extension.lower()}" if dot else ""
    if suffix not in VIDEO_EXTENSIONS:
        known = " ".join(sorted(VIDEO_EXTENSIONS))
        raise UploadRefused(f"{name[:100]!r} is not a video file name: upload a file ending in one of {known}")
    stem = stem.lstrip(".")[: UPLOAD_NAME_CHARS - len(suffix)] or "video"  # no hidden files
    return stem + suffix


async def receive_upload(folder: Path, chunks: AsyncIterable[bytes]) -> Path:
    """The upload's bytes in a new hidden file of `folder` (made if missing), removed if the stream fails (the body
    limit stopping it included)."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".upload-{uuid.uuid4().hex}.part"
    try:
        with open(part, "xb") as file:
            async for chunk in chunks:
                file.write(chunk)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return part


def keep_upload(part: Path, name: str) -> Path:
    """The received file `part` under `name` (upload_name's) in its folder, or the first free name-N: it must
    open as a video (probe), else it is removed and UploadRefused says why, naming `name` only."""
    try:
        if part.stat().st_size == 0:
            raise UploadRefused(f"{name}: the upload is empty (0 bytes)")
        try:
            probe(part)
        except VideoDecodeError as error:
            reason = str(error).replace(str(part), name).replace(str(part.resolve()), name)
            raise UploadRefused(f"{reason}; upload a video file") from None
        stem, suffix = name[: -len(Path(name).suffix)], Path(name).suffix
        for number in range(10_000):
            kept = part.parent / (name if number == 0 else f"{stem}-{number}{suffix}")
            with contextlib.suppress(FileExistsError):
                os.link(part, kept)  # never replaces a file, unlike a rename
                return kept
        raise UploadRefused(f"{name}: 10000 uploads of this name already; rename the file")
    finally:
        part.unlink(missing_ok=True)
