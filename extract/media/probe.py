"""Stream metadata of a video file, read with the ffmpeg binary alone (imageio-ffmpeg ships no ffprobe).

Two kinds of numbers, named for where they come from: what the container header *says* (`header_duration`,
`fps`) and what the packets really hold (`frame_count`, `stream_end`, `audio_end`). A half-downloaded faststart
mp4 keeps its full header, so the two disagree, and the file is flagged `truncated`.
"""

from __future__ import annotations

import array
import dataclasses
import functools
import math
import os
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from extract.core.errors import VideoDecodeError
from extract.media.ffmpeg import ffmpeg_path, input_args
from extract.media.watchdog import Watchdog

# The stream-copy pass is stopped when it lists nothing for this long (a long file that keeps listing goes on).
PROBE_STALL_S = 120.0
# A file is `truncated` when its packets end this much before the header's duration. Whole files end within
# one audio frame or video frame of the header (the real test video: 14.05 s header, audio to 14.05 s); an
# interrupted download misses whole seconds. The end is that of the longest stream (video or audio), so a
# soundtrack that outlasts the picture is not a truncation.
TRUNCATION_TOLERANCE_S = 1.0

_CONTAINER = re.compile(r"^Input #0, (.+?), from ", re.MULTILINE)
_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"^\s*Stream #(\d+):(\d+)\S*: (Video|Audio|Subtitle|Data|Attachment): (.*)$", re.MULTILINE)
_SIZE = re.compile(r"[ ,](\d{1,6})x(\d{1,6})[ ,\[]")
_FPS = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")
_SAMPLE_RATE = re.compile(r"(\d+) Hz")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees", re.IGNORECASE)
_HEADER = re.compile(r"^#(\w+) (\d+): (.*)$", re.MULTILINE)
_CHANNEL_COUNT = re.compile(r"^(\d+) channels")
_GUESSED_DURATION = "Estimating duration from bitrate"
_PRINTED_RATE_ERROR = 2.5e-3  # "23.98" is 1.7e-4 from 24000/1001; a 1-ms time base's 42-ms frames are 7e-3 away

# Store attributes written by older versions under names that did not say where the number came from.
LEGACY_ATTR_NAMES = {"duration": "header_duration", "video_end": "stream_end"}


@dataclass(frozen=True)
class StreamMetadata:
    """What one video file holds. width/height are as displayed (after the rotation metadata is applied).

    Times are seconds on the file's timeline, whose 0 is the start of its earliest stream.
    """

    path: str
    size_bytes: int
    header_duration: float | None  # what the container header states (None: it states none, or ffmpeg guessed)
    fps: float  # the stream's nominal rate (exact from the packet durations where they agree with the header)
    frame_count: int  # video packets really present
    video_start: float  # presentation time of the first frame
    stream_end: float  # end of the last video packet present (pts + duration): what frame sampling covers
    width: int
    height: int
    has_audio: bool  # an audio stream with at least one packet
    codec: str
    container: str = ""
    rotation: int = 0
    audio_codec: str | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_end: float | None = None  # end of the last audio packet present
    truncated: bool = False  # the packets end more than TRUNCATION_TOLERANCE_S before header_duration
    # Start of every frame in presentation order, exact from the packets' integer timestamps (decord reports
    # float32 seconds, too coarse to decide ffmpeg's rounding of a frame that sits on a half tick): float64,
    # 8 bytes a frame (430 KB for 30 minutes at 30 fps).
    frame_starts: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    @property
    def average_fps(self) -> float:
        span = self.stream_end - self.video_start
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
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "frame_starts"}
        return {k: ("" if v is None else v) for k, v in values.items()}


def read_stream_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Stored video attributes under today's names, also for stores written before the fields were renamed."""
    out = dict(attrs)
    for old, new in LEGACY_ATTR_NAMES.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out


def stored_duration(attrs: Mapping[str, Any]) -> float | None:
    """A stored video's duration in seconds: what its header says, else where its packets end (also under the names
    of stores written before the fields were renamed); None when the store records neither. The one rule for
    every reader (custom queries without a duration, the dataset builder, inspect)."""
    values = read_stream_attrs(dict(attrs))
    for name in ("header_duration", "stream_end"):
        value = values.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            return float(value)
    return None


def _seconds(match: re.Match[str]) -> float:
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


# Every component a line passed through, outermost first: "[aist#0:1/aac @ 0x55e9a1e08d00] [dec:aac @ 0x55e...] ".
_PREFIXES = re.compile(r"^(?:\[[^\]]+ @ 0x[0-9a-f]+\]\s*)+")
# ffmpeg's wrappers around a reason: "Error opening input: X", "Error opening input files: X".
_WRAPPER = re.compile(r"^Error opening (?:input|output)(?: files)?: ")
# What ffmpeg says on its way out of any failure, whatever the reason (its threads' exit codes, the empty output,
# its statistics): never the reason itself.
_BOOKKEEPING = re.compile(
    r"^(?:Terminating thread with return code|Task finished with error code|Nothing was written into output file"
    r"|Could not open encoder before EOF|Conversion failed|Last message repeated|Error closing"
    r"|Finishing stream without any data written|video:\S+ audio:\S+ subtitle:)"
)
# A decoder that gave up on a stream, and the errors it met on the way ("Error while decoding stream #0:0: X" is
# what ffmpeg before 7 printed).
_DECODE_RATE = re.compile(r"^Decode error rate \S+ exceeds maximum \S+")
_DECODER_ERROR = re.compile(
    r"^(?:Error submitting packet to decoder|Decoding error|Error while decoding stream \S+): (.+)$"
)
# First box types of an ISO media file (mp4/mov): a file that starts with one is an mp4, whole or not.
_ISO_MEDIA_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"styp", b"sidx", b"moof"}

NOT_A_CONTAINER = (
    "not a video container img-vmr opens (mp4/mov, mkv/webm, avi, mpeg/ts, flv, asf/wmv, ogg): a playlist, script, "
    "image or subtitle file named like a video is refused"
)


def ffmpeg_reason(stderr: str, path: str | os.PathLike[str] | None = None) -> str:
    """ffmpeg's reason for a failure, in one line.

    ffmpeg 7+ prefixes a line with every component it went through ("[aist#0:1/aac @ 0x...] [dec:aac @ 0x...]")
    and ends any failure with bookkeeping ("Terminating thread with return code -1145393733", "Nothing was written
    into output file"): both are dropped. The reason is then, first found:
    - a decoder that gave up, "Decode error rate R exceeds maximum M", with the error it met most often;
    - the last other decoder error;
    - the last complaint of a component (a demuxer's) before ffmpeg's generic "Error opening input: X" wrapper,
      which gives X only when no component said more (earlier component lines are warnings on the way, e.g.
      "detected only with low score of 1, misdetection possible!").
    `path` (the input) decides the hints that depend on the file itself.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    said: list[tuple[str, bool]] = []  # (the line without its prefixes, whether a component said it)
    for line in lines:
        text = _PREFIXES.sub("", line)
        if text and not _BOOKKEEPING.match(text):
            said.append((text, text != line))
    components = [text for text, component in said if component]
    met = [match.group(1) for text in components if (match := _DECODER_ERROR.match(text))]
    gave_up = [text for text in components if _DECODE_RATE.match(text)]
    specific = [text for text in components if not _WRAPPER.match(text)]
    if gave_up:
        reason = gave_up[-1] + (f": {Counter(met).most_common(1)[0][0]}" if met else "")
    elif met:
        reason = met[-1]
    elif specific:
        reason = specific[-1]
    else:
        anything = components or [text for text, _ in said] or [_PREFIXES.sub("", line) for line in lines]
        reason = _WRAPPER.sub("", (anything or ["ffmpeg gave no message"])[-1])
    if reason.startswith("Format not on whitelist"):  # ffmpeg_binary.INPUT_FORMAT_WHITELIST refused its demuxer
        return NOT_A_CONTAINER
    hint = _hint(reason, path)
    return f"{reason}: {hint}" if hint else reason


def _hint(reason: str, path: str | os.PathLike[str] | None) -> str | None:
    """What a reason means for the user, where that is sure."""
    if reason.startswith("moov atom not found") and path is not None:
        iso_media = _starts_like_iso_media(Path(path))
        if iso_media is None:
            return None
        if iso_media:
            return "the file is truncated or was never finished"
        return "it does not start like an mp4/mov file, so it is something else named like one"
    if reason.startswith("Invalid data found when processing input"):
        return "not a video ffmpeg can read (wrong extension, or damaged)"
    return None


def _starts_like_iso_media(path: Path) -> bool | None:
    """Whether the file starts with an mp4/mov box (None: it cannot be read)."""
    try:
        with path.open("rb") as file:
            head = file.read(8)
    except OSError:
        return None
    return head[4:8] in _ISO_MEDIA_BOXES


@dataclass(frozen=True)
class _PacketStream:
    kind: str  # "video" or "audio"
    packets: int
    first_pts: float
    end: float  # largest pts + duration
    header: dict[str, str]
    starts: np.ndarray = field(default_factory=lambda: np.empty(0))  # video: every packet's pts in seconds, sorted
    typical_duration: float = 0.0  # the median packet duration in seconds, exact from the integer timestamps


class _PacketListing:
    """A `-f framecrc` listing read line by line as ffmpeg writes it: the header fields of each stream, and each
    packet's pts and duration in compact integer arrays (16 bytes a packet; no line is kept as text)."""

    def __init__(self) -> None:
        self.headers: dict[int, dict[str, str]] = {}
        self._pts: dict[int, array.array[int]] = {}
        self._durations: dict[int, array.array[int]] = {}

    def add(self, line: bytes) -> None:
        if line.startswith(b"#"):
            if match := _HEADER.match(line.decode(errors="replace").rstrip("\r\n")):
                key, index, value = match.groups()
                self.headers.setdefault(int(index), {})[key] = value.strip()
            return
        fields = line.split(b",", 4)  # stream, dts, pts, duration, size, crc[, flags, side data]
        try:
            index, pts, duration = int(fields[0]), int(fields[2]), int(fields[3])
        except (IndexError, ValueError):  # not a packet line
            return
        if index not in self._pts:
            self._pts[index], self._durations[index] = array.array("q"), array.array("q")
        self._pts[index].append(pts)
        self._durations[index].append(duration)

    def streams(self) -> list[_PacketStream]:
        """Per output stream: packet count, first pts and end of the last packet.

        The end is the largest pts + duration (not the last dts + duration, which is short on files with B-frames).
        """
        out = []
        for index, header in sorted(self.headers.items()):
            kind = header.get("media_type", "")
            timebase = re.fullmatch(r"(\d+)/(\d+)", header.get("tb", ""))
            if timebase is None or not self._pts.get(index):
                out.append(_PacketStream(kind, 0, 0.0, 0.0, header))
                continue
            unit = int(timebase.group(1)) / int(timebase.group(2))
            pts = np.frombuffer(self._pts[index], np.int64)
            durations = np.frombuffer(self._durations[index], np.int64)
            if len(pts) > 1 and (durations <= 0).any():
                step = int(np.median(np.diff(np.sort(pts))))
                durations = np.where(durations > 0, durations, step)
            first, end = float(pts.min() * unit), float((pts + durations).max() * unit)
            starts = np.sort(pts) * unit if kind == "video" else np.empty(0)  # only frame sampling needs them
            typical = float(np.median(durations) * unit)
            out.append(_PacketStream(kind, len(pts), first, end, header, starts, typical))
        return out


@functools.cache
def _standard_layouts() -> dict[str, int]:
    """Channel count of every standard layout name this ffmpeg knows (`ffmpeg -layouts`)."""
    listing = subprocess.run([ffmpeg_path(), "-hide_banner", "-layouts"], capture_output=True, text=True).stdout
    standard = listing.split("Standard channel layouts:", 1)[-1]
    return {name: len(parts.split("+")) for name, parts in re.findall(r"^(\S+)\s+(\S+)$", standard, re.MULTILINE)}


def channel_count(layout: str) -> int | None:
    """Channels of an ffmpeg channel layout description ("stereo", "5.1(side)", "6 channels", "FL+FR+LFE")."""
    layout = layout.strip()
    if match := _CHANNEL_COUNT.match(layout):
        return int(match.group(1))
    if layout in _standard_layouts():
        return _standard_layouts()[layout]
    if re.fullmatch(r"[A-Z0-9]+(?:\+[A-Z0-9]+)+", layout):
        return len(layout.split("+"))
    return None


def _list_packets(cmd: list[str], file: Path) -> tuple[int, str, _PacketListing]:
    """Run the stream-copy pass, reading its listing as it comes; (exit code, stderr, listing).

    A pass that lists nothing for PROBE_STALL_S is stopped (a huge file that keeps listing is not); every line is
    also progress for the engine that runs the probe (extract/media/watchdog.py).
    """
    listing = _PacketListing()
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file)
        watchdog = Watchdog(process, PROBE_STALL_S)
        try:
            assert process.stdout is not None
            for line in process.stdout:
                watchdog.touch()
                listing.add(line)
            returncode = process.wait()
        finally:
            watchdog.finish()
        if watchdog.fired:
            raise VideoDecodeError(
                f"{file}: probing listed nothing for {PROBE_STALL_S:.0f} s and was stopped; the file may be damaged"
            )
        stderr_file.seek(0)
        return returncode, stderr_file.read().decode(errors="replace"), listing


def probe(path: str | os.PathLike[str]) -> StreamMetadata:
    """Read the container header and list the video and audio packets (stream copy: nothing is decoded).

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
    cmd += ["-map", "0:V:0?", "-map", "0:a:0?", "-c", "copy", "-f", "framecrc", "-"]
    returncode, stderr, listing = _list_packets(cmd, file)
    streams = _STREAM.findall(stderr)
    if returncode != 0 and not streams:
        raise VideoDecodeError(f"{file}: not a readable media file ({ffmpeg_reason(stderr, file)})")
    video = next((desc for _, _, kind, desc in streams if kind == "Video" and "attached pic" not in desc), None)
    audio = next((desc for _, _, kind, desc in streams if kind == "Audio"), None)
    if video is None:
        held = ", ".join(sorted({kind.lower() for _, _, kind, _ in streams})) or "no streams"
        raise VideoDecodeError(f"{file}: has no video stream (it holds {held}); remove it from the input")
    if returncode != 0:
        raise VideoDecodeError(f"{file}: video stream unreadable ({ffmpeg_reason(stderr, file)})")
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
    packets = {stream.kind: stream for stream in listing.streams()}
    pictures = packets.get("video")
    if pictures is None or pictures.packets == 0:
        raise VideoDecodeError(f"{file}: video stream holds no frames; the file is truncated or empty")
    frame_count, video_start, stream_end = pictures.packets, pictures.first_pts, pictures.end
    duration_match = _DURATION.search(stderr)
    header_duration = _seconds(duration_match) if duration_match and _GUESSED_DURATION not in stderr else None
    if stream_end <= 0:
        stream_end = header_duration if header_duration else frame_count / (fps or 1.0)
    if fps == 0.0:
        fps = frame_count / stream_end
    elif pictures.typical_duration > 0 and abs(1 / pictures.typical_duration - fps) < _PRINTED_RATE_ERROR * fps:
        # ffmpeg prints 4 significant digits: "23.98" for 24000/1001 samples a tick too many every ~3000 frames
        # at the native rate; the packets' own duration is the exact rate (where the time base can express it).
        fps = 1 / pictures.typical_duration
    sound = packets.get("audio")
    has_audio = audio is not None and sound is not None and sound.packets > 0
    audio_end = sound.end if has_audio and sound is not None else None
    audio_rate = _SAMPLE_RATE.search(audio) if audio else None
    layout = sound.header.get("channel_layout_name") if sound is not None else None
    packets_end = max(stream_end, audio_end or 0.0)
    return StreamMetadata(
        path=str(file),
        size_bytes=size,
        header_duration=header_duration,
        fps=fps,
        frame_count=frame_count,
        stream_end=stream_end,
        video_start=video_start,
        width=width,
        height=height,
        has_audio=has_audio,
        codec=video.split()[0].rstrip(","),
        container=container.group(1) if (container := _CONTAINER.search(stderr)) else "",
        rotation=rotation,
        audio_codec=audio.split()[0].rstrip(",") if audio else None,
        audio_sample_rate=int(audio_rate.group(1)) if audio_rate else None,
        audio_channels=channel_count(layout) if layout else None,
        audio_end=audio_end,
        truncated=header_duration is not None and header_duration - packets_end > TRUNCATION_TOLERANCE_S,
        frame_starts=pictures.starts,
    )
