"""The normalised query record that every dataset parser produces, and the clipping rule they share."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_CLIP_LENGTH = 2.0  # seconds: QVHighlights' clips
MAX_SALIENCY_SCORE = 4.0  # QVHighlights' scale: 0 very bad, 1 bad, 2 fair, 3 good, 4 very good


@dataclass(frozen=True)
class ClipSaliency:
    """Clip-level saliency labels, as QVHighlights gives them: the video cut into clips of `clip_length` seconds
    (clip k covers [k·c, (k+1)·c), the last one possibly shorter), the ids of the relevant clips and, for each,
    one score per annotator on the 0-4 scale; every other clip scores 0."""

    clip_length: float
    clip_ids: tuple[int, ...]
    scores: tuple[tuple[float, ...], ...]  # (len(clip_ids), annotators)

    def num_clips(self, duration: float) -> int:
        """Clips that start before the end of the video: ⌈D / c⌉ (QVHighlights' int(D / c) for its whole clips)."""
        return max(1, math.ceil(round(duration / self.clip_length, 6)))


@dataclass(frozen=True)
class QueryRecord:
    """One natural-language query grounded in one video: the moment [start, end] in seconds, inside [0, duration].

    `qid` is the authors' id ("qid_12408") for the published datasets; `sentence` is the annotation text with
    surrounding whitespace removed (tokenisation strips it anyway, img_spec.md §1.3).
    """

    qid: str
    video_id: str
    start: float
    end: float
    duration: float
    sentence: str
    split: str
    saliency: ClipSaliency | None = None  # clip-level saliency labels, when the dataset has them (custom JSONL)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def clip_span(start: float, end: float, duration: float) -> tuple[float, float, bool]:
    """The published loader's clipping: start = max(0, start), end = min(end, duration); True when it changed."""
    clipped_start, clipped_end = max(0.0, start), min(end, duration)
    return clipped_start, clipped_end, (clipped_start, clipped_end) != (start, end)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def split_counts(records: Iterable[QueryRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.split] = counts.get(record.split, 0) + 1
    return counts
