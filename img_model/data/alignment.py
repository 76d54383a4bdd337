"""Read-time alignment of feature tracks: what IMG consumes, computed from the raw tracks of the feature store
by the dataset builder (img_model/data/dataset.py); the store itself keeps each track at its own rate.

Two rules:
- `img`: the published IMG loader (img_spec.md §2.2). Visual rows are mean-pooled to at most max_pos_len rows
  with boundaries b_k = round(k * T / M) (numpy's half-to-even), clamped to T - 1; the audio track is then
  resampled onto exactly that many rows with the same boundary rule (which also upsamples). The clamp means
  the last source row is never averaged in: this quirk is reproduced on purpose so features match the paper.
- `time`: every output visual row keeps its time span, and each gets the mean of the audio rows whose spans
  overlap it (the nearest audio row when none does). Exact in time, independent of the two rates.

Several visual tracks read as one (`--visual clip,slowfast`, img_model/data/visual_tracks.py): the first is the
grid, pooled as a single visual track is; each other one is put on its steps by the same rule as the audio
(`img`: the authors' rescale of SlowFast onto the pooled CLIP length, §2.2 step 3; `time`: by overlap in seconds),
and the rows are concatenated in the order named.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from extract.store import Track

AlignmentRule = Literal["img", "time"]
ALIGNMENT_RULES: tuple[str, ...] = ("img", "time")


def img_boundaries(length: int, target: int) -> np.ndarray:
    """b_k = round(k * length / target) for k = 0..target, half to even, clamped to length - 1."""
    k = np.arange(target + 1, dtype=np.float64)
    return np.minimum(np.round(k * length / target), length - 1).astype(np.int64)


def img_resample(rows: np.ndarray, target: int) -> np.ndarray:
    """Row k = mean(rows[b_k : b_k+1]) when b_k < b_k+1, else rows[b_k] (IMG's sampling and rescale)."""
    length = len(rows)
    if length == 0:
        raise ValueError("cannot resample an empty track")
    bounds = img_boundaries(length, target)
    starts, ends = bounds[:-1], bounds[1:]
    # reduceat sums rows[starts[k]:starts[k+1]] in float64, and gives rows[starts[k]] itself where the segment is
    # empty; cutting the rows at the last end (or just past the last start) bounds the last segment. A column-wise
    # cumsum did the same 3-4x slower, the largest cost of reading a query (80 x 2048 PANNs rows: 4.5 -> 1.2 ms).
    used = rows[: max(int(ends[-1]), int(starts[-1]) + 1)]
    sums = np.add.reduceat(used, starts, axis=0, dtype=np.float64)
    return sums / np.maximum(ends - starts, 1).reshape(-1, *([1] * (rows.ndim - 1)))


def img_visual_sampling(rows: np.ndarray, max_pos_len: int) -> np.ndarray:
    """IMG's visual_feature_sampling: unchanged when T <= max_pos_len, else pooled to max_pos_len rows."""
    return rows if len(rows) <= max_pos_len else img_resample(rows, max_pos_len)


def pooled_spans(spans: np.ndarray, max_pos_len: int) -> np.ndarray:
    """Time span of each pooled visual row: from the first to the last source row it stands for."""
    if len(spans) <= max_pos_len:
        return spans
    bounds = img_boundaries(len(spans), max_pos_len)
    last = np.maximum(bounds[1:] - 1, bounds[:-1])
    return np.stack([spans[bounds[:-1], 0], spans[last, 1]], axis=1)


def time_resample(rows: np.ndarray, spans: np.ndarray, target_spans: np.ndarray) -> np.ndarray:
    """Mean of the rows overlapping each target span (by overlap), the nearest row where none overlaps."""
    overlap = np.minimum(spans[None, :, 1], target_spans[:, None, 1]) - np.maximum(
        spans[None, :, 0], target_spans[:, None, 0]
    )
    weights = (overlap > 0).astype(np.float64)
    covered = weights.sum(axis=1)
    centres = spans.mean(axis=1)
    nearest = np.abs(centres[None, :] - target_spans.mean(axis=1)[:, None]).argmin(axis=1)
    weights[covered == 0, nearest[covered == 0]] = 1.0
    return weights @ rows.astype(np.float64) / weights.sum(axis=1, keepdims=True)


def decode_values(track: Track) -> np.ndarray:
    """Track rows as float: quantised uint8 rows (vggish-quantized) are divided by 255, as IMG's loader does."""
    if track.features.dtype == np.uint8:
        return track.features.astype(np.float32) / 255.0
    return track.features.astype(np.float32, copy=False)


@dataclass
class AlignedVideo:
    visual: np.ndarray  # [T', Dv] float32
    audio: np.ndarray | None  # [T', Da] float32, None when the video has no audio track
    spans: np.ndarray  # [T', 2] seconds covered by each visual row


def onto_grid(track: Track, steps: int, spans: np.ndarray, rule: AlignmentRule) -> np.ndarray:
    """A track's rows put on a grid of `steps` rows covering `spans`: by IMG's index rule or by time overlap."""
    values = decode_values(track)
    if rule == "img":
        return img_resample(values, steps).astype(np.float32)
    return time_resample(values, track.timestamps, spans).astype(np.float32)


def align(
    visual_track: Track | Sequence[Track],
    audio_track: Track | None,
    max_pos_len: int = 128,
    rule: AlignmentRule = "img",
) -> AlignedVideo:
    """A visual track pooled to at most max_pos_len rows and an audio track (None: no audio) on the same grid.
    Several visual tracks: the first is the grid, the others are put on it as the audio is, and their rows are
    concatenated in order."""
    tracks = [visual_track] if isinstance(visual_track, Track) else list(visual_track)
    grid = tracks[0]
    visual_rows = img_visual_sampling(decode_values(grid), max_pos_len).astype(np.float32)
    spans = pooled_spans(grid.timestamps, max_pos_len)
    if len(tracks) > 1:
        others = [onto_grid(track, len(visual_rows), spans, rule) for track in tracks[1:]]
        visual_rows = np.concatenate([visual_rows, *others], axis=1)
    audio_rows = None if audio_track is None else onto_grid(audio_track, len(visual_rows), spans, rule)
    return AlignedVideo(visual_rows, audio_rows, spans)


def aligned_length(visual_rows: int, max_pos_len: int) -> int:
    """Rows of a visual track of `visual_rows` rows after pooling: what IMG's labels and decoding count."""
    return min(visual_rows, max_pos_len)


class TrackSource(Protocol):
    """What tracks are read from: a FeatureStore, or the FeatureStores a dataset reads as one."""

    def feature_names(self, video_id: str) -> list[str]: ...

    def track(self, video_id: str, feature: str) -> Track: ...


def aligned_tracks(
    store: TrackSource,
    video_id: str,
    visual: str | Sequence[str],
    audio: str | None,
    max_pos_len: int = 128,
    rule: AlignmentRule = "img",
) -> AlignedVideo:
    """One video's visual track(s) pooled to at most max_pos_len rows and its audio track on the same grid (audio
    None: the video has no audio track). What the IMG datasets read (img_model/data/dataset.py)."""
    audio_track = None
    if audio is not None and audio in store.feature_names(video_id):
        audio_track = store.track(video_id, audio)
    names = [visual] if isinstance(visual, str) else list(visual)
    return align([store.track(video_id, name) for name in names], audio_track, max_pos_len, rule)
