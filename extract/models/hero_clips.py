"""HERO's clips for SlowFast: fixed-length clips of the decoded frames, 32 frames sampled from each.

The rule of HERO_Video_Feature_Extractor (slowfast/extract_feature/preprocessing.py), which Moment-DETR's and
CG-DETR's SlowFast features were made with, on frames decoded at `frame_rate` (30) frames per second:

1. the frames are padded to whole seconds by repeating the last frame;
2. the seconds are padded to a multiple of the clip length's numerator (2 for 2-s clips, 3 for 3/2-s clips) by
   repeating the whole last second, then cut into clips of clip_seconds x frame_rate frames;
3. only the first ceil(duration / clip_seconds) clips are kept, duration being the video stream's;
4. each clip gives 32 frames at positions linspace(0, 64 x source_fps / frame_rate - 1, 32) (float32, truncated,
   clamped to the clip), source_fps being floor() of the stream's own frame rate. So the 32 frames span the
   first 64 / 30 s of a 2-s clip of a 30-fps video, clamped to its 60 frames, but only the first 1.77 s of a
   25-fps one and half of its frames are the clip's last frame for a 60-fps one: reproduced as published.

One row per clip; its time span is that of the source frames the clip holds (a padded clip repeats frames of the
last second, so its span ends with the video).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from extract.core.errors import UsageError
from extract.media.decode import AudioChunk, FrameBatch
from extract.media.probe import StreamMetadata
from extract.models.base import Units, Windower


@dataclass(frozen=True)
class ClipRule:
    """How frames become clips; the defaults are HERO's SlowFast extraction as Moment-DETR ran it."""

    clip_seconds: Fraction = Fraction(2)  # --clip_len
    frame_rate: int = 30  # --target_framerate: the rate the frames were decoded at
    samples: int = 32  # DATA.NUM_FRAMES: frames per clip given to the network
    sampling_rate: int = 2  # DATA.SAMPLING_RATE: the 32 frames span 32 x 2 frames of the source rate

    def __post_init__(self) -> None:
        frames = self.clip_seconds * self.frame_rate
        if self.clip_seconds <= 0 or frames.denominator != 1:
            raise UsageError(
                f"a {self.clip_seconds}-s clip is not a whole number of frames at {self.frame_rate} fps "
                "(HERO's clip length times the frame rate must be a whole number)"
            )

    @property
    def clip_frames(self) -> int:
        return int(self.clip_seconds * self.frame_rate)


def padded_clip_frames(total: int, rule: ClipRule) -> np.ndarray:
    """(clips, clip_frames): which of `total` decoded frames fills each position of each clip, before the cut."""
    seconds = -(-total // rule.frame_rate)
    index = np.minimum(np.arange(seconds * rule.frame_rate), total - 1)  # 1. repeat the last frame
    extra_seconds = -seconds % rule.clip_seconds.numerator
    last_second = index[-rule.frame_rate :]
    index = np.concatenate([index, *([last_second] * extra_seconds)])  # 2. repeat the last second
    return index.reshape(-1, rule.clip_frames)


def kept_clips(available: int, duration: float | None, rule: ClipRule) -> int:
    """3. How many clips are kept: ceil(duration / clip_seconds) of those available; all when the duration is not
    known or not positive (HERO keeps all when ffprobe gives none); at least one."""
    if duration is None or duration <= 0:
        return available
    return max(1, min(available, math.ceil(duration / float(rule.clip_seconds))))


def sample_positions(source_fps: int, rule: ClipRule) -> np.ndarray:
    """4. The positions in a clip of the frames the network sees (HERO's get_start_end_idx + temporal_sampling)."""
    span = rule.samples * rule.sampling_rate * source_fps / rule.frame_rate
    positions = torch.linspace(0.0, span - 1, rule.samples, dtype=torch.float32)
    return positions.clamp(0, rule.clip_frames - 1).long().numpy()


def clip_frame_index(total: int, source_fps: int, duration: float | None, rule: ClipRule) -> np.ndarray:
    """(clips, samples): the decoded frame behind every frame the network sees, for a whole video."""
    clips = padded_clip_frames(total, rule)
    return clips[: kept_clips(len(clips), duration, rule)][:, sample_positions(source_fps, rule)]


@dataclass(frozen=True)
class ClipSource:
    """What the rule needs to know of the video besides its frames."""

    fps: int  # floor() of the stream's frame rate (ffprobe's avg_frame_rate in HERO)
    duration: float | None  # the video stream's duration in seconds

    @classmethod
    def of(cls, stream: StreamMetadata) -> ClipSource:
        return cls(math.floor(stream.fps), stream.stream_end - stream.video_start)


class HeroClips(Windower):
    """Streams frames decoded at the rule's frame rate into clips: inputs [N, samples, H, W, 3], spans [N, 2].

    Whole clips are cut as soon as their frames have arrived; the padded ones at the end. Only the frames a later
    clip can still use (from its first frame, or from the start of the current second, which padding may repeat)
    are kept.
    """

    def __init__(self, rule: ClipRule, source: ClipSource | None = None) -> None:
        self.rule = rule
        self.source = source
        self._frames: list[np.ndarray] = []  # buffered frames; the first is frame self._base
        self._pts: list[float] = []
        self._duration = 0.0  # of one frame
        self._base = 0
        self._seen = 0
        self._next = 0  # next clip to cut

    def start(self, stream: StreamMetadata) -> None:
        self.source = ClipSource.of(stream)

    def push(self, chunk: FrameBatch | AudioChunk) -> Units | None:
        assert isinstance(chunk, FrameBatch)
        if self.source is None:
            raise RuntimeError("HeroClips needs the video's frame rate and duration: call start(stream) first")
        self._frames.extend(chunk.data)
        self._pts.extend(chunk.pts_seconds.tolist())
        if len(chunk):
            self._duration = float(chunk.duration_seconds[-1])
        self._seen += len(chunk)
        whole = self._seen // self.rule.clip_frames
        limit = kept_clips(whole, self.source.duration, self.rule) if whole else 0
        frames = self.rule.clip_frames
        units = self._cut([np.arange(c * frames, (c + 1) * frames) for c in range(self._next, limit)])
        self._next = max(self._next, limit)
        self._trim()
        return units

    def finish(self) -> Units | None:
        if self._seen == 0 or self.source is None:
            return None
        clips = padded_clip_frames(self._seen, self.rule)
        keep = kept_clips(len(clips), self.source.duration, self.rule)
        return self._cut(list(clips[self._next : keep]))

    def _cut(self, clips: list[np.ndarray]) -> Units | None:
        if not clips:
            return None
        assert self.source is not None
        positions = sample_positions(self.source.fps, self.rule)
        inputs = np.stack([np.stack([self._frames[i - self._base] for i in clip[positions]]) for clip in clips])
        spans = [
            (self._pts[clip.min() - self._base], self._pts[clip.max() - self._base] + self._duration) for clip in clips
        ]
        return Units(inputs, np.asarray(spans, np.float64))

    def _trim(self) -> None:
        second_start = (self._seen - 1) // self.rule.frame_rate * self.rule.frame_rate if self._seen else 0
        keep_from = min(self._next * self.rule.clip_frames, second_start)
        drop = keep_from - self._base
        if drop > 0:
            del self._frames[:drop], self._pts[:drop]
            self._base = keep_from
