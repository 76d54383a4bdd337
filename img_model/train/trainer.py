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
    metrics.jsonl    one JSON object per evaluation ("kind": "eval") and one at the end ("kind": "final", with the
                     run's warnings: img_model/evaluate/health.py)
    tensorboard/     scalars: every loss term, the learning rate, the warm-up factors (every log_every-th step,
                     and their epoch means), the branches' metrics (every evaluation)
    train.log        the log, with tracebacks

Exact resume: the batch order of epoch e is a permutation seeded by (seed, e), the saliency draw by (seed, e,
query), the DataLoader's own generator is re-seeded per epoch, and last.pt holds every global RNG state, so a
run resumed from any evaluation point continues bit for bit. A NaN or infinite loss, model output or gradient
norm stops the run with the step and the batch's query ids; checkpoints are only written from finite weights.

`Trainer` is one class over 200 lines, on purpose: restore, step, epoch, evaluation points and checkpoints read
and update one run's state together (model, optimiser, scaler, step counters, RNG streams, the best metric), and
exact resume depends on that state being captured and restored in one place (`_checkpoint` / `_restore`).

Distributed training (`torchrun`, img_model/distributed.py) is the same run at the same global batch size: each
process takes its share of every batch (`EpochBatches`), computes its share of the loss, and evaluates its share
of the batches; rank 0 alone writes (`RankContext.is_main`).

`Trainer` is one class of more than 200 lines on purpose: the run's state (model, optimiser, scheduler, gradient
scaler, step counters, best score) is what each of its methods reads and writes and what a checkpoint saves whole;
split, the pieces would hand that state back and forth.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from extract.core.errors import ImgVmrError, listed
from extract.core.precision import Precision
from img_model.checkpoint import (
    Checkpoint,
    CheckpointMismatchError,
    read_checkpoint,
    save_checkpoint,
)
from img_model.data.batch import Batch, collate
from img_model.data.dataset import HELD_OUT_SPLIT, OWN_VALIDATION_SPLIT, DataError, MomentDataset
from img_model.distributed import BatchShare, data_parallel, process_device
from img_model.evaluate.evaluator import EvalReport, Evaluator, metrics_table
from img_model.evaluate.health import SPIKE_FACTOR, TrainingHealth, warning_lines
from img_model.network.config import exp_up
from img_model.network.fusion import SlotAttention
from img_model.network.layers import batch_rows
from img_model.network.losses import BatchScope, img_loss, loss_scalars
from img_model.network.model import IMG
from img_model.network.optim import linear_decay, make_optimizer
from img_model.runtime import SINGLE_PROCESS, RankContext, loader_workers, runtime_device
from img_model.train.batches import EpochBatches, evaluation_steps
from img_model.train.config import TrainingRunConfig, as_dict
from img_model.train.run_data import RunData, data_fingerprint, fingerprint_changes
from img_model.train.run_log import RunLog, finished_summary
from img_model.train.seeding import rng_state, seed_everything, set_rng_state


class TrainingDivergedError(ImgVmrError):
    """The loss became NaN or infinite; training stopped and kept the last good checkpoint."""


log = logging.getLogger(f"img_vmr.{__name__}")

SELECTION_BRANCH, SELECTION_METRIC = "fused", "R1@0.7"
BATCH_QIDS_LISTED = 16  # a batch of the paper's size is named whole when training stops on it


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


class Trainer:
    """Trains one run into `run_dir`; `resume` is the run's last.pt when continuing it."""

    def __init__(
        self,
        run: TrainingRunConfig,
        data: RunData,
        run_dir: Path,
        resume: Checkpoint | None = None,
        rank: RankContext = SINGLE_PROCESS,
        batches: EpochBatches | None = None,
    ) -> None:
        self.run, self.data, self.run_dir, self.rank = run, data, Path(run_dir), rank
        runtime, train = run.runtime, run.train
        self.device = runtime_device(process_device(runtime.device, rank), runtime.threads)
        self.precision = Precision.resolve(runtime.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        seed_everything(train.seed)
        self.model = IMG(run.model)
        vocabulary = data.sources.texts.vocabulary
        if vocabulary is not None:
            with torch.no_grad():
                branches = ("video_branch", "audio_branch") if run.model.audio else ("video_branch",)
                for branch in map(self.model.get_submodule, branches):
                    branch.query_embedding.words.glove_vectors.copy_(torch.from_numpy(vocabulary.vectors))
        self.model.to(self.device)
        self.batches = batches or EpochBatches(len(data.train), train.batch_size, train.seed, rank)
        self.steps_per_epoch = self.batches.batches_per_epoch()
        self.total_steps = train.epochs * self.steps_per_epoch
        self.eval_steps = evaluation_steps(self.steps_per_epoch, train.evals_per_epoch)
        self.data_fingerprint = data_fingerprint(data, self.steps_per_epoch)
        self.optimizer = make_optimizer(self.model, train.learning_rate, train.weight_decay)
        self.scheduler = linear_decay(self.optimizer, self.total_steps)
        self.scaler = self.precision.grad_scaler(self.device)
        self.loader_generator = torch.Generator()
        self.step, self.epoch, self.epoch_step = 0, 0, 0
        self.epoch_totals: dict[str, list[float]] = {}  # scalar name -> [sum, count] over this epoch's steps
        self.best_score, self.best_step = -math.inf, -1
        self.health = TrainingHealth(f"{SELECTION_BRANCH} {SELECTION_METRIC}")  # the warnings' state (health.py)
        self.last_checkpoint: tuple[Path, int] | None = None
        if resume is not None:
            self._restore(resume)
        self.eval_model = torch.compile(self.model, dynamic=True) if runtime.compile else self.model
        self.forward_model = data_parallel(self.eval_model, rank, self.device)
        self.evaluator = Evaluator(
            self.device, self.precision, train.eval_batch_size, runtime.workers, train.seed, rank
        )
        self.loader = DataLoader(
            data.train,
            batch_sampler=self.batches,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            generator=self.loader_generator,
            **loader_workers(runtime.workers, self.steps_per_epoch, "training"),
        )
        self.log = RunLog(self.run_dir, self._kept)

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
        if training.get("health"):  # absent from the checkpoints of an older img-train: the warnings start afresh
            self.health = TrainingHealth.from_dict(training["health"])
        set_rng_state(training["rng"], self.device)
        self.last_checkpoint = (self.run_dir / "last.pt", self.step)
        log.info(
            "resuming at epoch %d, step %d (best %s %.2f at step %d)",
            self.epoch + 1,
            self.step,
            SELECTION_METRIC,
            self.best_score,
            self.best_step,
        )

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
                "health": self.health.as_dict(),
            },
            metrics=metrics,
        )

    # --- the loop ------------------------------------------------------------------------------------------

    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train to the configured number of epochs, or until `stop_after` more epochs are complete (counted from
        the epoch this call starts in: a preemption on purpose; --resume continues). A run that is finished
        already is left as it is."""
        train = self.run.train
        if self._trained() and (summary := finished_summary(self.run_dir, self.step)) is not None:
            log.info("%s is already finished (%d epochs, %d steps); nothing to do", self.run_dir, self.epoch, self.step)
            return self._result(finished=True, final={"summary": summary})
        stop_at = train.epochs if stop_after is None else min(train.epochs, self.epoch + stop_after)
        if self.rank.is_main:
            self.log.open(self.run, self.step)
        try:
            while not self._trained():
                if self.epoch >= stop_at:
                    log.info("stopped after epoch %d as asked; continue with --resume %s", self.epoch, self.run_dir)
                    self.log.close()
                    return self._result(finished=False)
                self._train_epoch()
            final = self._final_report()
            self.log.close()
            return self._result(finished=True, final=final)
        finally:
            self.log.abandon()

    def _trained(self) -> bool:
        """Every epoch is trained, or a refit run's `refit_steps`."""
        refit_steps = self.run.train.refit_steps
        return self.epoch >= self.run.train.epochs or bool(refit_steps and self.step >= refit_steps)

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
            if self.epoch_step in self.eval_steps or self.step == train.refit_steps:
                self._evaluate_and_save()
            if self.step == train.refit_steps:
                break
        progress.close()
        log.info(
            "epoch %d/%d: mean loss %.4f over %d steps",
            epoch + 1,
            train.epochs,
            self._epoch_means()["loss/total"],
            self.steps_per_epoch,
        )
        self.epoch += 1
        self.epoch_totals = {}
        self.epoch_step = 0

    def _train_step(self, batch: Batch, share: BatchShare, p_warm: float, kd_warm: float) -> dict[str, float]:
        batch = batch.to(self.device)
        if self.rank.distributed:  # pad as the whole batch is padded
            sizes = self.rank.max(torch.tensor(batch.padded_sizes(), device=self.device))
            batch = batch.padded_to(*sizes.tolist())
        with self.precision.autocast(self.device), batch_rows(share.rows):
            outputs = self.forward_model(**batch.model_inputs(), p_warm=p_warm)
        # Non-finite outputs would make the importance BCE fail (or assert on a GPU): check them first.
        output_sums = torch.stack([output.detach().float().sum() for output in outputs if output is not None])
        if self.rank.sum((~torch.isfinite(output_sums)).any().float()).item():
            self._diverged("the model's outputs are not finite", batch.qids, share)
        scope = BatchScope(share.total, share.weight, self.rank.sum)
        loss = img_loss(outputs, batch.labels(), self.run.objective, kd_warm, scope, self.run.model)
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
        running_mean = self.health.loss.running_mean()
        if self.health.loss.update(self.step, scalars["loss/total"]):
            log.warning(
                "step %d: the loss %.4g spiked above %gx its running mean %.4g",
                self.step,
                scalars["loss/total"],
                SPIKE_FACTOR,
                running_mean,
            )
        scalars |= {
            "train/lr": lr,
            "train/grad_norm": grad_norm,
            "warmup/importance": p_warm,
            "warmup/distill": kd_warm,
        }
        for name, value in scalars.items():
            if math.isfinite(value):  # fp16: the scaler's skipped steps have an infinite gradient norm
                total = self.epoch_totals.setdefault(name, [0.0, 0])
                total[0], total[1] = total[0] + value, total[1] + 1
        if self.step % self.run.runtime.log_every == 0:
            self.log.scalars(scalars, self.step)
        if self.epoch_step == self.steps_per_epoch:  # before the epoch's last checkpoint: a resume keeps them
            self.log.scalars(self._epoch_means(), self.step, "epoch_mean/")
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
        return EvalReport.from_predictions(
            dataset.split,
            predictions,
            importance_predicted=self.run.model.predicts_importance,
            select_on=self.run.train.select_on,
        )

    def _evaluate_for_selection(self) -> EvalReport:
        """The selection split's report; with selection_noise = "fresh" the fused branch draws new slot noise at
        every evaluation (§7.2: the authors' code evaluates with unseeded noise), seeded by the run's seed and
        the step so that a resumed run draws the same."""
        if self.run.train.selection_noise == "off":
            return self._evaluate(self.data.select)
        with slot_noise_drawn(self.model):
            predictions = self.evaluator.predict(self.eval_model, self.data.select, seed=self._noise_seed())
        return EvalReport.from_predictions(
            self.data.select.split,
            predictions,
            importance_predicted=self.run.model.predicts_importance,
            select_on=self.run.train.select_on,
        )

    def _noise_seed(self) -> int:
        return (self.run.train.seed * 1_000_003 + self.step) % 2**63

    def _save_refit_point(self) -> None:
        """A refit run selects nothing and looks at no split on the way: last.pt at each evaluation point (to
        resume from), and at `refit_steps` the model it reports (best.pt)."""
        if not self.rank.is_main:
            return
        done = self.step >= self.run.train.refit_steps
        if done:
            self.best_step = self.step
        checkpoint = self._checkpoint(None)
        for name in ("best.pt", "last.pt") if done else ("last.pt",):
            with self.log.writing(self.run_dir / name):
                save_checkpoint(checkpoint, self.run_dir / name)
        self.last_checkpoint = (self.run_dir / "last.pt", self.step)

    def _evaluate_and_save(self) -> None:
        names, parameters = zip(*self.model.named_parameters(), strict=True)
        finite = torch.stack([parameter.detach().isfinite().all() for parameter in parameters]).tolist()
        bad = [name for name, ok in zip(names, finite, strict=True) if not ok]
        if bad:  # never saved: the last checkpoint stays the last good one
            raise TrainingDivergedError(
                f"the weights are not finite after step {self.step} (epoch {self.epoch + 1}): {listed(bad)}; "
                f"{self._kept()}"
            )
        if self.run.train.refit_steps:
            self._save_refit_point()
            return
        started = time.perf_counter()
        report = self._evaluate_for_selection()
        score = report.branches[SELECTION_BRANCH][SELECTION_METRIC]
        self.health.selection_scores.append(score)
        improved = score >= self.best_score  # ties count as better, as the authors' code does (§4.7)
        if improved:
            self.best_score, self.best_step = score, self.step
        if not self.rank.is_main:
            return
        metrics = {
            "split": report.split,
            "branches": report.branches,
            "mean_audio_importance": report.mean_importance,
            "warnings": report.warnings,
        }
        # The logs first, then the checkpoints: a kill at any moment leaves logs up to the step of last.pt at least
        # (what a resume keeps), never a last.pt whose evaluation or scalars were lost; later lines are dropped.
        self.log.log_metrics(
            {
                "kind": "eval",
                "epoch": self.epoch + 1,
                "step": self.step,
                "select_on": self.run.train.select_on,
                "selection_noise": self.run.train.selection_noise,
                "best": improved,
                **metrics,
            }
        )
        for branch, values in report.branches.items():
            self.log.scalars(values, self.step, f"{report.split}/{branch}/")
        self.log.scalars({"mean_audio_importance": report.mean_importance}, self.step, f"{report.split}/")
        self.log.flush()  # every scalar up to this step is in the event file before last.pt says so
        checkpoint = self._checkpoint(metrics)
        for name in ("best.pt", "last.pt") if improved else ("last.pt",):
            with self.log.writing(self.run_dir / name):
                save_checkpoint(checkpoint, self.run_dir / name)
        self.last_checkpoint = (self.run_dir / "last.pt", self.step)
        log.info(
            "step %d: %s fused %s %.2f%s (%.1f s)",
            self.step,
            report.split,
            SELECTION_METRIC,
            score,
            " (best)" if improved else "",
            time.perf_counter() - started,
        )

    def _final_report(self) -> dict[str, Any]:
        """Evaluate best.pt on the selection split's record and on test; print the summary table."""
        self.rank.barrier()  # rank 0 has written best.pt
        if self.run.train.refit_steps:
            return self._refit_report()
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
        warnings = [*self.health.warnings(), *best.metrics.get("warnings", [])]
        if self.data.test is not None:
            model = best.model().to(self.device)
            compiled = torch.compile(model, dynamic=True) if self.run.runtime.compile else model
            report = self._evaluate(self.data.test, compiled)
            final["test"] = {
                "split": "test",
                "branches": report.branches,
                "mean_audio_importance": report.mean_importance,
                "warnings": report.warnings,
            }
            tables.append(metrics_table(report.branches, f"test (best checkpoint, step {self.best_step})"))
            warnings += report.warnings
        if not self.rank.is_main:
            return {}
        selected = {
            "test": "the test split (the paper's protocol, §7.15)",
            HELD_OUT_SPLIT: f"{HELD_OUT_SPLIT} (held-out training videos)",
            OWN_VALIDATION_SPLIT: f"{OWN_VALIDATION_SPLIT} (the dataset's own validation split)",
        }[self.data.select.split]
        header = (
            f"run {self.run_dir}: {self.epoch} epochs, {self.step} steps; selected on {selected} by fused "
            f"{SELECTION_METRIC} = {self.best_score:.2f} at step {self.best_step}"
        )
        final["warnings"] = warnings
        summary = "\n\n".join([header, *tables, *warning_lines(warnings)])
        self.log.summary(summary)
        self.log.log_metrics(final)  # last: the final line marks the run finished (finished_summary)
        return final | {"summary": summary}

    def _refit_report(self) -> dict[str, Any]:
        """A refit run's final line: its model (the one after refit_steps) on test."""
        model = read_checkpoint(self.run_dir / "best.pt").model().to(self.device)
        report = self._evaluate(self.data.select, model)
        if not self.rank.is_main:
            return {}
        test = {
            "split": "test",
            "branches": report.branches,
            "mean_audio_importance": report.mean_importance,
            "warnings": report.warnings,
        }
        warnings = [*self.health.warnings(), *report.warnings]
        header = (
            f"refit run {self.run_dir}: {self.step} steps on all {len(self.data.train)} training queries (the step "
            "selected on the held-out videos), no selection"
        )
        table = metrics_table(report.branches, f"test (after step {self.step})")
        summary = "\n\n".join([header, table, *warning_lines(warnings)])
        final = {
            "kind": "final",
            "step": self.step,
            "best_step": self.step,
            "refit_steps": self.step,
            "test": test,
            "warnings": warnings,
        }
        self.log.summary(summary)
        self.log.log_metrics(final)
        return final | {"summary": summary}

    def _result(self, finished: bool, final: dict[str, Any] | None = None) -> TrainResult:
        return TrainResult(self.run_dir, self.epoch, self.step, self.best_step, self.best_score, finished, final or {})


@contextlib.contextmanager
def slot_noise_drawn(model: torch.nn.Module) -> Iterator[None]:
    """Within the block the model's event slots start from mu + sigma·noise in evaluation too (§7.2)."""
    slots = [module for module in model.modules() if isinstance(module, SlotAttention)]
    previous = [module.noise for module in slots]
    for module in slots:
        module.noise = "always"
    try:
        yield
    finally:
        for module, noise in zip(slots, previous, strict=True):
            module.noise = noise
