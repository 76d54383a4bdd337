"""Evaluation of an IMG model on a dataset split (img_spec.md §5): predictions per query for the fused, visual-only
and audio-only branches, their metrics, and a breakdown by the predicted audio importance.

Deterministic by default: evaluation runs in eval mode with p_warm = 1, inside a forked random state seeded with
`seed`, so that the slot noise (only drawn when the model's slot_noise is "always", §7.2) is the same draw every
time and the caller's generators are untouched (a training run evaluates without changing its trajectory).

Predictions JSONL (`--predictions FILE`), one object per query, in dataset order:

    {"qid": "qid_12408", "video_id": "3MSZA", "query": "a person opens the door", "split": "test",
     "duration": 30.96, "num_steps": 31, "ground_truth": [24.3, 30.4], "has_audio": true, "audio_importance": 0.41,
     "branches": {"fused":  {"span": [24.0, 30.96], "steps": [24, 30], "score": 0.31, "iou": 0.87,
                             "top": [{"span": [...], "steps": [...], "score": ..., "iou": ...}, ... 5]},
                  "visual": {...}, "audio": {...}}}

- times are seconds; `steps` the step indices (i, j) with span = [i·D/N, (j+1)·D/N] (§1.3), N = `num_steps`, the
  pooled length of the video's visual track; `score` = P_start(i)·P_end(j);
- `span` is the branch's prediction (the authors' decoding, used for R1 and mIoU); `top` the five most probable
  distinct spans, best first (used for R5; fewer when the video has under 3 steps);
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
from img_model.distributed import evaluation_batches, in_batch_order
from img_model.network.decoding import best_span, index_to_time, top_spans
from img_model.network.metrics import TOP_K, retrieval_metrics, temporal_iou
from img_model.network.model import IMG, IMGOutput
from img_model.runtime import SINGLE_PROCESS, RankContext, loader_workers
from manifests.records import QueryRecord

BRANCHES = {
    "fused": ("start_logits_av", "end_logits_av"),
    "visual": ("start_logits_v", "end_logits_v"),
    "audio": ("start_logits_a", "end_logits_a"),
}
IMPORTANCE_EDGES = (0.15, 0.25, 0.35, 0.45)  # the bins of the paper's Table 16
METRIC_NAMES = ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU", "R5@0.3", "R5@0.5", "R5@0.7")


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

    def as_json(self) -> dict[str, Any]:
        top = [
            {"span": [float(a), float(b)], "steps": [int(i), int(j)], "score": float(s), "iou": float(u)}
            for (i, j), (a, b), s, u in zip(self.top_steps, self.top_spans, self.top_scores, self.top_ious, strict=True)
            if i >= 0
        ]
        return {"span": list(self.span), "steps": list(self.steps), "score": self.score, "iou": self.iou, "top": top}


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

    def as_json(self) -> dict[str, Any]:
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
        }


def _branch_predictions(
    outputs: IMGOutput,
    name: str,
    lengths: np.ndarray,
    durations: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray],
    k: int = TOP_K,
) -> list[BranchPrediction]:
    start_logits, end_logits = (getattr(outputs, field_name).float() for field_name in BRANCHES[name])
    best = best_span(start_logits, end_logits)
    top = top_spans(start_logits, end_logits, k)
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
    ) -> None:
        self.device = device
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

    def predict(self, model: IMG, dataset: MomentDataset) -> list[QueryPrediction]:
        was_training = model.training
        model.eval()
        records = {record.qid: record for record in dataset.records}
        shared = self.rank.distributed and model.config.slot_noise != "always"
        batches: list[list[QueryPrediction]] = []
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(self.seed)
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
            name: _branch_predictions(outputs, name, lengths, durations, truth)
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
            )
            for row, qid in enumerate(batch.qids)
        ]


# --- metrics of a set of predictions ---------------------------------------------------------------------------


def branch_metrics(predictions: Sequence[QueryPrediction], with_top: bool = True) -> dict[str, dict[str, float]]:
    """Metrics (percent) of each branch over these predictions."""
    out = {}
    for name in BRANCHES:
        if predictions and name not in predictions[0].branches:  # the model has no such branch
            continue
        best = np.array([p.branches[name].iou for p in predictions])
        top = np.stack([p.branches[name].top_ious for p in predictions]) if with_top and predictions else None
        out[name] = retrieval_metrics(best, top)
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
        entry: dict[str, Any] = {"range": [low, high], "queries": len(members)}
        if members:
            entry["mean_importance"] = float(np.mean([p.audio_importance for p in members]))
            entry["branches"] = branch_metrics(members, with_top=False)
        bins.append(entry)
    return bins


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

    @classmethod
    def from_predictions(cls, split: str, predictions: Sequence[QueryPrediction], **context: Any) -> EvalReport:
        return cls(
            split=split,
            queries=len(predictions),
            branches=branch_metrics(predictions),
            importance_bins=importance_breakdown(predictions),
            mean_importance=mean_importance(predictions),
            context=dict(context),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "queries": self.queries,
            "branches": self.branches,
            "mean_audio_importance": self.mean_importance,
            "audio_importance_bins": self.importance_bins,
            **self.context,
        }

    def table(self) -> str:
        return metrics_table(self.branches, title=f"{self.split}: {self.queries} queries")


def metrics_table(branches: dict[str, dict[str, float]], title: str = "") -> str:
    names = [name for name in METRIC_NAMES if any(name in m for m in branches.values())]
    lines = [title] if title else []
    lines.append(f"{'branch':<8}" + "".join(f"{name:>8}" for name in names))
    for branch, metrics in branches.items():
        lines.append(f"{branch:<8}" + "".join(f"{metrics.get(name, float('nan')):8.2f}" for name in names))
    return "\n".join(lines)


# --- does a checkpoint fit these inputs? -----------------------------------------------------------------------


def check_inputs(checkpoint: Checkpoint, sources: DataSources) -> list[str]:
    """Refuse (CheckpointMismatchError, one line naming the difference) inputs made otherwise than the
    checkpoint's; return notes on what could not be checked."""
    config, notes = checkpoint.config, []
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
