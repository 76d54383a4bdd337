"""Cutting decoded streams into model units: windows of frames (I3D) and windows of audio samples (PANNs, VGGish).

Every windower works on a stream, chunk by chunk, and keeps only the frames or samples that a future window can
still need, so memory stays flat in video length. The pure functions next to them define the windows; tests
check that streaming gives exactly the same windows.
"""

from __future__ import annotations

import math

import numpy as np

from extract.media.decode import AudioChunk, FrameBatch
from extract.models.base import Units, Windower

# --- frame windows (VSLNet's rule) ---------------------------------------------------------------------------


def vslnet_windows(length: int, window: int, stride: int, offset: int = 0) -> list[tuple[int, int]]:
    """VSLNet's windows over `length` frames: [start, end) pairs, with the last one shifted back.

    for start in 0, stride, ... < length: end = min(length - 1, start + window); if end - start < window,
    start = max(0, end - window). So the very last frame is never used, and windows may repeat (26hzhang/VSLNet
    prepare/extract_charades.py, reproduced as published).
    """
    out = []
    for start in range(0, length, stride):
        end = min(length - 1, start + window)
        if end - start < window:
            start = max(0, end - window)
        out.append((offset + start, offset + end))
    return out


def frame_windows(total: int, window: int, stride: int, chunk: int | None = None) -> list[tuple[int, int]]:
    """All windows of a video of `total` frames.

    - total <= window: one window of every frame, padded to `window` by repeating the last frame (returned as
      (0, total); the windower pads). VSLNet would feed frames[0:total-1], i.e. nothing for a 1-frame video.
    - chunk: the video is windowed in independent chunks of `chunk` frames (VSLNet's ActivityNet script uses
      10000); a last chunk shorter than `window` is extended backwards to `window` frames.
    """
    if total <= window:
        return [(0, total)]
    if chunk is None:
        return vslnet_windows(total, window, stride)
    out = []
    for first in range(0, total, chunk):
        length = min(chunk, total - first)
        if length < window:
            first, length = total - window, window
        out.extend(vslnet_windows(length, window, stride, first))
    return out


def i3d_rows(frames: int) -> list[tuple[int, int]]:
    """[first, last) frames of a window that each I3D output row stands for.

    Mixed_5c has T5 = ceil(ceil(ceil(n/2)/2)/2) positions, one per 8 input frames; the (2,7,7) average pool gives
    T5 - 1 rows, row j averaging positions j and j + 1, i.e. frames 8j .. 8j + 16 of the window.
    """
    positions = math.ceil(math.ceil(math.ceil(frames / 2) / 2) / 2)
    return [(8 * j, min(8 * j + 16, frames)) for j in range(max(positions - 1, 1))]


class FrameWindows(Windower):
    """Streams FrameBatch chunks into windows of frames: inputs [N, window, H, W, 3], spans [N, rows, 2]."""

    def __init__(self, window: int, stride: int, chunk: int | None = None) -> None:
        self.window, self.stride, self.chunk = window, stride, chunk
        self._frames: list[np.ndarray] = []  # buffered frames, the first one has global index self._base
        self._pts: list[float] = []
        self._duration = 0.0
        self._base = 0
        self._seen = 0
        self._chunk_first = 0  # first frame of the chunk being windowed
        self._next_start = 0  # next regular window start, relative to the chunk

    def push(self, chunk: FrameBatch | AudioChunk) -> Units | None:
        assert isinstance(chunk, FrameBatch)
        self._frames.extend(chunk.data)
        self._pts.extend(chunk.pts_seconds.tolist())
        self._duration = float(chunk.duration_seconds[-1]) if len(chunk) else self._duration
        self._seen += len(chunk)
        windows = self._regular_windows()
        units = self._cut(windows)
        self._trim()
        return units

    def finish(self) -> Units | None:
        if self._seen == 0:
            return None
        if self._seen <= self.window:
            return self._cut([(0, self._seen)])
        if self._seen == self._chunk_first:  # the video ended exactly at a chunk boundary: nothing is left
            return None
        return self._cut(self._close_chunk(self._seen - self._chunk_first, final=True))

    def _regular_windows(self) -> list[tuple[int, int]]:
        """Windows that are certain now: their end frame exists and lies inside the current chunk."""
        out = []
        while True:
            if self.chunk is not None and self._seen - self._chunk_first >= self.chunk:
                out.extend(self._close_chunk(self.chunk, final=False))
                continue
            end = self._next_start + self.window
            chunk_ok = self.chunk is None or end <= self.chunk - 1
            if not (chunk_ok and self._chunk_first + end < self._seen):
                return out
            out.append((self._chunk_first + self._next_start, self._chunk_first + end))
            self._next_start += self.stride

    def _close_chunk(self, length: int, final: bool) -> list[tuple[int, int]]:
        first = self._chunk_first
        if final and self.chunk is not None and length < self.window:
            first, length = self._seen - self.window, self.window
        windows = vslnet_windows(length, self.window, self.stride, first)
        remaining = [
            w for w, start in zip(windows, range(0, length, self.stride), strict=True) if start >= self._next_start
        ]
        self._chunk_first += length
        self._next_start = 0
        return remaining

    def _cut(self, windows: list[tuple[int, int]]) -> Units | None:
        if not windows:
            return None
        clips, spans = [], []
        for start, end in windows:
            frames = self._frames[start - self._base : end - self._base]
            pts = self._pts[start - self._base : end - self._base]
            pad = self.window - len(frames) if self._seen <= self.window else 0
            clips.append(np.stack(frames + [frames[-1]] * pad))
            rows = i3d_rows(len(frames) + pad)
            spans.append([(pts[min(a, len(pts) - 1)], pts[min(b, len(pts)) - 1] + self._duration) for a, b in rows])
        return Units(np.stack(clips), np.asarray(spans, np.float64))

    def _trim(self) -> None:
        """Drop frames that no future window can use (keep window + stride frames for a shifted last window)."""
        keep_from = min(self._chunk_first + self._next_start, self._seen - self.window - self.stride - 1)
        drop = max(0, keep_from - self._base)
        if drop:
            del self._frames[:drop], self._pts[:drop]
            self._base += drop


# --- audio windows -------------------------------------------------------------------------------------------


def audio_window_starts(total: int, window: int, hop: int, keep_tail: bool) -> np.ndarray:
    """Start samples of the windows over `total` samples.

    Full windows at 0, hop, 2 hop, ...; keep_tail adds one zero-padded window over the samples the last full
    window did not reach. Audio shorter than one window always gives one zero-padded window.
    """
    if total <= window:
        return np.zeros(1, np.int64)
    full = (total - window) // hop + 1
    starts = np.arange(full, dtype=np.int64) * hop
    if keep_tail and starts[-1] + window < total:
        starts = np.append(starts, starts[-1] + hop)
    return starts


class AudioWindows(Windower):
    """Streams AudioChunk samples into windows of `window` samples every `hop` samples: inputs [N, window]."""

    def __init__(self, window: int, hop: int, sample_rate: int, keep_tail: bool, span_seconds: float | None = None):
        if not 1 <= hop <= window:
            raise ValueError(f"audio windows need 1 <= hop <= window samples, got hop {hop}, window {window}")
        self.window, self.hop, self.sample_rate, self.keep_tail = window, hop, sample_rate, keep_tail
        self.span_seconds = span_seconds if span_seconds is not None else window / sample_rate
        self._buffer = np.zeros(0, np.float32)
        self._base = 0  # sample index of self._buffer[0]
        self._next = 0  # next window start
        self._seen = 0

    def push(self, chunk: FrameBatch | AudioChunk) -> Units | None:
        assert isinstance(chunk, AudioChunk)
        self._buffer = np.concatenate([self._buffer, chunk.samples])
        self._seen += len(chunk.samples)
        starts = []
        while self._next + self.window <= self._seen:
            starts.append(self._next)
            self._next += self.hop
        units = self._cut(starts)
        drop = self._next - self._base
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._base += drop
        return units

    def finish(self) -> Units | None:
        if self._seen == 0:
            return None
        if self._seen <= self.window and self._next == 0:
            return self._cut([0])
        # keep_tail: one zero-padded window over the samples the last full window did not reach.
        last_full_end = self._next - self.hop + self.window
        if self.keep_tail and self._next + self.window > self._seen and last_full_end < self._seen:
            return self._cut([self._next])
        return None

    def _cut(self, starts: list[int]) -> Units | None:
        if not starts:
            return None
        windows = np.zeros((len(starts), self.window), np.float32)
        for row, start in enumerate(starts):
            piece = self._buffer[start - self._base : start - self._base + self.window]
            windows[row, : len(piece)] = piece
        begin = np.asarray(starts, np.float64) / self.sample_rate
        end = np.minimum(begin + self.span_seconds, self._seen / self.sample_rate)  # padding holds no audio
        return Units(windows, np.stack([begin, end], axis=1))
