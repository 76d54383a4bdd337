"""From start / end logits to spans, and between clip indices and seconds (img_spec.md §1.3, §3.2).

A video of duration D seconds cut into N feature steps is partitioned uniformly: step i covers
[i·D/N, (i+1)·D/N). A span (i, j) with i ≤ j covers [i·D/N, (j+1)·D/N].
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


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
    """The k most probable distinct spans (start ≤ end) per sample, best first, each (B, k). k is capped at the
    number of spans L(L+1)/2; spans that touch padding have score 0 and rank last."""
    scores = span_probabilities(start_logits, end_logits)
    length = scores.shape[1]
    lower = torch.ones(length, length, dtype=torch.bool, device=scores.device).tril(-1)
    flat = scores.masked_fill(lower, -1.0).flatten(1)
    best, index = flat.topk(min(k, length * (length + 1) // 2), dim=1)
    return Spans(index // length, index % length, best)


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


def time_to_index(
    start_time: np.ndarray | float,
    end_time: np.ndarray | float,
    num_steps: np.ndarray | int,
    duration: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """The step span (i, j) whose time span [i·D/N, (j+1)·D/N] has the largest IoU with [start, end] (the
    labelling rule of §1.3; the first maximum in row-major order wins ties). Works on one annotation or on
    arrays of them, each with its own N and D."""
    start_time, end_time, num_steps, duration = np.broadcast_arrays(
        np.asarray(start_time, dtype=np.float64),
        np.asarray(end_time, dtype=np.float64),
        np.asarray(num_steps, dtype=np.int64),
        np.asarray(duration, dtype=np.float64),
    )
    most = int(num_steps.max())
    grid = np.arange(most + 1, dtype=np.float32)
    # Candidate boundaries in float32, k/N·D as the authors' data generator computes them.
    bounds = grid / num_steps[..., None].astype(np.float32) * duration[..., None].astype(np.float32)
    starts = bounds[..., :-1, None].astype(np.float64)  # (..., N, 1)
    ends = bounds[..., None, 1:].astype(np.float64)  # (..., 1, N)
    s, e = start_time[..., None, None], end_time[..., None, None]
    intersection = np.maximum(0.0, np.minimum(ends, e) - np.maximum(starts, s))
    union = np.maximum(ends, e) - np.minimum(starts, s)
    iou = np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)
    outside = (grid[:-1] >= num_steps[..., None])[..., :, None] | (grid[:-1] >= num_steps[..., None])[..., None, :]
    iou = np.where(outside, -1.0, iou).reshape(*num_steps.shape, most * most)
    best = iou.argmax(axis=-1)
    return best // most, best % most
