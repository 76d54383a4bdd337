"""Training IMG (img_spec.md §4): the authors' objective and schedule, with exact resume and honest selection.

One step: forward with p_warm = ExpUp(10)(epoch), the full objective with the distillation warm-up
ExpUp(20)(epoch) (§4.5), backward, gradient clipping at 1.0, AdamW with the authors' two weight-decay groups,
linear decay of the learning rate per step (§4.6). Evaluation on the selection split at steps kN + N//2 and
(k+1)N (§4.7, `evals_per_epoch`); the fused R1@0.7 selects `best.pt` (ties count as better, as the authors
do). The selection split is a validation split carved from the training videos (default) or the test split
(`select_on = "test"`, the paper's protocol, recorded in every report); a custom JSONL's own `val` split is
used when it has one. The checkpoints record a fingerprint of the data (`data_fingerprint`): --resume refuses
data that changed.

A run folder holds:

    config.toml      the resolved configuration (`img-train --config RUN/config.toml` repeats the run)
    best.pt          the selected checkpoint; last.pt the latest (every evaluation point): img_model/checkpoint.py
    metrics.jsonl    one JSON object per evaluation ("kind": "eval") and one at the end ("kind": "final")
    tensorboard/     scalars: every loss term, the learning rate, the warm-up factors (every log_every-th step,
                     and their epoch means), the branches' metrics (every evaluation)
    train.log        the log, with tracebacks

Exact resume: the batch order of epoch e is a permutation seeded by (seed, e), the saliency draw by (seed, e,
query), the DataLoader's own generator is re-seeded per epoch, and last.pt holds every global RNG state, so a
run resumed from any evaluation point continues bit for bit. A NaN or infinite loss, model output or gradient
norm stops the run with the step and the batch's query ids; checkpoints are only written from finite weights.

Distributed training (`torchrun`, img_model/distributed.py) is the same run at the same global batch size: each
process takes its share of every batch (`EpochBatches`), computes its share of the loss, and evaluates its share
of the batches; rank 0 alone writes (`RankContext.is_main`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from extract.errors import OutputWriteError, cannot_write
from extract.store import save_atomically
from img_model.checkpoint import (
    Checkpoint,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from img_model.config import exp_up
from img_model.dataset import HELD_OUT_SPLIT, OWN_VALIDATION_SPLIT, Batch, DataSources, MomentDataset, collate
from img_model.distributed import BatchShare, batch_share, data_parallel, process_device
from img_model.errors import CheckpointMismatchError, DataError, TrainingDivergedError, listed
from img_model.evaluator import EvalReport, Evaluator, metrics_table
from img_model.losses import BatchScope, IMGLoss, img_loss
from img_model.model import IMG, batch_rows
from img_model.optim import linear_decay, make_optimizer
from img_model.provenance import differences
from img_model.run_log import metrics_lines
from img_model.runtime import SINGLE_PROCESS, RankContext, autocast, loader_workers, resolve_device
from img_model.train_config import RunConfig, as_dict, from_dict, to_toml

log = logging.getLogger("img_vmr.train")

SELECTION_BRANCH, SELECTION_METRIC = "fused", "R1@0.7"
BATCH_QIDS_LISTED = 16  # a batch of the paper's size is named whole when training stops on it


# --- data of a run ---------------------------------------------------------------------------------------------


@dataclass
class RunData:
    """The datasets of a run: training, selection (val or test) and the test split for the final report."""

    sources: DataSources
    train: MomentDataset
    select: MomentDataset
    test: MomentDataset | None  # None when selecting on test (it is `select`) or when there is no test split


def model_inputs(sources: DataSources) -> dict[str, Any]:
    """The IMGConfig fields the data decides: feature sizes and the query embedding's vocabulary sizes."""
    fields: dict[str, Any] = {"video_feature_dim": sources.video_dim, "audio_feature_dim": sources.audio_dim}
    texts = sources.texts
    if texts.precomputed:
        return fields | {"query_features": "precomputed", "text_feature_dim": texts.feature_dim}
    assert texts.vocabulary is not None
    vectors = texts.vocabulary.vectors
    return fields | {
        "query_features": "glove_char",
        "glove_words": vectors.shape[0],
        "word_dim": vectors.shape[1],
        "char_vocab_size": len(texts.vocabulary.chars),
    }


def prepare_data(run: RunConfig, sources: DataSources) -> RunData:
    """Splits: train, the selection split and test. Selecting on validation data (the default), the selection
    split is a custom JSONL's own `val` split, else `train-val`: a share of the training videos that have features
    and text, seeded by val_seed (not the training seed: every seed selects on the same videos), removed from train.
    With select_on = test, train is the whole train split. Training queries of videos without audio follow
    data.missing_audio."""
    splits = sources.splits()
    if "train" not in splits:
        raise DataError(f"{run.data.dataset} has no train split (it has: {', '.join(sorted(splits))})")
    max_pos_len, seed = run.model.max_pos_len, run.train.seed
    test_records = splits.get("test")
    if run.train.select_on == "test":
        if not test_records:
            raise DataError(f"--select-on test: {run.data.dataset} has no test split")
        train = sources.dataset(splits["train"], "train", "train", max_pos_len, seed)
        select = sources.dataset(test_records, "test", "eval", max_pos_len)
        return RunData(sources, train, select, None)
    name, train_records, val_records = sources.validation(splits, run.train.val_fraction, run.train.val_seed)
    if name == OWN_VALIDATION_SPLIT:
        log.info("selecting on the dataset's own %s split; --val-fraction and --val-seed do not apply", name)
    train = sources.dataset(train_records, "train", "train", max_pos_len, seed)
    select = sources.dataset(val_records, name, "eval", max_pos_len)
    test = sources.dataset(test_records, "test", "eval", max_pos_len) if test_records else None
    return RunData(sources, train, select, test)


def data_fingerprint(data: RunData, steps_per_epoch: int) -> dict[str, Any]:
    """What a checkpoint records about the data it trained on; --resume refuses data that differs."""
    return {
        "train_queries": len(data.train),
        "train_qids_sha256": data.train.qids_sha256(),
        "select_split": data.select.split,
        "select_queries": len(data.select),
        "select_qids_sha256": data.select.qids_sha256(),
        "steps_per_epoch": steps_per_epoch,
    }


def fingerprint_changes(recorded: dict[str, Any], current: dict[str, Any]) -> str:
    """The fields of two data fingerprints that differ, in one line ('' when none do); hashes shortened."""

    def shown(fingerprint: dict[str, Any]) -> dict[str, Any]:
        return {key.replace("_", " "): value[:12] if key.endswith("sha256") else value
                for key, value in fingerprint.items()}  # fmt: skip

    return differences(shown(recorded), shown(current), limit=len(current))


def finished_summary(run_dir: Path, step: int) -> str | None:
    """The summary of a run whose last.pt (at `step`) it finished: metrics.jsonl holds a final line at that step.
    None when the run is not finished."""
    entries = [entry for _, entry in metrics_lines(run_dir / "metrics.jsonl")]
    if not any(entry.get("kind") == "final" and entry.get("step") == step for entry in entries):
        return None
    summary = run_dir / "summary.txt"
    return summary.read_text(encoding="utf-8").rstrip("\n") if summary.exists() else ""


# --- batch order -----------------------------------------------------------------------------------------------


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index) keys: epoch e's order is a permutation seeded by (seed, e), so any epoch can be
    replayed, and started from any batch (`skip`), without a saved sampler state. The last batch may be short
    (the authors' loader keeps it). In a distributed run every process walks the same batches and yields its
    share of each (`share`)."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: RankContext = SINGLE_PROCESS) -> None:
        self.size, self.batch_size, self.seed, self.rank = size, batch_size, seed, rank
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def batches_per_epoch(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def share(self, number: int) -> BatchShare:
        """This process's rows of batch `number` (0-based) of an epoch."""
        return batch_share(min(self.batch_size, self.size - number * self.batch_size), self.rank)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        for number in range(self.skip, self.batches_per_epoch()):
            first = number * self.batch_size
            yield self.share(number).take([(self.epoch, int(i)) for i in order[first : first + self.batch_size]])

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.skip


def evaluation_steps(batches_per_epoch: int, evals_per_epoch: int) -> list[int]:
    """Steps within an epoch (1-based) after which to evaluate: N//2 and N for two per epoch (§4.7)."""
    n = batches_per_epoch
    return sorted({n * k // evals_per_epoch for k in range(1, evals_per_epoch + 1)} - {0})


# --- the training loop ---------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    step: int
    best_step: int
    best_score: float
    finished: bool  # False when stopped early on purpose (stop_after)
    final: dict[str, Any] = field(default_factory=dict)


LOSS_SCALARS = {
    "loss/location_fused": "location_fused", "loss/location_visual": "location_visual",
    "loss/location_audio": "location_audio", "loss/saliency_fused": "saliency_fused",
    "loss/saliency_visual": "saliency_visual", "loss/saliency_audio": "saliency_audio",
    "loss/distill_audio": "distill_audio", "loss/distill_visual": "distill_visual", "loss/importance": "pl_loss",
    "terms/location": "term_loc", "terms/saliency": "term_sal", "terms/distill": "term_kd",
    "terms/importance": "term_pl",
}  # fmt: skip


def loss_scalars(loss: IMGLoss, scope: BatchScope) -> dict[str, torch.Tensor]:
    """Every loss term of §4.5 as it enters the total, per step (this process's share of the batch's value)."""
    terms = {name: getattr(loss, field) for name, field in LOSS_SCALARS.items()}
    return {"loss/total": loss.total_loss, **terms, "loss/kept_fraction": scope.mean(loss.keep.float())}


class Trainer:
    """Trains one run into `run_dir`; `resume` is the run's last.pt when continuing it."""

    def __init__(
        self,
        run: RunConfig,
        data: RunData,
        run_dir: Path,
        resume: Checkpoint | None = None,
        rank: RankContext = SINGLE_PROCESS,
        batches: EpochBatches | None = None,
    ) -> None:
        self.run, self.data, self.run_dir, self.rank = run, data, Path(run_dir), rank
        runtime, train = run.runtime, run.train
        self.device = resolve_device(process_device(runtime.device, rank), runtime.precision, runtime.threads)
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        seed_everything(train.seed)
        self.model = IMG(run.model)
        vocabulary = data.sources.texts.vocabulary
        if vocabulary is not None:
            with torch.no_grad():
                for branch in (self.model.video_branch, self.model.audio_branch):
                    branch.query_embedding.words.glove_vectors.copy_(torch.from_numpy(vocabulary.vectors))
        self.model.to(self.device)
        self.batches = batches or EpochBatches(len(data.train), train.batch_size, train.seed, rank)
        self.steps_per_epoch = self.batches.batches_per_epoch()
        self.total_steps = train.epochs * self.steps_per_epoch
        self.eval_steps = evaluation_steps(self.steps_per_epoch, train.evals_per_epoch)
        self.data_fingerprint = data_fingerprint(data, self.steps_per_epoch)
        self.optimizer = make_optimizer(self.model, train.learning_rate, train.weight_decay)
        self.scheduler = linear_decay(self.optimizer, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=runtime.precision == "fp16")
        self.loader_generator = torch.Generator()
        self.step, self.epoch, self.epoch_step = 0, 0, 0
        self.epoch_totals: dict[str, list[float]] = {}  # scalar name -> [sum, count] over this epoch's steps
        self.best_score, self.best_step = -math.inf, -1
        self.last_checkpoint: tuple[Path, int] | None = None
        if resume is not None:
            self._restore(resume)
        self.eval_model = torch.compile(self.model, dynamic=True) if runtime.compile else self.model
        self.forward_model = data_parallel(self.eval_model, rank, self.device)
        self.evaluator = Evaluator(
            self.device, runtime.precision, train.eval_batch_size, runtime.workers, train.seed, rank
        )
        self.loader = DataLoader(
            data.train,
            batch_sampler=self.batches,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            generator=self.loader_generator,
            **loader_workers(runtime.workers, self.steps_per_epoch, "training"),
        )
        self.writer: Any = None

    # --- state ---------------------------------------------------------------------------------------------

    def _restore(self, checkpoint: Checkpoint) -> None:
        training = checkpoint.training
        if training is None:
            raise DataError("the checkpoint holds no training state (converted or best-only); cannot resume it")
        if "data" not in training:
            log.warning("last.pt records no data fingerprint (an older img-train): the data cannot be checked")
        elif detail := fingerprint_changes(training["data"], self.data_fingerprint):
            raise CheckpointMismatchError(
                f"the training data changed since the run started ({detail}); resume with the stores and "
                "annotations it started with, or start a new run with --out"
            )
        self.model.load_state_dict(checkpoint.state_dict)
        self.optimizer.load_state_dict(training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        self.scaler.load_state_dict(training["scaler"])
        self.step, self.epoch, self.epoch_step = training["step"], training["epoch"], training["epoch_step"]
        self.epoch_totals = {name: list(total) for name, total in training.get("epoch_totals", {}).items()}
        if self.epoch_step >= self.steps_per_epoch:  # saved at the end of an epoch: start the next one
            self.epoch, self.epoch_step, self.epoch_totals = self.epoch + 1, 0, {}
        self.best_score, self.best_step = training["best_score"], training["best_step"]
        set_rng_state(training["rng"], self.device)
        self.last_checkpoint = (self.run_dir / "last.pt", self.step)
        log.info("resuming at epoch %d, step %d (best %s %.2f at step %d)", self.epoch + 1, self.step,
                 SELECTION_METRIC, self.best_score, self.best_step)  # fmt: skip

    def _checkpoint(self, metrics: dict[str, Any] | None) -> Checkpoint:
        texts = self.data.sources.texts
        return Checkpoint(
            config=self.model.config,
            state_dict={k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            source="img-train",
            vocabulary=texts.vocabulary.as_checkpoint() if texts.vocabulary is not None else None,
            provenance=self.data.sources.provenance(),
            run=as_dict(self.run),
            training={
                "epoch": self.epoch,
                "epoch_step": self.epoch_step,
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_state(self.device),
                "best_score": self.best_score,
                "best_step": self.best_step,
                "data": self.data_fingerprint,
                "epoch_totals": {name: list(total) for name, total in self.epoch_totals.items()},
            },
            metrics=metrics,
        )

    # --- the loop ------------------------------------------------------------------------------------------

    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train to the configured number of epochs, or until `stop_after` more epochs are complete (counted from
        the epoch this call starts in: a preemption on purpose; --resume continues). A run that is finished
        already is left as it is."""
        train = self.run.train
        if self.epoch >= train.epochs and (summary := finished_summary(self.run_dir, self.step)) is not None:
            log.info("%s is already finished (%d epochs, %d steps); nothing to do", self.run_dir, self.epoch,
                     self.step)  # fmt: skip
            return self._result(finished=True, final={"summary": summary})
        stop_at = train.epochs if stop_after is None else min(train.epochs, self.epoch + stop_after)
        if self.rank.is_main:
            self._open_outputs()
        try:
            while self.epoch < train.epochs:
                if self.epoch >= stop_at:
                    log.info("stopped after epoch %d as asked; continue with --resume %s", self.epoch, self.run_dir)
                    self._close_outputs()
                    return self._result(finished=False)
                self._train_epoch()
            final = self._final_report()
            self._close_outputs()
            return self._result(finished=True, final=final)
        finally:
            if self.writer is not None:  # stopped by an error: it is the error the user sees
                with contextlib.suppress(OSError):
                    self.writer.close()

    @contextlib.contextmanager
    def _writing(self, what: str | Path) -> Iterator[None]:
        """An OSError within the block (a full disk) is one OutputWriteError line: what could not be written, and
        the checkpoint that holds the run so far (every file is written so that the previous one stays whole)."""
        try:
            yield
        except OSError as error:
            failure = cannot_write(str(what), self.run_dir, error)
            raise OutputWriteError(f"{failure}; {self._kept()}", failure.make_room) from None

    def _close_outputs(self) -> None:
        if self.writer is not None:
            with self._writing(self.run_dir / "tensorboard"):
                self.writer.close()
            self.writer = None

    def _add_scalars(self, scalars: dict[str, float], step: int, prefix: str = "") -> None:
        with self._writing(self.run_dir / "tensorboard"):
            for name, value in scalars.items():
                self.writer.add_scalar(f"{prefix}{name}", value, step)

    def _open_outputs(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        for stale in self.run_dir.glob(".*.tmp"):  # a write a kill interrupted (never renamed)
            log.info("removing %s, a write that was interrupted", stale.name)
            stale.unlink(missing_ok=True)
        config = to_toml(self.run, header=f"img-train run {self.run_dir.name}: the resolved configuration")
        with self._writing(self.run_dir / "config.toml"):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_atomically(self.run_dir / "config.toml", memoryview(config.encode()), self._tmp("config.toml"))
        self._truncate_metrics()
        # scalars logged after the checkpoint's step are dropped (they will be logged again); the step's own stay
        with self._writing(self.run_dir / "tensorboard"):
            self.writer = SummaryWriter(
                str(self.run_dir / "tensorboard"), purge_step=self.step + 1 if self.step else None
            )

    def _tmp(self, name: str) -> Path:
        """Where a file of the run folder is written before it is renamed into place."""
        return self.run_dir / f".{name}.{os.getpid()}.tmp"

    def _truncate_metrics(self) -> None:
        """On resume, forget evaluations logged after the checkpoint (they will be repeated identically)."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        kept = [line for line, entry in metrics_lines(path) if entry.get("step", 0) <= self.step]
        with self._writing(path):  # all of it or none: a full disk keeps the file as it was
            save_atomically(path, memoryview("".join(line + "\n" for line in kept).encode()), self._tmp(path.name))

    def _train_epoch(self) -> None:
        epoch, train = self.epoch, self.run.train
        objective = self.run.objective
        p_warm = exp_up(epoch, objective.importance_warmup_epochs)
        kd_warm = exp_up(epoch, objective.distill_warmup_epochs)
        self.batches.set_epoch(epoch, skip=self.epoch_step)
        self.loader_generator.manual_seed(train.seed * 1_000_003 + epoch)
        self.model.train()
        progress = tqdm(
            self.loader,
            total=len(self.batches),
            initial=0,
            desc=f"epoch {epoch + 1}/{train.epochs}",
            unit="batch",
            disable=not (self.run.runtime.progress and self.rank.is_main),
            leave=False,
            dynamic_ncols=True,
        )
        for batch in progress:
            self._train_step(batch, self.batches.share(self.epoch_step), p_warm, kd_warm)
            progress.set_postfix(loss=f"{self._epoch_means()['loss/total']:.3f}")
            if self.epoch_step in self.eval_steps:
                self._evaluate_and_save()
        progress.close()
        log.info("epoch %d/%d: mean loss %.4f over %d steps", epoch + 1, train.epochs,
                 self._epoch_means()["loss/total"], self.steps_per_epoch)  # fmt: skip
        self.epoch += 1
        self.epoch_totals = {}
        self.epoch_step = 0

    def _train_step(self, batch: Batch, share: BatchShare, p_warm: float, kd_warm: float) -> dict[str, float]:
        batch = batch.to(self.device)
        if self.rank.distributed:  # pad as the whole batch is padded
            sizes = self.rank.max(torch.tensor(batch.padded_sizes(), device=self.device))
            batch = batch.padded_to(*sizes.tolist())
        with autocast(self.device, self.run.runtime.precision), batch_rows(share.rows):
            outputs = self.forward_model(**batch.model_inputs(), p_warm=p_warm)
        # Non-finite outputs would make the importance BCE fail (or assert on a GPU): check them first.
        output_sums = torch.stack([output.detach().float().sum() for output in outputs])
        if self.rank.sum((~torch.isfinite(output_sums)).any().float()).item():
            self._diverged("the model's outputs are not finite", batch.qids, share)
        scope = BatchScope(share.total, share.weight, self.rank.sum)
        loss = img_loss(outputs, batch.labels(), self.run.objective, kd_warm, scope)
        names, values = zip(*loss_scalars(loss, scope).items(), strict=True)
        numbers = self.rank.sum(torch.stack([v.detach().float() for v in values])).tolist()
        scalars = dict(zip(names, numbers, strict=True))
        if not math.isfinite(scalars["loss/total"]):
            self._diverged(f"loss is {scalars['loss/total']}", batch.qids, share)
        self.optimizer.zero_grad(set_to_none=True)
        # DistributedDataParallel averages the processes' gradients; the batch's is the sum of their shares'
        self.scaler.scale(loss.total_loss * self.rank.world_size).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.run.train.clip_norm))
        # Clipping turns an infinite gradient into NaN ones. fp16's gradient scaler skips such a step (and lowers
        # its scale); otherwise the run stops before the step. The gradients are DDP's all-reduced ones: every
        # process decides alike.
        if not self.scaler.is_enabled() and not math.isfinite(grad_norm):
            self._diverged(f"the gradient norm is {grad_norm}", batch.qids, share)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.step += 1
        self.epoch_step += 1
        scalars |= {"train/lr": lr, "train/grad_norm": grad_norm, "warmup/importance": p_warm,
                    "warmup/distill": kd_warm}  # fmt: skip
        for name, value in scalars.items():
            if math.isfinite(value):  # fp16: the scaler's skipped steps have an infinite gradient norm
                total = self.epoch_totals.setdefault(name, [0.0, 0])
                total[0], total[1] = total[0] + value, total[1] + 1
        if self.writer is not None:
            if self.step % self.run.runtime.log_every == 0:
                self._add_scalars(scalars, self.step)
            if self.epoch_step == self.steps_per_epoch:  # before the epoch's last checkpoint: a resume keeps them
                self._add_scalars(self._epoch_means(), self.step, "epoch_mean/")
        return scalars

    def _epoch_means(self) -> dict[str, float]:
        """The mean of each per-step scalar over this epoch's steps so far (resumes included)."""
        return {name: total / count for name, (total, count) in self.epoch_totals.items()}

    def _diverged(self, what: str, qids: list[str], share: BatchShare) -> None:
        qids = [qid for part in self.rank.gather(qids if share.count else []) for qid in part]  # the whole batch's
        raise TrainingDivergedError(
            f"{what} at step {self.step + 1} (epoch {self.epoch + 1}); batch queries: "
            f"{listed(qids, BATCH_QIDS_LISTED)}; {self._kept()}"
        )

    def _kept(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written yet"
        return f"last good checkpoint: {self.last_checkpoint[0]} (step {self.last_checkpoint[1]})"

    def _evaluate(self, dataset: MomentDataset, model: IMG | None = None) -> EvalReport:
        predictions = self.evaluator.predict(model or self.eval_model, dataset)
        return EvalReport.from_predictions(dataset.split, predictions, select_on=self.run.train.select_on)

    def _evaluate_and_save(self) -> None:
        names, parameters = zip(*self.model.named_parameters(), strict=True)
        finite = torch.stack([parameter.detach().isfinite().all() for parameter in parameters]).tolist()
        bad = [name for name, ok in zip(names, finite, strict=True) if not ok]
        if bad:  # never saved: the last checkpoint stays the last good one
            raise TrainingDivergedError(
                f"the weights are not finite after step {self.step} (epoch {self.epoch + 1}): {listed(bad)}; "
                f"{self._kept()}"
            )
        started = time.perf_counter()
        report = self._evaluate(self.data.select)
        score = report.branches[SELECTION_BRANCH][SELECTION_METRIC]
        improved = score >= self.best_score  # ties count as better, as the authors' code does (§4.7)
        if improved:
            self.best_score, self.best_step = score, self.step
        if not self.rank.is_main:
            return
        metrics = {"split": report.split, "branches": report.branches, "mean_audio_importance": report.mean_importance}
        # The logs first, then the checkpoints: a kill at any moment leaves logs up to the step of last.pt at least
        # (what a resume keeps), never a last.pt whose evaluation or scalars were lost; later lines are dropped.
        self._log_metrics(
            {
                "kind": "eval",
                "epoch": self.epoch + 1,
                "step": self.step,
                "select_on": self.run.train.select_on,
                "best": improved,
                **metrics,
            }
        )
        for branch, values in report.branches.items():
            self._add_scalars(values, self.step, f"{report.split}/{branch}/")
        self._add_scalars({"mean_audio_importance": report.mean_importance}, self.step, f"{report.split}/")
        with self._writing(self.run_dir / "tensorboard"):
            self.writer.flush()  # every scalar up to this step is in the event file before last.pt says so
        checkpoint = self._checkpoint(metrics)
        for name in ("best.pt", "last.pt") if improved else ("last.pt",):
            with self._writing(self.run_dir / name):
                save_checkpoint(checkpoint, self.run_dir / name)
        self.last_checkpoint = (self.run_dir / "last.pt", self.step)
        log.info("step %d: %s fused %s %.2f%s (%.1f s)", self.step, report.split, SELECTION_METRIC, score,
                 " (best)" if improved else "", time.perf_counter() - started)  # fmt: skip

    def _log_metrics(self, entry: dict[str, Any]) -> None:
        """One line appended to metrics.jsonl, whole or not at all (a full disk leaves no torn line)."""
        path = self.run_dir / "metrics.jsonl"
        with self._writing(path):
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                try:
                    line = memoryview((json.dumps(entry) + "\n").encode())
                    while line:
                        line = line[os.write(fd, line) :]
                except OSError:
                    os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)

    def _final_report(self) -> dict[str, Any]:
        """Evaluate best.pt on the selection split's record and on test; print the summary table."""
        self.rank.barrier()  # rank 0 has written best.pt
        best = read_checkpoint(self.run_dir / "best.pt")
        assert best.metrics is not None
        final: dict[str, Any] = {
            "kind": "final",
            "step": self.step,
            "best_step": self.best_step,
            "select_on": self.run.train.select_on,
            best.metrics["split"]: best.metrics,
        }
        tables = [
            metrics_table(best.metrics["branches"], f"{best.metrics['split']} (best checkpoint, step {self.best_step})")
        ]
        if self.data.test is not None:
            model = best.model().to(self.device)
            compiled = torch.compile(model, dynamic=True) if self.run.runtime.compile else model
            report = self._evaluate(self.data.test, compiled)
            final["test"] = {
                "split": "test",
                "branches": report.branches,
                "mean_audio_importance": report.mean_importance,
            }
            tables.append(metrics_table(report.branches, f"test (best checkpoint, step {self.best_step})"))
        if not self.rank.is_main:
            return {}
        selected = {
            "test": "the test split (the paper's protocol, §7.15)",
            HELD_OUT_SPLIT: f"{HELD_OUT_SPLIT} (held-out training videos)",
            OWN_VALIDATION_SPLIT: f"{OWN_VALIDATION_SPLIT} (the dataset's own validation split)",
        }[self.data.select.split]
        header = (f"run {self.run_dir}: {self.epoch} epochs, {self.step} steps; selected on {selected} by fused "
                  f"{SELECTION_METRIC} = {self.best_score:.2f} at step {self.best_step}")  # fmt: skip
        summary = "\n\n".join([header, *tables])
        with self._writing(self.run_dir / "summary.txt"):
            save_atomically(
                self.run_dir / "summary.txt", memoryview((summary + "\n").encode()), self._tmp("summary.txt")
            )
        self._log_metrics(final)  # last: the final line marks the run finished (finished_summary)
        return final | {"summary": summary}

    def _result(self, finished: bool, final: dict[str, Any] | None = None) -> TrainResult:
        return TrainResult(self.run_dir, self.epoch, self.step, self.best_step, self.best_score, finished, final or {})


def restored_run(
    checkpoint: Checkpoint, runtime_overrides: dict[str, Any], data_overrides: dict[str, Any] | None = None
) -> RunConfig:
    """The run config a last.pt was trained with, with new runtime settings (device, workers, ...) and data
    locations (moved stores, `RESUMABLE_DATA_FLAGS` of the CLI)."""
    run = from_dict(checkpoint.run or {})
    runtime = replace(run.runtime, **{k: v for k, v in runtime_overrides.items() if v is not None})
    return replace(run, runtime=runtime, data=replace(run.data, **(data_overrides or {})))
