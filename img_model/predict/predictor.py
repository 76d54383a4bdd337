"""A trained checkpoint answering typed queries on a video file (what img-predict and its demo page run).

    from img_model.predict.predictor import Predictor, PredictorOptions

    predictor = Predictor.from_checkpoint("runs/charades/best.pt", PredictorOptions(device="cpu"))
    video = predictor.predict("kitchen.mp4", ["a person opens the fridge", "someone laughs"])  # or one str
    for answer in video.answers:
        answer.start, answer.end, answer.score  # seconds, P_start(i) * P_end(j)
        answer.top  # the top-k distinct spans, best first
        answer.audio_importance  # the model's predicted p (None when no audio was used)
        answer.branches  # the best span of the fused, visual-only and audio-only branches, side by side
        answer.saliency  # the saliency head's raw score per step of the grid

    predictor.predict("kitchen.mp4", "a person opens the fridge", truths=[(3.0, 7.5)], drop_audio=True)
    # -> answer.iou per branch against the true span, answer.drop_audio: the fused span with the audio removed

Features are made from the file with the checkpoint's recorded recipes and cached (img_model/predict/feature_cache.py);
queries become the checkpoint's text inputs (img_model/predict/queries.py). Each answer is the fused branch's span,
decoded as img-eval decodes it (the argmax of P_start(i)·P_end(j), j >= i, img_spec.md §7.9), on the video's
uniform grid of N steps (a span (i, j) covers [i·D/N, (j+1)·D/N]). A video without audio is read with a zero
audio track as evaluation does (§7.17) and answered by the visual-only branch; the answer says so
(`audio_used` false, `branch` "visual", `note` why). Evaluation is deterministic: initial slots = mu.

Each answer also carries what a researcher checks on one video (docs/prediction.md, "Checking an answer"):
- `branches`: the best span of each branch from the same forward pass: "fused" (the answer's own branch: the
  visual one when no audio was used, as for a model without audio), "visual" (the visual-only head) and "audio"
  (the audio-only head; None when no audio was used or the model has no audio branch);
- `saliency`: the saliency head of the answer's branch (av_score, or v_score when no audio was used), one raw
  score per step: the hinge loss trains its ranking, so it has no probability scale (higher = more relevant);
- `truth` and `iou` per branch, when a true span is given (`truths`);
- `drop_audio` when asked: the fused branch's best span with the audio removed, exactly as img-eval's missing
  audio reads a query (a zero audio track, §7.17); None for a model without audio.

Each query runs in a batch of its own. The published model's outputs depend on the padding of its batch (the
character CNN sees the longest word of the batch, the query encoder the longest query), so a batch of several
queries would make an answer depend on which other queries were asked with it. Alone, a query gets exactly what
`img-eval --batch-size 1` computes for it on the same features at the same precision (tested). Both choose the
precision by one rule (extract/core/precision.py): the one asked for, else the checkpoint's run's (a run's fp16
answers in fp32 on a CPU); `VideoAnswers.precision` says which was used.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extract.core.errors import UsageError
from extract.core.precision import FP32, Precision
from img_model.checkpoint import Checkpoint, read_checkpoint
from img_model.data.alignment import align
from img_model.data.batch import Sample, collate
from img_model.evaluate.evaluator import BRANCHES, SALIENCY_SCORES, BranchPrediction, _branch_predictions
from img_model.network.model import IMG
from img_model.predict.feature_cache import FeatureCache, VideoFeatures, default_cache_dir, recorded_specs
from img_model.predict.queries import EncoderQueryReader, GloveQueryReader, QueryInput, query_reader, read_queries
from img_model.runtime import runtime_device

log = logging.getLogger(f"img_vmr.{__name__}")

DEFAULT_TOP_K = 5


@dataclass(frozen=True)
class Span:
    start: float  # seconds
    end: float
    score: float  # P_start(i) * P_end(j)

    def as_json(self) -> dict[str, float]:
        return {"start": self.start, "end": self.end, "score": self.score}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Span | None:
        return None if data is None else cls(data["start"], data["end"], data["score"])


Truth = tuple[float, float]  # a true span (start, end) in seconds
SPAN_BRANCHES = ("fused", "visual", "audio")


def check_truth(start: float, end: float, what: str = "the true span") -> Truth:
    """(start, end) as floats when both are finite and 0 <= start < end; else a one-line UsageError."""
    try:
        low, high = float(start), float(end)
    except (TypeError, ValueError):
        raise UsageError(f"{what}: start and end must be numbers of seconds, not {start!r} and {end!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low < high):
        raise UsageError(f"{what}: need finite seconds with 0 <= start < end, not {start!r} and {end!r}")
    return low, high


@dataclass(frozen=True)
class QueryAnswer:
    query: str
    start: float  # seconds
    end: float
    score: float
    top: tuple[Span, ...]  # the top-k distinct spans, best first (the first is [start, end])
    branch: str  # "fused", or "visual" when no audio was used
    audio_importance: float | None  # the predicted p; None when no audio was used or the model has none
    unknown_words: tuple[str, ...] = ()  # words read as <UNK>
    tokens_dropped: int = 0  # tokens past the first max_pos_len, not read (as img-eval reads a query)
    start_probabilities: tuple[float, ...] = ()  # P_start per step of the video's grid
    end_probabilities: tuple[float, ...] = ()
    branches: Mapping[str, Span | None] = dataclasses.field(default_factory=dict)  # fused / visual / audio best span
    saliency: tuple[float, ...] = ()  # the answer's branch's saliency head, raw score per step ((): none)
    truth: Truth | None = None  # the true span, when one was given
    iou: Mapping[str, float | None] | None = None  # per branch, against `truth` (None without truth)
    drop_audio: Span | None = None  # the fused span with the audio removed (when asked)

    def as_json(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "start": self.start,
            "end": self.end,
            "score": self.score,
            "branch": self.branch,
            "audio_importance": self.audio_importance,
            "unknown_words": list(self.unknown_words),
            "tokens_dropped": self.tokens_dropped,
            "top": [span.as_json() for span in self.top],
            "start_probabilities": list(self.start_probabilities),
            "end_probabilities": list(self.end_probabilities),
            "branches": {name: None if span is None else span.as_json() for name, span in self.branches.items()},
            "saliency": list(self.saliency),
            "truth": None if self.truth is None else {"start": self.truth[0], "end": self.truth[1]},
            "iou": None if self.iou is None else dict(self.iou),
            "drop_audio": None if self.drop_audio is None else self.drop_audio.as_json(),
        }

    @classmethod
    def from_json(cls, answer: Mapping[str, Any]) -> QueryAnswer:
        """An answer of `as_json()` back; the keys older answers lack take their defaults."""
        truth = answer.get("truth")
        return cls(
            query=answer["query"],
            start=answer["start"],
            end=answer["end"],
            score=answer["score"],
            top=tuple(Span(span["start"], span["end"], span["score"]) for span in answer["top"]),
            branch=answer["branch"],
            audio_importance=answer["audio_importance"],
            unknown_words=tuple(answer["unknown_words"]),
            tokens_dropped=answer.get("tokens_dropped", 0),
            start_probabilities=tuple(answer["start_probabilities"]),
            end_probabilities=tuple(answer["end_probabilities"]),
            branches={name: Span.from_json(span) for name, span in answer.get("branches", {}).items()},
            saliency=tuple(answer.get("saliency", ())),
            truth=None if truth is None else (truth["start"], truth["end"]),
            iou=answer.get("iou"),
            drop_audio=Span.from_json(answer.get("drop_audio")),
        )


@dataclass(frozen=True)
class VideoAnswers:
    video: str
    duration: float  # seconds
    num_steps: int  # N: step i covers [i·D/N, (i+1)·D/N)
    has_audio: bool  # the file has an audio stream
    audio_used: bool  # its audio features were read (else: the visual-only branch answered)
    note: str  # why the audio was not used ("" when it was)
    answers: tuple[QueryAnswer, ...]
    precision: str = "fp32"  # the IMG model's precision (autocast) for these answers
    glove: str | None = None  # the GloVe file extending the vocabulary (its name as given), if any
    added_words: tuple[str, ...] = ()  # words of these queries read from it: beyond the training vocabulary

    def step_times(self) -> np.ndarray:
        """[N + 1] boundaries of the steps in seconds."""
        return np.arange(self.num_steps + 1) * self.duration / self.num_steps

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VideoAnswers:
        """The answers of an `as_json()` object (img-predict --json's output) back as dataclasses (older answers,
        without the keys added since, load with their defaults)."""
        answers = tuple(QueryAnswer.from_json(answer) for answer in data["answers"])
        fields = ("video", "duration", "num_steps", "has_audio", "audio_used", "note", "precision")
        vocabulary = data.get("vocabulary") or {}
        return cls(
            **{name: data[name] for name in fields},
            answers=answers,
            glove=vocabulary.get("glove"),
            added_words=tuple(vocabulary.get("added_words", ())),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "video": self.video,
            "duration": self.duration,
            "num_steps": self.num_steps,
            "has_audio": self.has_audio,
            "audio_used": self.audio_used,
            "note": self.note,
            "precision": self.precision,
            "vocabulary": {"glove": self.glove, "added_words": list(self.added_words)},
            "answers": [answer.as_json() for answer in self.answers],
        }


@dataclass(frozen=True)
class PredictorOptions:
    """How Predictor.from_checkpoint loads a checkpoint (img-predict's options; their help says what each does).
    `precision` None: the checkpoint's run's (extract/core/precision.py)."""

    device: str = "auto"
    cache_dir: str | os.PathLike[str] | None = None  # None: $IMG_PREDICT_CACHE or ~/.cache/img-vmr/predict
    weights_dir: str | os.PathLike[str] | None = None
    clip_model: str | None = None
    text_model: str | None = None
    trust_weights: bool = False
    precision: str | None = None
    threads: int = 0
    top_k: int = DEFAULT_TOP_K
    visual: str | None = None  # converted checkpoints (no recorded recipe): the presets of their features
    audio: str | None = None
    progress: bool = False


class Predictor:
    """A checkpoint's model, its feature cache and its text inputs, ready to answer queries on video files.

    Not thread-safe: one predict() at a time (the demo server queues its requests)."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        features: FeatureCache,
        queries: GloveQueryReader | EncoderQueryReader,
        device: torch.device,
        precision: Precision = FP32,
        top_k: int = DEFAULT_TOP_K,
    ) -> None:
        self.checkpoint = checkpoint
        self.config = dataclasses.replace(checkpoint.config, slot_noise="never")  # deterministic: slots = mu
        self.model = IMG(self.config)
        from img_model.network.convert import load_into

        load_into(self.model, checkpoint.state_dict)
        self.model.to(device).eval()
        self.features = features
        self.queries = queries
        self.device = device
        self.precision = precision
        self.top_k = top_k
        run_data = (checkpoint.run or {}).get("data", {})
        self.align_rule = run_data.get("align", "img")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], options: PredictorOptions | None = None) -> Predictor:
        """Load a checkpoint (RUN/best.pt, or a converted one with `options.visual` / `options.audio` presets
        named) and its text model; the extraction models load on the first video that is not in the cache yet."""
        options = options or PredictorOptions()
        checkpoint = read_checkpoint(path)
        specs = recorded_specs(checkpoint, options.visual, options.audio)
        device = runtime_device(options.device, options.threads)
        recorded = (checkpoint.run or {}).get("runtime", {}).get("precision")
        precision = Precision.resolve(options.precision, device, recorded)
        weights = Path(options.weights_dir) if options.weights_dir is not None else None
        cache_dir = Path(options.cache_dir) if options.cache_dir is not None else default_cache_dir()
        cache = FeatureCache(
            specs, cache_dir, device, weights, options.clip_model, options.trust_weights, options.progress
        )
        queries = query_reader(checkpoint, device, weights, options.text_model, options.trust_weights)
        return cls(checkpoint, cache, queries, device, precision, options.top_k)

    def read_queries(self, queries: Sequence[str]) -> list[QueryInput]:
        """The text inputs of these queries; an empty query or one without a known word is a QueryError. A query
        longer than max_pos_len tokens is read up to there, as img-eval reads it (a warning says so)."""
        inputs = read_queries(self.queries, queries)
        for query in inputs:
            if query.tokens_dropped:
                log.warning(
                    "%r: the model reads its first %d tokens (max_pos_len), as img-eval does; the last %d are not read",
                    query.text,
                    self.config.max_pos_len,
                    query.tokens_dropped,
                )
            if query.unknown_words:
                log.warning(
                    "%r: %s not in the checkpoint's vocabulary, read as <UNK> (the UNK vector)",
                    query.text,
                    ", ".join(query.unknown_words),
                )
        return inputs

    def predict(
        self,
        video: str | os.PathLike[str],
        queries: str | Sequence[str],
        top_k: int | None = None,
        truths: Sequence[Truth | None] | None = None,
        drop_audio: bool = False,
    ) -> VideoAnswers:
        """Answer every query (or the one query a str is) on one video file. `truths`: a true span (start, end) in
        seconds per query, or None for a query without one (check_truth says what is accepted); `drop_audio`: also
        the fused answer with the audio removed."""
        texts = [queries] if isinstance(queries, str) else list(queries)
        checked = _checked_truths(truths, len(texts))
        inputs = self.read_queries(texts)  # before the extraction
        features = self.features.features(video)
        return self.answer(features, inputs, top_k or self.top_k, checked, drop_audio)

    @torch.inference_mode()
    def answer(
        self,
        features: VideoFeatures,
        inputs: Sequence[QueryInput],
        top_k: int,
        truths: Sequence[Truth | None] | None = None,
        drop_audio: bool = False,
    ) -> VideoAnswers:
        """The model's answers for already read features and queries."""
        truths = _checked_truths(truths, len(inputs))
        aligned = align(features.visual, features.audio, self.config.max_pos_len, self.align_rule)
        audio_used = aligned.audio is not None
        silence = np.zeros((len(aligned.visual), self.config.audio_feature_dim), np.float32)
        audio = aligned.audio if audio_used else silence
        branch = "fused" if audio_used else "visual"
        answers: list[QueryAnswer] = []
        for query, truth in zip(inputs, truths, strict=True):  # one query per forward: see the module's docstring
            outputs, batch = self._forward(aligned.visual, audio, audio_used, features.duration, query)
            without = None
            if drop_audio and self.config.audio:  # img-eval's missing audio: a zero track, has_audio false
                silent = (outputs, batch) if not audio_used else None
                silent = silent or self._forward(aligned.visual, silence, False, features.duration, query)
                without = _best(_decode(silent[0], "fused", silent[1], top_k, truth))
            answers.append(_answer(outputs, branch, query, batch, top_k, audio_used, truth, without))
        note = features.audio_note or ("" if audio_used else "no audio features")
        if not audio_used:
            log.info("%s: %s; answered by the visual-only branch", features.path, note)
        return VideoAnswers(
            video=str(features.path),
            duration=features.duration,
            num_steps=len(aligned.visual),
            has_audio=features.has_audio,
            audio_used=audio_used,
            note=note,
            answers=tuple(answers),
            precision=self.precision.name,
        )

    def _forward(
        self, visual: np.ndarray, audio: np.ndarray, has_audio: bool, duration: float, query: QueryInput
    ) -> tuple[Any, Any]:
        batch = collate([_sample(visual, audio, has_audio, duration, query)]).to(self.device)
        with self.precision.autocast(self.device):
            outputs = self.model(**batch.model_inputs(), p_warm=1.0)
        return outputs, batch


def _checked_truths(truths: Sequence[Truth | None] | None, count: int) -> list[Truth | None]:
    if truths is None:
        return [None] * count
    if len(truths) != count:
        raise UsageError(f"{len(truths)} true spans for {count} queries: give one per query (None for none)")
    return [None if truth is None else check_truth(*truth) for truth in truths]


def _sample(visual: np.ndarray, audio: np.ndarray, has_audio: bool, duration: float, query: QueryInput) -> Sample:
    """A query on this video as the model reads it; there is no ground truth, so the label fields are 0."""
    return Sample(
        qid=query.text,
        video=visual,
        audio=audio,
        has_audio=has_audio,
        start_index=0,
        end_index=0,
        start_time=0.0,
        end_time=0.0,
        duration=duration,
        word_ids=query.word_ids,
        char_ids=query.char_ids,
        query_features=query.features,
    )


def _decode(outputs: Any, branch: str, batch: Any, top_k: int, truth: Truth | None) -> BranchPrediction:
    """One branch's prediction of a batch of one query, decoded by img-eval's own code (_branch_predictions)."""
    spans = (np.array([truth[0]]), np.array([truth[1]])) if truth else (np.zeros(1), np.zeros(1))
    lengths, durations = batch.lengths.cpu().numpy(), batch.duration.cpu().numpy()
    return _branch_predictions(outputs, branch, lengths, durations, spans, top_k)[0]


def _best(predicted: BranchPrediction) -> Span:
    return Span(float(predicted.span[0]), float(predicted.span[1]), float(predicted.score))


def _answer(
    outputs: Any,
    branch: str,
    query: QueryInput,
    batch: Any,
    top_k: int,
    audio_used: bool,
    truth: Truth | None = None,
    drop_audio: Span | None = None,
) -> QueryAnswer:
    """The answer of a batch of one query: `branch` is the answer; the other branches' best spans beside it."""
    predicted = _decode(outputs, branch, batch, top_k, truth)
    found = predicted.top_steps[:, 0] >= 0
    top = tuple(
        Span(float(start), float(end), float(score))
        for (start, end), score in zip(predicted.top_spans[found], predicted.top_scores[found], strict=True)
    )
    side = {
        "fused": predicted,
        "visual": predicted if branch == "visual" else _decode(outputs, "visual", batch, 1, truth),
    }
    if audio_used and outputs.start_logits_a is not None:
        side["audio"] = _decode(outputs, "audio", batch, 1, truth)
    branches = {name: _best(side[name]) if name in side else None for name in SPAN_BRANCHES}
    iou = None if truth is None else {name: float(side[name].iou) if name in side else None for name in SPAN_BRANCHES}
    start_logits, end_logits = (getattr(outputs, name)[0].float() for name in BRANCHES[branch])
    saliency = getattr(outputs, SALIENCY_SCORES[branch])[0].float().cpu().numpy()[: int(batch.lengths[0])]
    return QueryAnswer(
        query=query.text,
        start=predicted.span[0],
        end=predicted.span[1],
        score=predicted.score,
        top=top,
        branch=branch,
        audio_importance=float(outputs.aip_prob[0].float()) if audio_used and outputs.aip_prob is not None else None,
        unknown_words=query.unknown_words,
        tokens_dropped=query.tokens_dropped,
        start_probabilities=tuple(torch.softmax(start_logits, dim=0).tolist()),
        end_probabilities=tuple(torch.softmax(end_logits, dim=0).tolist()),
        branches=branches,
        saliency=tuple(float(str(value)) for value in saliency),  # float32's shortest decimal, as img-eval writes it
        truth=truth,
        iou=iou,
        drop_audio=drop_audio,
    )
