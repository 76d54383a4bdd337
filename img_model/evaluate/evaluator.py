"""Evaluation of an IMG model on a dataset split (img_spec.md §5): predictions per query for the fused, visual-only
and audio-only branches, their metrics, and a breakdown by the predicted audio importance.

Deterministic by default: evaluation runs in eval mode with p_warm = 1, inside a forked random state seeded with
`seed`, so that the slot noise (only drawn when the model's slot_noise is "always", §7.2) is the same draw every
time and the caller's generators are untouched (a training run evaluates without changing its trajectory).

Predictions JSONL (`--predictions FILE`), one object per query, in dataset order:

    {"qid": "qid_12408", "video_id": "3MSZA", "query": "a person opens the door", "split": "test",
     "duration": 30.96, "num_steps": 31, "ground_truth": [24.3, 30.4], "has_audio": true, "audio_importance": 0.41,
     "branches": {"fused":  {"span": [24.0, 30.96], "steps": [24, 30], "score": 0.31, "iou": 0.87,
                             "top": [{"span": [...], "steps": [...], "score": ..., "iou": ...}, ... 5],
                             "top_nms": [{"span": ..., "steps": ..., "score": ..., "iou": ...}, ... 10],
                             "saliency": [-1.2, 0.4, ... num_steps],
                             "start_probability": [0.01, 0.2, ... num_steps], "end_probability": [...]},  # fused
                  "visual": {...}, "audio": {...}}}

- times are seconds; `steps` the step indices (i, j) with span = [i·D/N, (j+1)·D/N] (§1.3), N = `num_steps`, the
  pooled length of the video's visual track; `score` = P_start(i)·P_end(j);
- `span` is the branch's prediction (the authors' decoding, used for R1 and mIoU); `top` the five most probable
  distinct spans, best first (used for R5-noNMS; fewer when the video has under 3 steps); `top_nms` the first ten
  spans that greedy NMS over all candidate spans keeps at img-eval's --nms-threshold, in rank order (the first five
  give R5-NMS, all ten the mAPs; fewer when fewer survive);
- `saliency` is the branch's saliency head's raw score (no sigmoid) of each of the video's `num_steps` steps
  (fused: av_score, visual: v_score, audio: a_score), the per-clip scores of the highlight metrics;
- `start_probability` / `end_probability`, fused branch only: P_start and P_end of each step (the softmax of its
  logits over the video's steps; `score` is the product at the span's steps), the curves of the report's rows;
- `saliency_labels`, only where the dataset labels clips (custom JSONL `relevant_clip_ids` + `saliency_scores`):
  `{"clip_length": 2.0, "relevant_clip_ids": [...], "saliency_scores": [[...], ...]}` as read;
- `audio_importance` is the model's predicted p (the AIP output, §3.2 step 7); `has_audio` false means the video
  was read with a zero audio track (no audio, or --drop-audio). Ablated models (docs/model.md, "Ablations"): the
  model's own audio weight (fixed, similarity, entropy), null where it has none; without audio there is no
  "audio" branch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from extract.core.precision import FP32, Precision
from extract.core.provenance import compare_recipes
from img_model.checkpoint import Checkpoint, CheckpointMismatchError
from img_model.data.batch import Batch, collate
from img_model.data.dataset import DataSources, MomentDataset
from img_model.data.visual_tracks import combination_mismatch
from img_model.distributed import evaluation_batches, in_batch_order
from img_model.evaluate.breakdowns import RATIO_BINS, breakdown_table, equal_count_bins, length_bucket_masks
from img_model.evaluate.health import collapsed_importance
from img_model.network.decoding import best_span, clip_steps, index_to_time, nms_spans, top_spans
from img_model.network.metrics import (
    HIGHLIGHT_NAMES,
    MAP_AVERAGE,
    MAP_NAMES,
    MAP_WINDOWS,
    NMS_THRESHOLD,
    THRESHOLDS,
    TOP_K,
    highlight_metrics,
    retrieval_metrics,
    temporal_iou,
    top_name,
)
from img_model.network.model import IMG, IMGOutput
from img_model.runtime import SINGLE_PROCESS, RankContext, loader_workers
from manifests.records import ClipSaliency, QueryRecord

BRANCHES = {
    "fused": ("start_logits_av", "end_logits_av"),
    "visual": ("start_logits_v", "end_logits_v"),
    "audio": ("start_logits_a", "end_logits_a"),
}
SALIENCY_SCORES = {"fused": "av_score", "visual": "v_score", "audio": "a_score"}  # IMGOutput's saliency heads
IMPORTANCE_EDGES = (0.15, 0.25, 0.35, 0.45)  # the bins of the paper's Table 16
TABLE_BLOCKS = (  # the table's blocks of columns (each under 120 characters wide)
    (*(f"R1@{t}" for t in THRESHOLDS), "mIoU", *(top_name(t, nms=True) for t in THRESHOLDS)),
    (*MAP_NAMES.values(), MAP_AVERAGE, *(top_name(t, nms=False) for t in THRESHOLDS)),
    HIGHLIGHT_NAMES,
)
METRIC_NAMES = tuple(name for block in TABLE_BLOCKS for name in block)


@dataclass
class BranchPrediction:
    steps: tuple[int, int]
    span: tuple[float, float]
    score: float
    iou: float
    top_steps: np.ndarray  # (k, 2) int
    top_spans: np.ndarray  # (k, 2) float seconds
    top_scores: np.ndarray  # (k,)
    top_ious: np.ndarray  # (k,)
    nms_steps: np.ndarray = field(default_factory=lambda: np.full((0, 2), -1))  # (MAP_WINDOWS, 2), after NMS
    nms_spans: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    nms_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    nms_ious: np.ndarray = field(default_factory=lambda: np.zeros(0))
    saliency: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (num_steps,) raw scores
    # P_start and P_end of each step (softmax of the logits over the video's steps), for the report's curves; empty
    # for the visual and audio branches and for rows read back from a predictions file written before they were kept
    start_probability: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    end_probability: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def as_json(self) -> dict[str, Any]:
        curves = {
            name: [float(str(value)) for value in np.asarray(values, np.float32)]
            for name, values in (
                ("start_probability", self.start_probability),
                ("end_probability", self.end_probability),
            )
            if len(values)
        }
        return {
            "span": list(self.span),
            "steps": list(self.steps),
            "score": self.score,
            "iou": self.iou,
            "top": _spans_json(self.top_steps, self.top_spans, self.top_scores, self.top_ious),
            "top_nms": _spans_json(self.nms_steps, self.nms_spans, self.nms_scores, self.nms_ious),
            # float32's shortest decimal: its ranking (all the highlight metrics use) read back unchanged
            "saliency": [float(str(value)) for value in np.asarray(self.saliency, np.float32)],
            **curves,
        }


def _spans_json(steps: np.ndarray, spans: np.ndarray, scores: np.ndarray, ious: np.ndarray) -> list[dict[str, Any]]:
    return [
        {"span": [float(a), float(b)], "steps": [int(i), int(j)], "score": float(s), "iou": float(u)}
        for (i, j), (a, b), s, u in zip(steps, spans, scores, ious, strict=True)
        if i >= 0
    ]


@dataclass
class QueryPrediction:
    qid: str
    video_id: str
    duration: float
    num_steps: int
    ground_truth: tuple[float, float]
    has_audio: bool
    audio_importance: float | None  # None: the model has no per-query audio weight (add, concat, no audio)
    branches: dict[str, BranchPrediction] = field(default_factory=dict)
    query: str = ""  # the sentence
    split: str = ""  # the split evaluated (train-val for the held-out training videos)
    saliency_labels: ClipSaliency | None = None  # the dataset's clip-level saliency labels, if any

    def as_json(self) -> dict[str, Any]:
        labels = self.saliency_labels
        return {
            "qid": self.qid,
            "video_id": self.video_id,
            "query": self.query,
            "split": self.split,
            "duration": self.duration,
            "num_steps": self.num_steps,
            "ground_truth": list(self.ground_truth),
            "has_audio": self.has_audio,
            "audio_importance": self.audio_importance,
            "branches": {name: branch.as_json() for name, branch in self.branches.items()},
            **(
                {}
                if labels is None
                else {
                    "saliency_labels": {
                        "clip_length": labels.clip_length,
                        "relevant_clip_ids": list(labels.clip_ids),
                        "saliency_scores": [list(row) for row in labels.scores],
                    }
                }
            ),
        }

    def clip_scores(self, branch: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(the branch's predicted score of each labelled clip (c,), the labels' scores (c, annotators)) or None
        without labels. A clip's prediction is the saliency of the step holding the clip's middle."""
        labels = self.saliency_labels
        if labels is None or len(self.branches[branch].saliency) == 0:
            return None
        truth = clip_truth(labels, self.duration)
        steps = clip_steps(len(truth), labels.clip_length, self.num_steps, self.duration)
        return np.asarray(self.branches[branch].saliency, np.float64)[steps], truth


def clip_truth(labels: ClipSaliency, duration: float) -> np.ndarray:
    """The labels' score of every clip of the video (clips, annotators), 0 for the clips not listed."""
    truth = np.zeros((labels.num_clips(duration), len(labels.scores[0]) if labels.scores else 1))
    if labels.clip_ids:
        truth[list(labels.clip_ids)] = labels.scores
    return truth


def _branch_predictions(
    outputs: IMGOutput,
    name: str,
    lengths: np.ndarray,
    durations: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray],
    k: int = TOP_K,
    nms_threshold: float = NMS_THRESHOLD,
) -> list[BranchPrediction]:
    start_logits, end_logits = (getattr(outputs, field_name).float() for field_name in BRANCHES[name])
    best = best_span(start_logits, end_logits)
    top = top_spans(start_logits, end_logits, k)
    kept = nms_spans(start_logits, end_logits, MAP_WINDOWS, nms_threshold)
    saliency = getattr(outputs, SALIENCY_SCORES[name]).float().cpu().numpy()
    # the fused branch's P_start and P_end, the report's curves (masked steps, -1e30, get 0); those of the visual and
    # audio branches, which nothing reads, would add 2 x 3.7 KB per query of 128 steps to the predictions file
    none = np.zeros((len(lengths), 0), np.float32)  # sliced per row: empty, left out of the JSON
    start_probability = torch.softmax(start_logits, dim=1).cpu().numpy() if name == "fused" else none
    end_probability = torch.softmax(end_logits, dim=1).cpu().numpy() if name == "fused" else none
    n, d = lengths[:, None], durations[:, None]
    best_start, best_end = index_to_time(best.start.cpu().numpy(), best.end.cpu().numpy(), lengths, durations)
    top_start_idx, top_end_idx = top.start.cpu().numpy(), top.end.cpu().numpy()
    found = top_start_idx >= 0
    top_start, top_end = index_to_time(np.maximum(top_start_idx, 0), np.maximum(top_end_idx, 0), n, d)
    top_start = np.where(found, top_start, np.nan)
    top_end = np.where(found, top_end, np.nan)
    best_iou = temporal_iou(best_start, best_end, truth[0], truth[1])
    top_iou = temporal_iou(top_start, top_end, truth[0][:, None], truth[1][:, None])
    best_scores = best.score.cpu().numpy()
    top_scores = top.score.cpu().numpy()
    kept_start_idx, kept_end_idx = kept.start.cpu().numpy(), kept.end.cpu().numpy()
    kept_start, kept_end = index_to_time(np.maximum(kept_start_idx, 0), np.maximum(kept_end_idx, 0), n, d)
    kept_found = kept_start_idx >= 0
    kept_start, kept_end = np.where(kept_found, kept_start, np.nan), np.where(kept_found, kept_end, np.nan)
    kept_iou = temporal_iou(kept_start, kept_end, truth[0][:, None], truth[1][:, None])
    kept_scores = kept.score.cpu().numpy()
    predictions = []
    for row in range(len(lengths)):
        predictions.append(
            BranchPrediction(
                steps=(int(best.start[row]), int(best.end[row])),
                span=(float(best_start[row]), float(best_end[row])),
                score=float(best_scores[row]),
                iou=float(best_iou[row]),
                top_steps=np.stack([top_start_idx[row], top_end_idx[row]], axis=1),
                top_spans=np.stack([top_start[row], top_end[row]], axis=1),
                top_scores=top_scores[row],
                top_ious=top_iou[row],
                nms_steps=np.stack([kept_start_idx[row], kept_end_idx[row]], axis=1),
                nms_spans=np.stack([kept_start[row], kept_end[row]], axis=1),
                nms_scores=kept_scores[row],
                nms_ious=np.where(kept_found[row], kept_iou[row], np.nan),
                saliency=saliency[row, : int(lengths[row])],
                start_probability=start_probability[row, : int(lengths[row])],
                end_probability=end_probability[row, : int(lengths[row])],
            )
        )
    return predictions


class Evaluator:
    """Runs a model over a dataset split and turns its outputs into QueryPredictions.

    In a distributed run (`rank`) the processes share the split's batches (the one-process batches, whole) and
    every process gets all the predictions, in dataset order. With slot noise in evaluation (slot_noise =
    "always"), whose draws follow the batch order, every process computes every batch instead."""

    def __init__(
        self,
        device: torch.device,
        precision: Precision = FP32,
        batch_size: int = 16,
        workers: int = 0,
        seed: int = 0,
        rank: RankContext = SINGLE_PROCESS,
        nms_threshold: float = NMS_THRESHOLD,
    ) -> None:
        self.device = device
        self.nms_threshold = nms_threshold
        self.precision = precision
        self.batch_size = batch_size
        self.workers = workers
        self.seed = seed
        self.rank = rank
        self._loaders: dict[tuple[int, bool], DataLoader] = {}

    def loader(self, dataset: MomentDataset, shared: bool = True) -> DataLoader:
        """One loader per dataset, kept: its workers (when any) live across evaluations. `shared`: over the
        processes of a distributed run."""
        key = (id(dataset), shared)
        if key not in self._loaders:
            rank = self.rank if shared else SINGLE_PROCESS
            batches = evaluation_batches(len(dataset), self.batch_size, rank)
            self._loaders[key] = DataLoader(
                dataset,
                batch_sampler=batches,
                collate_fn=collate,
                pin_memory=self.device.type == "cuda",
                **loader_workers(self.workers, len(batches), f"evaluating {dataset.split}"),
            )
        return self._loaders[key]

    def predict(self, model: IMG, dataset: MomentDataset, seed: int | None = None) -> list[QueryPrediction]:
        """Every query's predictions, in dataset order; `seed` (default: the evaluator's) seeds the slot noise."""
        was_training = model.training
        model.eval()
        records = {record.qid: record for record in dataset.records}
        shared = self.rank.distributed and model.config.slot_noise != "always"
        batches: list[list[QueryPrediction]] = []
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(self.seed if seed is None else seed)
                for batch in self.loader(dataset, shared):
                    batches.append(self._predict_batch(model, batch.to(self.device), records, dataset.split))
        finally:
            model.train(was_training)
        if not shared:
            return [prediction for batch in batches for prediction in batch]
        return in_batch_order(self.rank.gather(batches), self.rank.world_size)

    def _predict_batch(
        self, model: IMG, batch: Batch, records: dict[str, QueryRecord], split: str
    ) -> list[QueryPrediction]:
        with self.precision.autocast(self.device):
            outputs = model(**batch.model_inputs(), p_warm=1.0)
        lengths = batch.lengths.cpu().numpy()
        durations = batch.duration.cpu().numpy()
        truth = (batch.start_time.cpu().numpy(), batch.end_time.cpu().numpy())
        per_branch = {
            name: _branch_predictions(outputs, name, lengths, durations, truth, nms_threshold=self.nms_threshold)
            for name in BRANCHES
            if getattr(outputs, BRANCHES[name][0]) is not None  # a model without audio has no audio branch
        }
        importance = None if outputs.aip_prob is None else outputs.aip_prob.float().cpu().numpy()
        has_audio = batch.has_audio.cpu().numpy()
        return [
            QueryPrediction(
                qid=qid,
                video_id=records[qid].video_id,
                query=records[qid].sentence,
                split=split,
                duration=float(durations[row]),
                num_steps=int(lengths[row]),
                ground_truth=(float(truth[0][row]), float(truth[1][row])),
                has_audio=bool(has_audio[row]),
                audio_importance=None if importance is None else float(importance[row]),
                branches={name: branch[row] for name, branch in per_branch.items()},
                saliency_labels=records[qid].saliency,
            )
            for row, qid in enumerate(batch.qids)
        ]


# --- metrics of a set of predictions ---------------------------------------------------------------------------


def branch_metrics(predictions: Sequence[QueryPrediction], with_top: bool = True) -> dict[str, dict[str, float]]:
    """Metrics (percent) of each branch over these predictions; `with_top`: the ranked-list metrics too (R5s,
    mAPs) and, when some queries have clip-level saliency labels, the highlight metrics over those queries."""
    out = {}
    for name in BRANCHES:
        if predictions and name not in predictions[0].branches:  # the model has no such branch
            continue
        best = np.array([p.branches[name].iou for p in predictions])
        ranked = with_top and bool(predictions)
        top = np.stack([p.branches[name].top_ious for p in predictions]) if ranked else None
        kept = _padded([p.branches[name].nms_ious for p in predictions]) if ranked else None
        if kept is not None and kept.shape[1] == 0:  # rows read back from a predictions file without top_nms
            kept = None
        if top is not None and top.shape[1] == 0:  # predictions imported without the most probable spans
            top = None
        out[name] = retrieval_metrics(best, top, kept)
        labelled = [clips for p in predictions if (clips := p.clip_scores(name)) is not None] if ranked else []
        if labelled:
            out[name] |= highlight_metrics(labelled)
    return out


def _padded(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of unequal length as one (n, longest) array, NaN after each row's end."""
    out = np.full((len(rows), max((len(row) for row in rows), default=0)), np.nan)
    for number, row in enumerate(rows):
        out[number, : len(row)] = row
    return out


def importance_breakdown(predictions: Sequence[QueryPrediction]) -> list[dict[str, Any]]:
    """Queries binned by their predicted audio importance (the paper's Table 16 bins), metrics per bin."""
    edges = (0.0, *IMPORTANCE_EDGES, 1.0)
    importance = np.array([np.nan if p.audio_importance is None else p.audio_importance for p in predictions])
    bins = []
    for number, (low, high) in enumerate(itertools.pairwise(edges)):
        last = number == len(edges) - 2
        inside = (importance >= low) & ((importance < high) | (last & (importance == high)))
        members = [p for p, keep in zip(predictions, inside, strict=True) if keep]
        bins.append(_bin_entry(f"{low:g}-{high:g}", members, range=[low, high]))
    return bins


def _bin_entry(label: str, members: Sequence[QueryPrediction], **extra: Any) -> dict[str, Any]:
    """One bin of a breakdown: its label, what defines it, its query count, mean importance and metrics."""
    entry: dict[str, Any] = {"label": label, **extra, "queries": len(members)}
    if members:
        entry["mean_importance"] = mean_importance(members)
        entry["branches"] = branch_metrics(members, with_top=False)
    return entry


def ratio_breakdown(predictions: Sequence[QueryPrediction], bins: int = RATIO_BINS) -> list[dict[str, Any]]:
    """Equal-count bins of the moment-to-video ratio (Figure 5), each with its smallest and largest ratio."""
    ratios = np.array([(p.ground_truth[1] - p.ground_truth[0]) / p.duration for p in predictions])
    entries = []
    for chunk in equal_count_bins(ratios, bins):
        low, high = float(ratios[chunk].min()), float(ratios[chunk].max())
        members = [predictions[i] for i in sorted(chunk.tolist())]
        entries.append(_bin_entry(f"{low:.3f}-{high:.3f}", members, range=[low, high]))
    return entries


def length_breakdown(predictions: Sequence[QueryPrediction]) -> list[dict[str, Any]]:
    """Moment-DETR's short / middle / long buckets of ground-truth moment length (seconds)."""
    lengths = np.array([p.ground_truth[1] - p.ground_truth[0] for p in predictions])
    return [
        _bin_entry(
            f"{name} {'>' + format(low, 'g') if np.isinf(high) else format(low, 'g') + '-' + format(high, 'g')} s",
            [p for p, keep in zip(predictions, mask, strict=True) if keep],
            bucket=name,
            range=[low, None if np.isinf(high) else high],
        )
        for name, low, high, mask in length_bucket_masks(lengths)
    ]


def mean_importance(predictions: Sequence[QueryPrediction]) -> float:
    """The mean audio importance of these predictions; NaN when there are none or the model has none."""
    values = [p.audio_importance for p in predictions if p.audio_importance is not None]
    return float(np.mean(values)) if values else float("nan")


@dataclass
class EvalReport:
    """What img-eval prints: metrics of the three branches, the importance breakdown, and how it was obtained."""

    split: str
    queries: int
    branches: dict[str, dict[str, float]]
    importance_bins: list[dict[str, Any]]
    mean_importance: float
    context: dict[str, Any] = field(default_factory=dict)
    highlight_queries: int = 0  # queries with clip-level saliency labels (the HL metrics' queries)
    ratio_bins: list[dict[str, Any]] = field(default_factory=list)
    length_buckets: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # one line each (img_model/evaluate/health.py)

    @classmethod
    def from_predictions(
        cls,
        split: str,
        predictions: Sequence[QueryPrediction],
        ratio_bin_count: int = RATIO_BINS,
        importance_predicted: bool = False,
        **context: Any,
    ) -> EvalReport:
        """The report of these predictions; `importance_predicted`: the model's audio weight is the AIP's predicted
        importance (IMGConfig.predicts_importance), whose collapse is warned about."""
        collapsed = importance_predicted and collapsed_importance(
            [p.audio_importance for p in predictions], [p.has_audio for p in predictions], split
        )
        return cls(
            split=split,
            queries=len(predictions),
            branches=branch_metrics(predictions),
            importance_bins=importance_breakdown(predictions),
            mean_importance=mean_importance(predictions),
            context={**context, "ratio_bin_count": ratio_bin_count},
            highlight_queries=sum(p.saliency_labels is not None for p in predictions),
            ratio_bins=ratio_breakdown(predictions, ratio_bin_count),
            length_buckets=length_breakdown(predictions),
            warnings=[collapsed] if collapsed else [],
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "queries": self.queries,
            "branches": self.branches,
            "mean_audio_importance": self.mean_importance,
            "audio_importance_bins": self.importance_bins,
            **({"highlight_queries": self.highlight_queries} if self.highlight_queries else {}),
            "ratio_bins": self.ratio_bins,
            "length_buckets": self.length_buckets,
            **self.context,
            "warnings": self.warnings,
        }

    def table(self) -> str:
        table = metrics_table(self.branches, title=f"{self.split}: {self.queries} queries")
        threshold = self.context.get("nms_threshold", NMS_THRESHOLD)
        legend = [
            "a span is right when its IoU >= the threshold (R1, R5, mAP); R5-NMS: the top 5 after greedy NMS over all",
            f"spans, IoU > {threshold:g} suppressed (2D-TAN/MMN's R@5); R5-noNMS: the 5 most probable distinct spans;",
            "mAP: Moment-DETR's, on the top 10 after NMS",
        ]
        if self.highlight_queries:
            legend.append(
                "HL-mAP, HL-HIT@1: Moment-DETR's highlight detection (clips >= Very Good), on the "
                f"{self.highlight_queries} queries with clip labels"
            )
        return "\n".join([table, *legend])

    def breakdown_tables(self) -> str:
        """The three breakdowns, compact: ratio bins (edges shown), length buckets, audio importance bins."""
        return "\n\n".join(
            [
                breakdown_table(
                    f"by moment-to-video ratio ({len(self.ratio_bins)} equal-count bins)", self.ratio_bins, "ratio"
                ),
                breakdown_table("by moment length (Moment-DETR buckets)", self.length_buckets, "length"),
                breakdown_table("by predicted audio importance (Table 16 bins)", self.importance_bins, "importance"),
            ]
        )


def metrics_table(branches: dict[str, dict[str, float]], title: str = "") -> str:
    """The metrics of each branch as text columns, a block of rows per TABLE_BLOCKS entry that has any."""
    lines = [title] if title else []
    for names in TABLE_BLOCKS:
        block = [name for name in names if any(name in m for m in branches.values())]
        if not block:
            continue
        widths = [max(8, len(name) + 2) for name in block]
        lines.append(f"{'branch':<8}" + "".join(f"{name:>{w}}" for name, w in zip(block, widths, strict=True)))
        for branch, metrics in branches.items():
            values = (metrics.get(name, float("nan")) for name in block)
            lines.append(f"{branch:<8}" + "".join(f"{v:{w}.2f}" for v, w in zip(values, widths, strict=True)))
    return "\n".join(lines)


# --- does a checkpoint fit these inputs? -----------------------------------------------------------------------


def check_inputs(checkpoint: Checkpoint, sources: DataSources) -> list[str]:
    """Refuse (CheckpointMismatchError, one line naming the difference) inputs made otherwise than the
    checkpoint's; return notes on what could not be checked."""
    config, notes = checkpoint.config, []
    recorded_visual = checkpoint.provenance.get("visual")
    if recorded_visual is not None:
        other_tracks = combination_mismatch(recorded_visual, sources.visual_provenance())
        if other_tracks:
            raise CheckpointMismatchError(other_tracks)
    sizes = [
        ("visual features", config.video_feature_dim, sources.video_dim),
        ("audio features", config.audio_feature_dim, sources.audio_dim),
    ]
    for what, expected, actual in sizes:
        if expected != actual:
            raise CheckpointMismatchError(f"the model takes {expected}-d {what}; the store's are {actual}-d")
    for kind, name, recipe in (
        ("visual", sources.config.visual, sources.visual_recipe),
        ("audio", sources.config.audio, sources.audio_recipe),
    ):
        recorded = checkpoint.provenance.get(kind)
        if recorded is None:
            notes.append(f"the checkpoint records no {kind} feature provenance (converted): only sizes are checked")
            continue
        detail = compare_recipes(recorded["recipe"], recipe).refused
        if detail:
            raise CheckpointMismatchError(
                f"{kind} features {name!r} were made differently from the checkpoint's {recorded['name']!r}: {detail}"
            )
    texts = sources.texts
    if config.query_features == "precomputed" and not texts.precomputed:
        raise CheckpointMismatchError(f"the model reads precomputed text features; {texts.path} holds {texts.kind} ids")
    if config.query_features == "glove_char" and texts.precomputed:
        raise CheckpointMismatchError(f"the model embeds GloVe word ids; {texts.path} holds {texts.kind} features")
    recorded_text = checkpoint.provenance.get("text")
    if recorded_text is not None:
        expected = {"kind": recorded_text["kind"], **recorded_text["recipe"]}
        detail = compare_recipes(expected, {"kind": texts.kind, **texts.recipe}).refused
        if detail:
            raise CheckpointMismatchError(f"{texts.path} was made differently from the checkpoint's text: {detail}")
    if texts.vocabulary is not None:
        if checkpoint.vocabulary is None:
            raise CheckpointMismatchError(
                "the checkpoint carries no vocabulary, so its word ids cannot be checked against "
                f"{texts.path}; convert it again with --text"
            )
        if checkpoint.vocabulary["sha256"] != texts.vocabulary.sha256:
            raise CheckpointMismatchError(
                f"{texts.path}'s vocabulary (sha256 {texts.vocabulary.sha256[:12]}) is not the checkpoint's "
                f"({checkpoint.vocabulary['sha256'][:12]}): its word ids would point at other words"
            )
    elif config.text_feature_dim != texts.feature_dim:
        raise CheckpointMismatchError(
            f"the model takes {config.text_feature_dim}-d text features; {texts.path} holds {texts.feature_dim}-d"
        )
    if recorded_text is None:
        notes.append("the checkpoint records no text provenance (converted): the vocabulary is checked by its hash")
    return notes
