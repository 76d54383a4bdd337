"""Decoding: frames sampled by timestamp, resized and cropped on decode, and mono float audio, in bounded chunks.

Two frame decoders sit behind one interface (`iter_frames`):
- `ffmpeg`: one ffmpeg process per video, `fps,scale,crop` filters, raw RGB on a pipe. Fastest for
  dense sequential passes and flat in memory (issue 2 measurements; benchmarks/bench_decode.py).
- `decord`: random access by index through decord2, for sparse sampling; it seeks past the frames it does not
  need. It ignores rotation metadata, so rotated files always go through ffmpeg.

Frame k of a sampled stream is the frame *shown* at t = k / fps (the last frame whose presentation time is
<= t), so variable-frame-rate files are sampled correctly. t = 0 is the start of the file's timeline (its
earliest stream), for frames and audio samples alike, so the two line up even when one stream starts later.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from extract.errors import VideoDecodeError
from extract.ffmpeg_binary import ffmpeg_path, input_args
from extract.probe import StreamMetadata

DecoderName = Literal["ffmpeg", "decord"]
ResizeRule = Literal["shorter", "shorter_if_below", "none"]

# A decoder that sends nothing for this long is killed and the video fails (instead of hanging the run).
STALL_TIMEOUT_S = 300.0
Interpolation = Literal["bicubic", "bilinear"]
# truncate: long side int(), crop offsets floored (CLIPImageProcessor, torchvision).
# round: long side round(size * factor) as cv2.resize(fx=fy=factor) gives, crop offsets round((size - crop) / 2)
# half to even, as VSLNet's numpy code does.
Rounding = Literal["truncate", "round"]

# Bicubic with a = -0.5 (swscale's param1 is -a), PIL's kernel and so CLIPImageProcessor's: per-frame cosine
# to the HF processor path went from 0.9985 to 0.99999 on the real test video (tests/test_clip.py).
# Bilinear is cv2.resize's default, which the VSLNet I3D recipes use.
SCALE_OPTIONS: dict[str, str] = {
    "bicubic": "flags=bicubic+accurate_rnd+full_chroma_int:param0=0:param1=0.5",
    "bilinear": "flags=bilinear+accurate_rnd+full_chroma_int",
}


@dataclass(frozen=True)
class FrameSampling:
    """How frames are taken from a video: everything here changes the numbers and goes into provenance."""

    fps: float | None = 1.0  # None: the stream's native rate
    short_side: int = 224
    resize: ResizeRule = "shorter"  # shorter_if_below: only upscale when the short side < short_side
    crop: int = 224  # centre crop to crop x crop; 0 keeps the resized frame
    decoder: DecoderName = "ffmpeg"
    interpolation: Interpolation = "bicubic"
    rounding: Rounding = "truncate"
    chunk_frames: int = 32

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the frames this sampling yields for a displayed width x height video."""
        short = min(width, height)
        if self.resize == "none" or (self.resize == "shorter_if_below" and short >= self.short_side):
            new_w, new_h = width, height
        else:
            fit = round if self.rounding == "round" else int
            new_w = self.short_side if width == short else max(1, fit(self.short_side * width / short))
            new_h = self.short_side if height == short else max(1, fit(self.short_side * height / short))
        if self.crop:
            if self.crop > min(new_w, new_h):
                raise VideoDecodeError(f"frame {new_w}x{new_h} is smaller than the {self.crop}-pixel crop")
            return self.crop, self.crop
        return new_w, new_h

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing, before the centre crop."""
        return dataclasses.replace(self, crop=0).output_size(width, height)

    def crop_offsets(self, width: int, height: int) -> tuple[int, int]:
        """(left, top) of the centre crop in a resized width x height frame."""
        if self.rounding == "round":
            return round((width - self.crop) / 2), round((height - self.crop) / 2)
        return (width - self.crop) // 2, (height - self.crop) // 2


@dataclass
class FrameBatch:
    """Consecutive sampled frames of one video with their presentation times (torchcodec's shape)."""

    data: np.ndarray  # [N, H, W, 3] uint8 RGB
    pts_seconds: np.ndarray  # [N] float64
    duration_seconds: np.ndarray  # [N] float64

    def __len__(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class AudioSampling:
    sample_rate: int = 16000
    chunk_seconds: float = 30.0


@dataclass
class AudioChunk:
    samples: np.ndarray  # [n] float32 mono in [-1, 1]
    start_seconds: float


class _Watchdog:
    """Kills a subprocess when `touch` has not been called for `timeout` seconds."""

    def __init__(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        self._process = process
        self._timeout = timeout
        self._last = time.monotonic()
        self._done = threading.Event()
        self.fired = False
        threading.Thread(target=self._watch, daemon=True).start()

    def touch(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        while not self._done.wait(min(5.0, self._timeout / 4)):
            if time.monotonic() - self._last > self._timeout:
                self.fired = True
                self._process.kill()
                return


def _read_exact(stream, size: int) -> bytes:  # type: ignore[no-untyped-def]
    parts, remaining = [], size
    while remaining:
        block = stream.read(remaining)
        if not block:
            break
        parts.append(block)
        remaining -= len(block)
    return b"".join(parts)


def _pipe_chunks(cmd: list[str], chunk_bytes: int, what: str) -> Iterator[bytes]:
    """Run ffmpeg and yield its stdout in blocks of chunk_bytes (the last may be shorter).

    Raises VideoDecodeError with ffmpeg's last message if it fails or stalls.
    """
    with tempfile.TemporaryFile() as stderr_file:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file)
        watchdog = _Watchdog(process, STALL_TIMEOUT_S)
        try:
            assert process.stdout is not None
            while True:
                block = _read_exact(process.stdout, chunk_bytes)
                watchdog.touch()
                if block:
                    yield block
                if len(block) < chunk_bytes:
                    break
            returncode = process.wait()
        finally:
            watchdog.stop()
            if process.poll() is None:
                process.kill()
                process.wait()
        if watchdog.fired:
            raise VideoDecodeError(f"{what}: decoder stalled for {STALL_TIMEOUT_S:.0f} s and was stopped")
        if returncode != 0:
            stderr_file.seek(0)
            message = stderr_file.read().decode(errors="replace").strip().splitlines()
            detail = message[-1] if message else f"ffmpeg exit code {returncode}"
            raise VideoDecodeError(f"{what}: decoding failed ({detail})")


def sample_count(video_end: float, fps: float) -> int:
    """How many times k / fps fall inside [0, video_end): at least one, so a 1-frame video gives one row."""
    return max(1, math.ceil(video_end * fps - 1e-9))


def _ffmpeg_frames(meta: StreamMetadata, sampling: FrameSampling, fps: float, threads: int) -> Iterator[FrameBatch]:
    width, height = sampling.resized_size(meta.width, meta.height)
    scale = f"scale={width}:{height}:{SCALE_OPTIONS[sampling.interpolation]}"
    # start_time=0: t = 0 is the start of the file's timeline, shared with the audio (which aresample pads the
    # same way); a video that starts late repeats its first frame, as the frame "shown" before it is none.
    filters = [f"fps=fps={fps!r}:start_time=0:round=up", scale]
    if sampling.crop:
        left, top = sampling.crop_offsets(width, height)
        filters.append(f"crop={sampling.crop}:{sampling.crop}:{left}:{top}")
    out_w, out_h = sampling.output_size(meta.width, meta.height)
    cmd = [ffmpeg_path(), "-hide_banner", "-nostdin", "-v", "error", "-threads", str(threads), *input_args(meta.path)]
    cmd += ["-map", "0:V:0", "-an", "-sn", "-dn", "-vf", ",".join(filters)]
    cmd += ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    frame_bytes = out_w * out_h * 3
    # The fps filter repeats the last frame up to the next whole output tick at the end of the stream;
    # frames past the end of the video stream are not "shown at t", so they are dropped.
    wanted = sample_count(meta.video_end, fps)
    index = 0
    for block in _pipe_chunks(cmd, frame_bytes * sampling.chunk_frames, meta.path):
        count = min(len(block) // frame_bytes, wanted - index)
        if count <= 0:
            continue
        data = np.frombuffer(block, np.uint8, count * frame_bytes).reshape(count, out_h, out_w, 3)
        pts = (index + np.arange(count)) / fps
        index += count
        yield FrameBatch(data, pts, np.full(count, 1.0 / fps))


def sample_times(frame_starts: np.ndarray, stream_end: float, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Target times k / fps within [0, stream_end) and, for each, the index of the frame shown then."""
    targets = np.arange(sample_count(stream_end, fps)) / fps
    indices = np.searchsorted(frame_starts, targets + 1e-9, side="right") - 1
    return targets, np.clip(indices, 0, len(frame_starts) - 1)


def _decord_frames(meta: StreamMetadata, sampling: FrameSampling, fps: float) -> Iterator[FrameBatch]:
    import decord  # imported lazily: it maps ~700 MB next to the CUDA torch wheels

    width, height = sampling.resized_size(meta.width, meta.height)
    try:
        reader = decord.VideoReader(meta.path, ctx=decord.cpu(0), width=width, height=height, num_threads=1)
        spans = reader.get_frame_timestamp(np.arange(len(reader)))
    except decord.DECORDError as error:
        raise VideoDecodeError(f"{meta.path}: decord could not open it ({str(error).splitlines()[0]})") from None
    starts = spans[:, 0] - spans[0, 0] + meta.video_start  # decord's clock starts at the first frame
    if not (np.all(np.isfinite(spans)) and np.all(np.diff(spans[:, 0]) >= 0) and spans[-1, 1] < 1e7):
        raise VideoDecodeError(f"{meta.path}: decord cannot read this file's timestamps; use the ffmpeg decoder")
    targets, indices = sample_times(starts, meta.video_end, fps)
    crop = sampling.crop
    for first in range(0, len(indices), sampling.chunk_frames):
        chunk = indices[first : first + sampling.chunk_frames]
        try:
            data = reader.get_batch(chunk.tolist()).asnumpy()
        except decord.DECORDError as error:
            raise VideoDecodeError(f"{meta.path}: decoding failed ({str(error).splitlines()[0]})") from None
        if crop:
            left, top = sampling.crop_offsets(width, height)
            data = np.ascontiguousarray(data[:, top : top + crop, left : left + crop])
        yield FrameBatch(data, targets[first : first + len(chunk)], np.full(len(chunk), 1.0 / fps))


DECORD_CONTAINERS = ("mov,mp4",)  # where decord2's frame timestamps were checked (it loses them in mkv)


def frame_decoder_for(meta: StreamMetadata, sampling: FrameSampling) -> DecoderName:
    """The decoder that will actually run: decord only for unrotated mp4/mov files, ffmpeg for the rest."""
    if sampling.decoder == "decord" and not meta.rotation and meta.container.startswith(DECORD_CONTAINERS):
        return "decord"
    return "ffmpeg"


def iter_frames(meta: StreamMetadata, sampling: FrameSampling, threads: int = 0) -> Iterator[FrameBatch]:
    """Yield the sampled frames of one video in chunks of at most sampling.chunk_frames frames.

    threads: decoder threads for this video (0 = ffmpeg's choice). With several videos decoded at once, one
    or two threads each beat oversubscribing the cores (benchmarks/bench_extract.py).
    """
    fps = sampling.fps or meta.native_fps
    if fps <= 0:
        raise VideoDecodeError(f"{meta.path}: unknown frame rate; pass --fps")
    if frame_decoder_for(meta, sampling) == "decord":
        yield from _decord_frames(meta, sampling, fps)
    else:
        yield from _ffmpeg_frames(meta, sampling, fps, threads)


def iter_audio(meta: StreamMetadata, sampling: AudioSampling) -> Iterator[AudioChunk]:
    """Yield the first audio stream as mono float32 at sampling.sample_rate, in chunks of chunk_seconds."""
    if not meta.has_audio:
        raise VideoDecodeError(f"{meta.path}: has no audio stream")
    cmd = [ffmpeg_path(), "-hide_banner", "-nostdin", "-v", "error", *input_args(meta.path)]
    # first_pts=0 pads (or trims) the start so that sample 0 is t = 0 of the file's timeline, as frame 0 is.
    cmd += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-af", "aresample=async=1:first_pts=0"]
    cmd += ["-ac", "1", "-ar", str(sampling.sample_rate)]
    cmd += ["-f", "f32le", "pipe:1"]
    chunk_samples = max(1, int(sampling.chunk_seconds * sampling.sample_rate))
    offset = 0
    for block in _pipe_chunks(cmd, chunk_samples * 4, f"{meta.path} (audio)"):
        samples = np.frombuffer(block, np.float32, len(block) // 4)
        yield AudioChunk(samples.copy(), offset / sampling.sample_rate)
        offset += len(samples)
