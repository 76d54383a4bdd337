"""Moment-retrieval metrics (img_spec.md §5): temporal IoU, R1@μ, mIoU, and R5@μ from the top-5 distinct spans.

Every value is a percentage, as the paper reports them. R1@μ counts the queries whose best span has IoU ≥ μ with
the ground truth; R5@μ counts those where any of the five most probable distinct spans does (beyond the paper).
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = (0.3, 0.5, 0.7)
TOP_K = 5


def temporal_iou(
    pred_start: np.ndarray | float,
    pred_end: np.ndarray | float,
    true_start: np.ndarray | float,
    true_end: np.ndarray | float,
) -> np.ndarray:
    """(min(ends) − max(starts)) / (max(ends) − min(starts)), clipped at 0, elementwise (§5).

    Touching spans have IoU 0. Where both spans are the same single instant the union is 0 and the IoU is 1;
    a zero-length span inside a longer one has IoU 0. NaN spans (e.g. padding of a top-k list) give 0."""
    ps, pe, ts, te = (np.asarray(a, dtype=np.float64) for a in (pred_start, pred_end, true_start, true_end))
    intersection = np.minimum(pe, te) - np.maximum(ps, ts)
    union = np.maximum(pe, te) - np.minimum(ps, ts)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, np.maximum(intersection, 0.0) / np.where(union > 0, union, 1.0), 0.0)
    same_instant = (union == 0) & (ps == ts) & (pe == te)
    return np.where(same_instant, 1.0, np.nan_to_num(iou, nan=0.0))


def recall_at(ious: np.ndarray, threshold: float) -> float:
    """Percentage of rows with IoU ≥ threshold. `ious` is (n,) for R1 or (n, k) for Rk (any of the k)."""
    ious = np.asarray(ious, dtype=np.float64)
    if len(ious) == 0:
        return float("nan")
    hit = ious >= threshold
    return 100.0 * float((hit.any(axis=1) if hit.ndim == 2 else hit).mean())


def mean_iou(ious: np.ndarray) -> float:
    ious = np.asarray(ious, dtype=np.float64)
    return 100.0 * float(ious.mean()) if len(ious) else float("nan")


def retrieval_metrics(best_iou: np.ndarray, top_ious: np.ndarray | None = None) -> dict[str, float]:
    """R1@{0.3,0.5,0.7} and mIoU from each query's best span's IoU (n,), and R5@{0.3,0.5,0.7} from the IoUs
    (n, k) of its ranked distinct spans (left out when `top_ious` is None)."""
    best_iou = np.asarray(best_iou, dtype=np.float64)
    metrics = {f"R1@{t}": recall_at(best_iou, t) for t in THRESHOLDS}
    metrics["mIoU"] = mean_iou(best_iou)
    if top_ious is not None:
        top_ious = np.asarray(top_ious, dtype=np.float64).reshape(len(best_iou), -1)[:, :TOP_K]
        metrics |= {f"R{TOP_K}@{t}": recall_at(top_ious, t) for t in THRESHOLDS}
    return metrics


__all__ = ["THRESHOLDS", "TOP_K", "mean_iou", "recall_at", "retrieval_metrics", "temporal_iou"]
