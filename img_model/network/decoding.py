"""From start / end logits to spans, and between clip indices and seconds (img_spec.md §1.3, §3.2).

A video of duration D seconds cut into N feature steps is partitioned uniformly: step i covers
[i·D/N, (i+1)·D/N). A span (i, j) with i ≤ j covers [i·D/N, (j+1)·D/N].
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

MASKED = -1e29  # logits at or below this are masked steps (the model adds -1e30 to them)
LABEL_CHUNK_CELLS = 1 << 20  # candidate cells labelled at once by time_to_index


class Spans(NamedTuple):
    start: torch.Tensor  # (B, k) or (B,) int64 step indices
    end: torch.Tensor  # same shape, end ≥ start
    score: torch.Tensor  # P_start(start) · P_end(end)


def span_probabilities(start_logits: torch.Tensor, end_logits: torch.Tensor) -> torch.Tensor:
    """(B, L, L) matrix of P_start(i)·P_end(j) for j ≥ i, 0 below the diagonal. Masked steps (logits −1e30)
    have probability 0."""
    start = torch.softmax(start_logits.float(), dim=1)
    end = torch.softmax(end_logits.float(), dim=1)
    return torch.triu(start.unsqueeze(2) * end.unsqueeze(1))


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor) -> Spans:
    """The span with the largest probability, start ≤ end, no length cap (the authors' `extract_index`, §7.9):
    start = argmax over rows of their maximum, end = argmax over columns of theirs."""
    scores = span_probabilities(start_logits, end_logits)
    row_best = scores.amax(dim=2)
    start = row_best.argmax(dim=1)
    end = scores.amax(dim=1).argmax(dim=1)
    return Spans(start, end, row_best.amax(dim=1))


def top_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, k: int) -> Spans:
    """The k most probable distinct spans (start ≤ end) per sample, best first, each (B, k).

    Spans are ranked by log P_start(i) + log P_end(j), so tiny probabilities that underflow float32 still rank
    correctly. Spans touching a masked step (logits at -1e30) never rank: where a sample has fewer than k valid
    spans, the rest are start = end = -1 with score 0. k is capped at L(L+1)/2.
    """
    start_log = torch.log_softmax(start_logits.float(), dim=1)
    end_log = torch.log_softmax(end_logits.float(), dim=1)
    valid_start, valid_end = start_logits > MASKED, end_logits > MASKED
    length = start_log.shape[1]
    upper = torch.ones(length, length, dtype=torch.bool, device=start_log.device).triu()
    valid = upper & valid_start.unsqueeze(2) & valid_end.unsqueeze(1)
    scores = (start_log.unsqueeze(2) + end_log.unsqueeze(1)).masked_fill(~valid, float("-inf")).flatten(1)
    best, index = scores.topk(min(k, length * (length + 1) // 2), dim=1)
    found = torch.isfinite(best)
    start = torch.where(found, index // length, -1)
    end = torch.where(found, index % length, -1)
    return Spans(start, end, torch.where(found, best.exp(), 0.0))


def nms_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, k: int, threshold: float) -> Spans:
    """The first k spans of greedy non-maximum suppression over every candidate span (start ≤ end) of each
    sample, each (B, k), kept order = rank (2D-TAN's and MMN's R@5 evaluation).

    Candidates are ranked by P_start(i)·P_end(j) (in log space, as top_spans); the best remaining candidate is
    kept and every remaining one whose temporal IoU with it is above `threshold` is suppressed (strictly above, as
    both references: mmn/data/datasets/evaluation.py `nms`, 2D-TAN lib/core/eval.py `nms`). IoUs are computed on
    the step grid, [i, j + 1), which is the IoU in seconds scaled by D/N. threshold 1 suppresses nothing but the
    kept span itself: the k most probable distinct spans. Where fewer than k spans survive, the rest are start =
    end = -1 with score 0. Ties keep the first candidate in row-major (start, end) order."""
    start_log = torch.log_softmax(start_logits.float(), dim=1)
    end_log = torch.log_softmax(end_logits.float(), dim=1)
    length = start_log.shape[1]
    upper = torch.ones(length, length, dtype=torch.bool, device=start_log.device).triu()
    valid = upper & (start_logits > MASKED).unsqueeze(2) & (end_logits > MASKED).unsqueeze(1)
    scores = (start_log.unsqueeze(2) + end_log.unsqueeze(1)).masked_fill(~valid, float("-inf")).flatten(1)
    grid = torch.arange(length, device=start_log.device, dtype=torch.float64)
    cand_start = grid.repeat_interleave(length)  # (L²,): candidate c = (c // L, c % L)
    cand_end = grid.repeat(length) + 1.0
    starts, ends, kept_scores = [], [], []
    rows = torch.arange(scores.shape[0], device=scores.device)
    for _ in range(k):
        best, index = scores.max(dim=1)
        found = torch.isfinite(best)
        kept_start, kept_end = cand_start[index], cand_end[index]
        intersection = torch.minimum(cand_end, kept_end[:, None]) - torch.maximum(cand_start, kept_start[:, None])
        union = torch.maximum(cand_end, kept_end[:, None]) - torch.minimum(cand_start, kept_start[:, None])
        iou = intersection.clamp(min=0.0) / union
        scores = scores.masked_fill(iou > threshold, float("-inf"))
        scores[rows, index] = float("-inf")
        starts.append(torch.where(found, index // length, -1))
        ends.append(torch.where(found, index % length, -1))
        kept_scores.append(torch.where(found, best.exp(), 0.0))
    return Spans(torch.stack(starts, dim=1), torch.stack(ends, dim=1), torch.stack(kept_scores, dim=1))


def index_to_time(
    start_index: np.ndarray | int,
    end_index: np.ndarray | int,
    num_steps: np.ndarray | int,
    duration: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """Seconds (start, end) of a step span, (i·D/N, (j+1)·D/N), in float32 as the authors compute them."""
    steps = np.asarray(num_steps, dtype=np.float32)
    seconds = np.asarray(duration, dtype=np.float32)
    start = np.asarray(start_index).astype(np.float32) * seconds / steps
    end = (np.asarray(end_index) + 1).astype(np.float32) * seconds / steps
    return start, end


def clip_steps(num_clips: int, clip_length: float, num_steps: int, duration: float) -> np.ndarray:
    """The step holding the middle of each clip k = 0 … num_clips − 1, clip k covering [k·c, min((k+1)·c, D)): how
    clip-level labels (QVHighlights' 2-s clips) meet the model's steps of D/N seconds."""
    starts = np.arange(num_clips, dtype=np.float64) * clip_length
    middles = (starts + np.minimum(starts + clip_length, duration)) / 2
    return np.clip(np.floor(middles * num_steps / duration).astype(np.int64), 0, num_steps - 1)


def time_to_index(
    start_time: np.ndarray | float,
    end_time: np.ndarray | float,
    num_steps: np.ndarray | int,
    duration: np.ndarray | float,
    chunk_cells: int = LABEL_CHUNK_CELLS,
) -> tuple[np.ndarray, np.ndarray]:
    """The step span (i, j) whose time span [i·D/N, (j+1)·D/N] has the largest IoU with [start, end] (the
    labelling rule of §1.3; the first maximum in row-major order wins ties). Works on one annotation or on
    arrays of them, each with its own N and D.

    The candidate grid has N² cells per annotation, so annotations are labelled in chunks of about
    `chunk_cells` cells: memory stays bounded (tens of MB) whatever the size of the split."""
    start_time, end_time, num_steps, duration = np.broadcast_arrays(
        np.asarray(start_time, dtype=np.float64),
        np.asarray(end_time, dtype=np.float64),
        np.asarray(num_steps, dtype=np.int64),
        np.asarray(duration, dtype=np.float64),
    )
    shape = num_steps.shape
    flat = [a.reshape(-1) for a in (start_time, end_time, num_steps, duration)]
    starts = np.empty(flat[0].shape, np.int64)
    ends = np.empty(flat[0].shape, np.int64)
    most = int(num_steps.max()) if num_steps.size else 1
    step = max(1, chunk_cells // (most * most))
    for first in range(0, len(starts), step):
        chunk = slice(first, first + step)
        starts[chunk], ends[chunk] = _best_cells(*(a[chunk] for a in flat))
    return starts.reshape(shape), ends.reshape(shape)


def _best_cells(
    start_time: np.ndarray, end_time: np.ndarray, num_steps: np.ndarray, duration: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """time_to_index on 1-D arrays, all at once (memory: a few arrays of len × N² float64)."""
    most = int(num_steps.max())
    grid = np.arange(most + 1, dtype=np.float32)
    # Candidate boundaries in float32, k/N·D as the authors' data generator computes them.
    bounds = grid / num_steps[:, None].astype(np.float32) * duration[:, None].astype(np.float32)
    starts = bounds[:, :-1, None].astype(np.float64)  # (n, N, 1)
    ends = bounds[:, None, 1:].astype(np.float64)  # (n, 1, N)
    s, e = start_time[:, None, None], end_time[:, None, None]
    intersection = np.maximum(0.0, np.minimum(ends, e) - np.maximum(starts, s))
    union = np.maximum(ends, e) - np.minimum(starts, s)
    iou = np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)
    outside = grid[:-1] >= num_steps[:, None]
    iou = np.where(outside[:, :, None] | outside[:, None, :], -1.0, iou).reshape(len(num_steps), most * most)
    best = iou.argmax(axis=1)
    return best // most, best % most
