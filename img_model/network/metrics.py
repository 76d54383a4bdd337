"""Moment-retrieval and highlight-detection metrics, each a percentage as papers report them.

- R1@μ (img_spec.md §5): the queries whose best span has IoU ≥ μ with the ground truth; mIoU its mean IoU.
- R5-noNMS@μ (beyond the paper): any of the five most probable distinct spans has IoU ≥ μ. Those five are
  near-duplicates of each other, so this is not the literature's R@5.
- R5-NMS@μ: any of the first five spans left by greedy NMS over all candidate spans has IoU ≥ μ: the R@5 of
  2D-TAN and MMN (decoding.nms_spans; suppression of IoU > the NMS threshold, default 0.5 as MMN's). Unlike
  2D-TAN, which counts IoU > μ, every recall here counts IoU ≥ μ (as MMN and Moment-DETR do).
- mAP@0.5, mAP@0.75, mAP@[0.5:0.95]: Moment-DETR's moment-retrieval mAP (standalone_eval/eval.py
  `compute_mr_ap`): per query, its first 10 windows ranked by score are matched greedily to the ground-truth
  windows (a window is a true positive at threshold μ when its IoU ≥ μ with a ground truth not matched yet), the
  VOC-2011 interpolated AP of that list (average_precision); the mean over queries at each μ of 0.5, 0.55, …,
  0.95, and the mean over the ten thresholds.
- HL-mAP, HL-HIT@1: Moment-DETR's highlight detection on QVHighlights' clip-level saliency labels (eval.py
  `eval_highlight`, at its "VeryGood" level: a clip is positive for an annotator scoring it ≥ 4 on the 0-4 scale).
  HIT@1: the clip with the highest predicted score is positive for at least one annotator. mAP: per query and
  annotator, the AP of the clip ranking (highlight_average_precision, their `get_ap`), averaged over annotators
  then queries.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = (0.3, 0.5, 0.7)
TOP_K = 5
NMS_THRESHOLD = 0.5  # MMN's default (mmn/config/defaults.py) and 2D-TAN's Charades / ActivityNet conv configs
MAP_WINDOWS = 10  # Moment-DETR's max_pred_windows
MAP_THRESHOLDS = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))  # np.linspace(0.5, 0.95, 10), as Moment-DETR
HIGHLIGHT_MIN_SCORE = 4.0  # "Very Good" on QVHighlights' 0 (very bad) … 4 (very good) scale
MAP_NAMES = {0.5: "mAP@0.5", 0.75: "mAP@0.75"}
MAP_AVERAGE = "mAP@[0.5:0.95]"
HIGHLIGHT_NAMES = ("HL-mAP", "HL-HIT@1")


def top_name(threshold: float, nms: bool) -> str:
    """R5-NMS@μ (after NMS, the literature's R@5) or R5-noNMS@μ (the five most probable distinct spans)."""
    return f"R{TOP_K}-{'NMS' if nms else 'noNMS'}@{threshold}"


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


def retrieval_metrics(
    best_iou: np.ndarray, top_ious: np.ndarray | None = None, ranked_ious: np.ndarray | None = None
) -> dict[str, float]:
    """R1@{0.3,0.5,0.7} and mIoU from each query's best span's IoU (n,); R5-noNMS@{0.3,0.5,0.7} from the IoUs
    (n, k) of its most probable distinct spans; R5-NMS@{0.3,0.5,0.7} and the mAPs from the IoUs (n, k) of the spans
    NMS kept, in rank order (NaN where fewer were kept). Those left out are None."""
    best_iou = np.asarray(best_iou, dtype=np.float64)
    metrics = {f"R1@{t}": recall_at(best_iou, t) for t in THRESHOLDS}
    metrics["mIoU"] = mean_iou(best_iou)
    if ranked_ious is not None:
        ranked_ious = np.asarray(ranked_ious, dtype=np.float64).reshape(len(best_iou), -1)
        metrics |= {top_name(t, nms=True): recall_at(ranked_ious[:, :TOP_K], t) for t in THRESHOLDS}
        metrics |= moment_map(ranked_ious)
    if top_ious is not None:
        top_ious = np.asarray(top_ious, dtype=np.float64).reshape(len(best_iou), -1)[:, :TOP_K]
        metrics |= {top_name(t, nms=False): recall_at(top_ious, t) for t in THRESHOLDS}
    return metrics


def moment_map(ranked_ious: np.ndarray) -> dict[str, float]:
    """mAP@0.5, mAP@0.75 and mAP@[0.5:0.95] (percent) of queries with one ground-truth window each, from the IoUs
    (n, k) of their windows in rank order (NaN: no window); the first MAP_WINDOWS count.

    With one ground truth, average_precision's matching leaves one true positive, the first window with IoU ≥ μ, at
    rank r: precision 1/r at recall 1, so AP = 1/r (0 when no window reaches μ); computed so, for all queries at
    once."""
    ranked = np.asarray(ranked_ious, dtype=np.float64).reshape(len(ranked_ious), -1)[:, :MAP_WINDOWS]
    if len(ranked) == 0:
        return {**{name: float("nan") for name in MAP_NAMES.values()}, MAP_AVERAGE: float("nan")}
    hits = ranked[:, :, None] >= np.asarray(MAP_THRESHOLDS)  # (n, k, thresholds); NaN is no hit
    precision = np.where(hits.any(axis=1), 1.0 / (hits.argmax(axis=1) + 1), 0.0)
    per_threshold = 100.0 * precision.mean(axis=0)
    metrics = {name: float(per_threshold[MAP_THRESHOLDS.index(t)]) for t, name in MAP_NAMES.items()}
    metrics[MAP_AVERAGE] = float(per_threshold.mean())
    return metrics


def average_precision(ious: np.ndarray, thresholds: tuple[float, ...] = MAP_THRESHOLDS) -> np.ndarray:
    """AP (fraction, one per threshold) of one query's ranked windows: `ious` (windows, ground truths) with the
    windows in rank order, best first (Moment-DETR's compute_average_precision_detection after its sort by score).

    At each threshold every window in turn is matched to the unmatched ground truth it overlaps most with IoU ≥ the
    threshold (a true positive), else it is a false positive; then precision and recall (over all ground truths)
    after each window, precision made non-increasing from the right, and AP = Σ (recall step) × precision, recall
    running from 0 to 1 (VOC 2011; ground truths never found add recall at precision 0). No window: AP 0."""
    ious = np.asarray(ious, dtype=np.float64)
    windows, truths = ious.shape if ious.ndim == 2 else (len(ious), 1)
    ious = ious.reshape(windows, truths)
    out = np.zeros(len(thresholds))
    if windows == 0 or truths == 0:
        return out
    for number, threshold in enumerate(thresholds):
        matched = np.zeros(truths, dtype=bool)
        hits = np.zeros(windows)
        for window, overlaps in enumerate(ious):
            for truth in np.argsort(overlaps, kind="stable")[::-1]:  # the reference's order, ties included
                if overlaps[truth] < threshold:
                    break
                if not matched[truth]:
                    matched[truth], hits[window] = True, 1.0
                    break
        true_positives = np.cumsum(hits)
        precision = true_positives / np.arange(1, windows + 1)
        recall = true_positives / truths
        out[number] = _interpolated_ap(precision, recall)
    return out


def _interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1]) + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def highlight_average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """AP (fraction) of clips ranked by predicted `scores` against binary labels `positive` (one annotator),
    Moment-DETR's get_ap: 0 when no clip is positive, 1 when all are; else, over the distinct score values from the
    highest down, precision and recall of the clips scoring at least that value, precision made non-increasing
    towards lower recall's side (the best precision at this recall or more), and the mean of that precision over
    the values where recall grows. Tied scores enter together: a group holding several positives is one recall
    step (so this differs from sklearn's average_precision_score there)."""
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if positive.all():
        return 1.0
    if not positive.any():
        return 0.0
    order = np.argsort(-scores, kind="stable")
    ranked_scores, ranked_positive = scores[order], positive[order]
    last_of_value = np.flatnonzero(np.append(ranked_scores[1:] != ranked_scores[:-1], True))
    true_positives = np.cumsum(ranked_positive)[last_of_value]
    precision = true_positives / (last_of_value + 1)
    recall = true_positives / positive.sum()
    best_beyond = np.maximum.accumulate(precision[::-1])[::-1]
    grows = np.diff(np.concatenate([[0.0], recall])) > 0
    return float(best_beyond[grows].mean())


def highlight_metrics(queries: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """HL-mAP and HL-HIT@1 (percent) from, per query, the predicted score of each clip (c,) and the labels'
    scores (c, annotators) on the 0-4 scale; a clip is positive for an annotator at ≥ HIGHLIGHT_MIN_SCORE."""
    if not queries:
        return {name: float("nan") for name in HIGHLIGHT_NAMES}
    precisions, hits = [], []
    for scores, labels in queries:
        positive = np.asarray(labels, dtype=np.float64).reshape(len(scores), -1) >= HIGHLIGHT_MIN_SCORE
        precisions.append(np.mean([highlight_average_precision(column, scores) for column in positive.T]))
        hits.append(bool(positive[int(np.argmax(scores))].any()))
    return {"HL-mAP": 100.0 * float(np.mean(precisions)), "HL-HIT@1": 100.0 * float(np.mean(hits))}


__all__ = [
    "HIGHLIGHT_MIN_SCORE",
    "HIGHLIGHT_NAMES",
    "MAP_AVERAGE",
    "MAP_NAMES",
    "MAP_THRESHOLDS",
    "MAP_WINDOWS",
    "NMS_THRESHOLD",
    "THRESHOLDS",
    "TOP_K",
    "average_precision",
    "highlight_average_precision",
    "highlight_metrics",
    "mean_iou",
    "moment_map",
    "recall_at",
    "retrieval_metrics",
    "temporal_iou",
    "top_name",
]
