"""One img-train invocation, as a library call: `train(TrainingRequest(...), rank)`.

img-train's flags map onto TrainingRequest; the decisions live here, where pipelines and tests call them without
click: a new run (--out) or the continuation of one (--resume: only the runtime options and where the data is
may change, the inputs and the model must be those the run started with), the resolved configuration (defaults,
--config, flags), the data and its checks, and the run folder, created only when everything is ready (a failed
invocation leaves nothing behind; its log lines are held in memory until the folder exists).
"""

from __future__ import annotations

import logging
import logging.handlers
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from extract.core.console import attach_log_file
from extract.core.errors import ImgVmrError, UsageError
from extract.core.provenance import compare_recipes
from img_model.checkpoint import DAMAGED, Checkpoint, CheckpointMismatchError, read_checkpoint
from img_model.data.config import data_overrides
from img_model.data.dataset import DataSources
from img_model.distributed import start_process_group
from img_model.network.convert import CheckpointLayoutError
from img_model.runtime import RankContext
from img_model.train.config import TrainingRunConfig, from_dict, resolve
from img_model.train.run_data import model_inputs, prepare_data
from img_model.train.run_log import REFIT_FOLDER, finished_summary
from img_model.train.trainer import Trainer

log = logging.getLogger(f"img_vmr.{__name__}")

RECIPE_FLAGS = {
    "train": (
        "epochs",
        "batch_size",
        "learning_rate",
        "seed",
        "select_on",
        "val_fraction",
        "val_seed",
        "evals_per_epoch",
        "selection_noise",
        "train_fraction",
        "refit",
    ),
    "data": (
        "dataset",
        "features",
        "visual",
        "audio",
        "text",
        "data_dir",
        "align",
        "strict",
        "cache_features",
        "missing_audio",
    ),
}
# Data options --resume accepts: where the data is (a moved or staged copy) and how it is read, not what it is.
# The stores' provenance and the data fingerprint in last.pt guard that the data is the same.
RESUMABLE_DATA_FLAGS = ("features", "text", "data_dir", "strict", "cache_features")
# How the runtime options are named in [runtime] (the flag of --compile is compile_).
RUNTIME_FLAGS = {
    "device": "device",
    "precision": "precision",
    "workers": "workers",
    "threads": "threads",
    "compile": "compile_",
    "log_every": "log_every",
}


@dataclass(frozen=True)
class TrainingRequest:
    """img-train train's options: `out` (a new run) or `resume` (continue one), and the other flags by their
    names (None: not given)."""

    out: Path | None = None
    resume: Path | None = None
    config_file: Path | None = None
    stop_after: int | None = None
    progress: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path | None:
        return self.resume or self.out


def train(request: TrainingRequest, rank: RankContext) -> str | None:
    """Train (or continue, or find finished) the run of a request; the summary to print when it finished here
    (rank 0), None otherwise."""
    out, resume, options = request.out, request.resume, request.options
    if out is None and resume is None:
        raise UsageError("give --out RUN (a new run folder) or --resume RUN")
    if out is not None and resume is not None:
        raise UsageError("give either --out (a new run) or --resume (continue one), not both")
    runtime = {name: options.get(flag) for name, flag in RUNTIME_FLAGS.items()} | {"progress": request.progress}
    checkpoint = None
    if resume is not None:
        given = [
            f"--{name.replace('_', '-')}"
            for names in RECIPE_FLAGS.values()
            for name in names
            if options.get(name) not in (None, ()) and name not in RESUMABLE_DATA_FLAGS
        ]
        if given or request.config_file is not None:
            raise ImgVmrError(
                f"--resume continues the run as it was configured; drop {', '.join(given) or '--config'} (only "
                "--device, --precision, --workers, --threads, --compile, --log-every and where the data is: "
                "--features, --text, --data-dir, --strict, --cache-features may change)"
            )
        last = resume / "last.pt"
        if not last.is_file():
            raise ImgVmrError(f"{resume} holds no last.pt to resume from")
        checkpoint = read_checkpoint(last)
        recorded_run(checkpoint, last)  # a value no run can have is refused before anything else
        step = (checkpoint.training or {}).get("step", -1)
        summary = finished_summary(resume, step)
        if summary is not None:  # nothing to train, nothing to write (but the refit, when asked and unfinished)
            finished = recorded_run(checkpoint, last)
            if finished.train.refit:
                best_step = (checkpoint.training or {}).get("best_step", -1)
                moved = data_overrides(**{name: options.get(name) for name in RESUMABLE_DATA_FLAGS})
                finished = restored_run(checkpoint, runtime, moved, where=last)
                return refit(finished, resume, best_step, rank, request.stop_after)
            log.info(
                "%s is already finished (step %d, its final line is in metrics.jsonl); nothing to do", resume, step
            )
            return summary or None
        if rank.is_main:
            attach_log_file(resume / "train.log")
        moved = data_overrides(**{name: options.get(name) for name in RESUMABLE_DATA_FLAGS})
        run = restored_run(checkpoint, runtime, moved, where=last)
        run_dir = resume
    else:
        assert out is not None
        if (out / "last.pt").exists():
            raise ImgVmrError(
                f"{out} already holds a run (last.pt); continue it with --resume {out} or use another --out"
            )
        if out.exists() and not out.is_dir():
            raise ImgVmrError(f"--out {out} is a file, not a folder; choose another --out")
        train_flags = {name: options.get(name) for name in RECIPE_FLAGS["train"]}
        data_flags = data_overrides(**{name: options.get(name) for name in RECIPE_FLAGS["data"]})
        run = resolve(request.config_file, {"train": train_flags, "data": data_flags, "runtime": runtime})
        run_dir = out
    early_log = _hold_log_records() if checkpoint is None and rank.is_main else None
    sources = DataSources(run.data)
    try:
        run = replace(run, model=replace(run.model, **model_inputs(sources)))
    except ValueError as error:  # the inputs' sizes (feature widths, vocabulary) are checked as the config's are
        raise ImgVmrError(f"the inputs make a model no run can train: {error}") from None
    if checkpoint is not None:
        for kind, recorded in checkpoint.provenance.items():
            current = sources.provenance()[kind]
            detail = compare_recipes(recorded.get("recipe", {}), current.get("recipe", {})).refused
            if detail:
                raise CheckpointMismatchError(f"the {kind} inputs changed since the run started: {detail}")
        if run.model != checkpoint.config:
            detail = compare_recipes(vars(checkpoint.config), vars(run.model)).refused
            raise CheckpointMismatchError(f"the model the data asks for differs from the run's: {detail}")
    data = prepare_data(run, sources)
    for dataset in (data.train, data.select, data.test):
        if dataset is not None:
            log.info("%s", dataset.coverage.summary())
    if run.train.select_on == "test":
        log.warning("selecting the checkpoint on the test split (the paper's protocol, img_spec.md §7.15)")
    start_process_group(rank, run.runtime.device)
    trainer = Trainer(run, data, run_dir, resume=checkpoint, rank=rank)
    if early_log is not None:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ImgVmrError(
                f"cannot create the run folder {run_dir} ({error.strerror}); choose another --out"
            ) from None
        _write_held_records(early_log, attach_log_file(run_dir / "train.log"))
    result = trainer.fit(request.stop_after)
    summary = result.final["summary"] if result.finished and rank.is_main else None
    if result.finished and run.train.refit:
        summary = "\n\n".join(part for part in (summary, refit(run, run_dir, result.best_step, rank)) if part)
    return summary or None


def refit(
    run: TrainingRunConfig, run_dir: Path, best_step: int, rank: RankContext, stop_after: int | None = None
) -> str | None:
    """The refit of a finished run that selected `best_step` on validation data: a new model trained on all the
    training videos (the validation ones too) for best_step steps, in RUN/refit/ (continued when it is there);
    its summary when it finished here."""
    folder = run_dir / REFIT_FOLDER
    refit_run = replace(run, train=replace(run.train, refit=False, refit_steps=best_step))
    checkpoint = read_checkpoint(folder / "last.pt") if (folder / "last.pt").is_file() else None
    if checkpoint is not None:
        step = (checkpoint.training or {}).get("step", -1)
        summary = finished_summary(folder, step)
        if summary is not None:
            log.info("%s is already finished (step %d); nothing to do", folder, step)
            return summary or None
    log.info("refit: training again on every training video for the %d steps selected on validation", best_step)
    data = prepare_data(refit_run, DataSources(refit_run.data))
    trainer = Trainer(refit_run, data, folder, resume=checkpoint, rank=rank)
    result = trainer.fit(stop_after)
    return result.final["summary"] if result.finished and rank.is_main else None


def restored_run(
    checkpoint: Checkpoint,
    runtime_overrides: dict[str, Any],
    data_overrides: dict[str, Any] | None = None,
    where: str | Path = "checkpoint",
) -> TrainingRunConfig:
    """The run config a last.pt (`where`) was trained with, with new runtime settings (device, workers, ...) and
    data locations (moved stores, `RESUMABLE_DATA_FLAGS` of the CLI). Its recorded sections are checked as a config
    file's are: a value no run can have is a CheckpointLayoutError naming the file."""
    run = recorded_run(checkpoint, where)
    runtime = replace(run.runtime, **{k: v for k, v in runtime_overrides.items() if v is not None})
    return replace(run, runtime=runtime, data=replace(run.data, **(data_overrides or {})))


def recorded_run(checkpoint: Checkpoint, where: str | Path = "checkpoint") -> TrainingRunConfig:
    """The run config a checkpoint (the file `where`) records, each section checked as a config file's is: a value
    no run can have is a CheckpointLayoutError naming the file."""
    try:
        return from_dict(checkpoint.run or {}, where=str(where))
    except UsageError as error:
        raise CheckpointLayoutError(f"{error}; {DAMAGED}") from None


def _hold_log_records() -> logging.handlers.MemoryHandler:
    """Keep img-train's log records in memory (until the run folder, and its train.log, exist)."""
    held = logging.handlers.MemoryHandler(capacity=1_000_000, flushLevel=logging.CRITICAL + 1)
    held.setLevel(logging.DEBUG)
    logging.getLogger("img_vmr").addHandler(held)
    return held


def _write_held_records(held: logging.handlers.MemoryHandler, log_file: logging.Handler) -> None:
    """Write the held records to train.log, and stop holding."""
    logging.getLogger("img_vmr").removeHandler(held)
    held.setTarget(log_file)
    held.close()  # flushes into log_file
