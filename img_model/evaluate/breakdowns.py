"""How the queries of an evaluation are grouped for its breakdowns, and the compact table of a breakdown.

- Moment-to-video ratio bins (the paper's Figure 5): the queries sorted by (end - start) / duration of their
  ground truth and cut into `k` groups of equal count (the first n mod k groups one query larger); each bin is
  shown with the smallest and largest ratio it holds, ties at a cut may fall on both sides.
- Length buckets as Moment-DETR's standalone_eval defines them (eval_moment_retrieval's length_ranges):
  short (0, 10] s, middle (10, 30] s, long (30, ∞) s of ground-truth moment length; Moment-DETR's upper end is
  150 s, the length of a QVHighlights video, which no moment of ours exceeds by definition of the bucket.
- Audio importance bins (Table 16): evaluator.IMPORTANCE_EDGES.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RATIO_BINS = 5  # img-eval --ratio-bins default (Figure 5 has five)
MAX_RATIO_BINS = 100
LENGTH_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("short", 0.0, 10.0),
    ("middle", 10.0, 30.0),
    ("long", 30.0, math.inf),
)
SHOWN_METRICS = ("R1@0.5", "R1@0.7", "mIoU")  # the compact table's columns, per branch


def equal_count_bins(values: np.ndarray, k: int) -> list[np.ndarray]:
    """Index arrays of min(k, n) groups of equal count (±1) of `values` sorted ascending (stable on ties)."""
    if k < 1:
        raise ValueError(f"the number of bins must be at least 1, not {k}")
    if len(values) == 0:
        return []
    order = np.argsort(values, kind="stable")
    return [chunk for chunk in np.array_split(order, min(k, len(values))) if len(chunk)]


def length_bucket_masks(lengths: np.ndarray) -> list[tuple[str, float, float, np.ndarray]]:
    """(name, low, high, mask) of each Moment-DETR length bucket: low < length <= high."""
    return [(name, low, high, (lengths > low) & (lengths <= high)) for name, low, high in LENGTH_BUCKETS]


def breakdown_table(title: str, entries: list[dict[str, Any]], label: str) -> str:
    """A compact table: one row per bin (its label, query count), R1@0.5 / R1@0.7 / mIoU of each branch."""
    branches = next((list(e["branches"]) for e in entries if e.get("branches")), [])
    width = 7 * len(SHOWN_METRICS)
    lines = [
        title,
        f"{'':<24}" + "".join(f"  {branch:^{width}}" for branch in branches),
        f"{label:<18}{'n':>6}" + "".join("  " + "".join(f"{name:>7}" for name in SHOWN_METRICS) for _ in branches),
    ]
    for entry in entries:
        row = f"{entry['label']:<18}{entry['queries']:>6}"
        for branch in branches:
            metrics = entry.get("branches", {}).get(branch, {})
            row += "  " + "".join(f"{metrics[name]:7.2f}" if name in metrics else f"{'-':>7}" for name in SHOWN_METRICS)
        lines.append(row)
    return "\n".join(lines)
