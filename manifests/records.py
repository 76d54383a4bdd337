"""The normalised query record that every dataset parser produces, and the clipping rule they share."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


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
