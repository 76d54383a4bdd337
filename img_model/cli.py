"""img-train: train IMG on features from the stores, and convert the authors' checkpoints.

The CLI maps flags onto the run configuration (img_model/train_config.py) and nothing else reads flags; every
failure is one line on stderr (the traceback goes to RUN/train.log).
"""

from __future__ import annotations

import difflib
import logging
import logging.handlers
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from extract.errors import ImgVmrError, OutputWriteError
from img_model.cli_common import (
    EXIT_FAILED,
    EXIT_USAGE,
    add_log_file,
    data_options,
    data_overrides,
    dataset_table,
    fail,
    log_thread_failures,
    runtime_options,
    setup_logging,
    write_failed,
)
from img_model.convert import CheckpointLayoutError
from img_model.train_config import MAX_BATCH, MAX_EPOCHS, MAX_EVALS_PER_EPOCH, MAX_SEED

if TYPE_CHECKING:
    from img_model.runtime import RankContext

log = logging.getLogger("img_vmr.train")
PROGRAM = "img-train"


class _DefaultToTrain(click.Group):
    """`img-train --dataset ... --out RUN` trains; named subcommands (convert-official) work as usual."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            if not args[0].startswith("-"):  # train takes options only: a word first is a command, mistyped
                close = difflib.get_close_matches(args[0], list(self.commands), n=1)
                hint = f"did you mean {close[0]}?" if close else f"the commands are {', '.join(self.commands)}"
                fail(PROGRAM, f"no command {args[0]!r}; {hint}")
            args = ["train", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultToTrain, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train IMG video-moment-retrieval models and convert the authors' checkpoints.

    \b
    img-train --dataset NAME --features feats.h5 --visual V --audio A --text text.h5 --out RUN
                                                   train (same as `img-train train ...`)
    img-train --resume RUN                         continue a run exactly where its last.pt stopped
    torchrun --standalone --nproc-per-node N -m img_model.cli --dataset ... --out RUN
                                                   the same run on N processes (GPUs), DistributedDataParallel
    img-train convert-official IN.t7 OUT.pt --text text.h5
                                                   an authors' checkpoint as an img_model checkpoint

    Every option: img-train train --help, img-train convert-official --help.
    """


@main.command(
    "train",
    epilog="\b\nDatasets:\n" + dataset_table() + "\n\n\b\n"
    "Exit status: 0 trained, 1 stopped (NaN/inf loss, internal error), 2 usage or data error, 3 a file of the run "
    "could not be written (a full disk: img-train --resume continues once there is room).",
)
@data_options(required=True)
@click.option(
    "--missing-audio",
    type=click.Choice(["drop", "zeros"]),
    default=None,
    help="Training queries of videos without audio: drop them (the authors', default) or read a zero audio track.",
)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="Run folder to create.")
@click.option(
    "--resume",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Continue the run in this folder from its last.pt, bit for bit (only runtime options may change).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="TOML file with [model], [objective], [train], [data], [runtime] sections; flags override it.",
)
@click.option("--epochs", type=click.IntRange(1, MAX_EPOCHS), default=None, help="Training epochs (100).")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=None, help="Training batch size (16).")
@click.option("--lr", "learning_rate", type=float, default=None, help="AdamW learning rate (5e-4), decayed linearly.")
@click.option(
    "--seed",
    type=click.IntRange(0, MAX_SEED),
    default=None,
    help="Seed of everything: init, order, dropout, sampling (0).",
)
@click.option(
    "--select-on",
    type=click.Choice(["val", "test"]),
    default=None,
    help="Select best.pt on held-out training videos (val, default) or on the test split as the paper did (test).",
)
@click.option(
    "--val-fraction",
    type=float,
    default=None,
    help="Share of the training videos (those with features and text) held out for selection (0.1).",
)
@click.option(
    "--val-seed",
    type=click.IntRange(0, MAX_SEED),
    default=None,
    help="Seed of which training videos are held out (0): fixed, so every --seed selects on the same videos. "
    "A custom .jsonl with its own 'val' split selects on that split instead.",
)
@click.option(
    "--evals-per-epoch", type=click.IntRange(1, MAX_EVALS_PER_EPOCH), default=None, help="Evaluations per epoch (2)."
)
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the model.")
@click.option(
    "--stop-after",
    type=click.IntRange(min=1),
    metavar="N",
    default=None,
    help="End this invocation once N more epochs are complete, counted from the epoch it starts in (time-limited "
    "jobs: `--resume RUN --stop-after 1` trains one more epoch); --resume continues.",
)
@click.option(
    "--log-every",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="TensorBoard: the per-step scalars (every loss term, lr, gradient norm, warm-ups) of every Nth step (10); "
    "their epoch means always.",
)
@runtime_options(workers=2, precision="fp32 (on --resume: the run's)")
def train_command(
    config_file: Path | None,
    out: Path | None,
    resume: Path | None,
    stop_after: int | None,
    verbose: bool,
    no_progress: bool,
    **options: Any,
) -> None:
    """Train IMG on a dataset's queries with features from the stores.

    \b
    Defaults are the paper's recipe for the dataset (100 epochs, batch 16, AdamW 5e-4 with linear decay, the
    loss weights, ε/γ per dataset, two evaluations per epoch); a --config file and the flags change them, and
    the resolved configuration is written to RUN/config.toml. The run folder gets best.pt (selected on fused
    R1@0.7), last.pt, metrics.jsonl, tensorboard/ and train.log.

    \b
    \b
    Under torchrun (`torchrun --nproc-per-node N -m img_model.cli ...`) the run is trained by N processes with
    DistributedDataParallel, one GPU each (--device cuda) or on CPUs (gloo): the same batches, loss and
    evaluations as one process at the same --batch-size (the global batch), up to floating-point noise; rank 0
    writes the run folder. --resume works with any number of processes.

    \b
    Examples:
      img-train --dataset charades-sta --features feats.h5 --visual i3d-charades-vslnet --audio panns \\
                --text text.h5 --out runs/charades
      img-train --resume runs/charades --device cuda
    """
    from img_model.distributed import launched_rank, stop_process_group

    rank = launched_rank()
    program = PROGRAM if rank.is_main else f"{PROGRAM}[rank {rank.rank}]"
    setup_logging(program, verbose, quiet=not rank.is_main)
    log_thread_failures()
    run_dir = resume or out
    if run_dir is None:
        fail(program, "give --out RUN (a new run folder) or --resume RUN")
        return
    if resume is not None and out is not None:
        fail(program, "give either --out (a new run) or --resume (continue one), not both")
    try:
        _train(config_file, out, resume, stop_after, not no_progress, options, rank)
    except CheckpointLayoutError as error:
        fail(program, str(error))
    except OutputWriteError as error:  # a full disk: every file written before is whole
        log.debug("stopped", exc_info=True)
        resumable = (run_dir / "last.pt").is_file()
        write_failed(program, error, f"img-train --resume {run_dir}" if resumable else "run the same command again")
    except ImgVmrError as error:
        from img_model.errors import TrainingDivergedError

        log.debug("stopped", exc_info=True)
        fail(program, str(error), EXIT_FAILED if isinstance(error, TrainingDivergedError) else EXIT_USAGE)
    except KeyboardInterrupt:
        log.info("interrupted; %s holds the last checkpoint written", run_dir / "last.pt")
        raise SystemExit(130) from None
    except Exception as error:  # one line for the user, the traceback in the log
        log.debug("internal error", exc_info=True)
        log_file = run_dir / "train.log"
        where = f"traceback in {log_file}" if log_file.is_file() else "-v shows the traceback"
        fail(program, f"internal error: {type(error).__name__}: {error} ({where})", EXIT_FAILED)
    finally:
        stop_process_group()


RECIPE_FLAGS = {
    "train": ("epochs", "batch_size", "learning_rate", "seed", "select_on", "val_fraction", "val_seed",
              "evals_per_epoch"),
    "data": ("dataset", "features", "visual", "audio", "text", "data_dir", "align", "strict", "cache_features",
             "missing_audio"),
}  # fmt: skip
# Data options --resume accepts: where the data is (a moved or staged copy) and how it is read, not what it is.
# The stores' provenance and the data fingerprint in last.pt guard that the data is the same.
RESUMABLE_DATA_FLAGS = ("features", "text", "data_dir", "strict", "cache_features")


def _train(
    config_file: Path | None,
    out: Path | None,
    resume: Path | None,
    stop_after: int | None,
    progress: bool,
    options: dict[str, Any],
    rank: RankContext,
) -> None:
    """Resolve the run, open and check its data, build the trainer, and only then create the run folder (a
    failed invocation leaves nothing behind; its log lines are kept in memory until the folder exists)."""
    from img_model.checkpoint import read_checkpoint
    from img_model.dataset import DataSources
    from img_model.distributed import start_process_group
    from img_model.errors import CheckpointMismatchError
    from img_model.provenance import differences
    from img_model.train_config import resolve
    from img_model.trainer import Trainer, finished_summary, model_inputs, prepare_data, restored_run

    runtime = {"device": options["device"], "precision": options["precision"], "workers": options["workers"],
               "threads": options["threads"], "compile": options["compile_"], "progress": progress,
               "log_every": options["log_every"]}  # fmt: skip
    checkpoint = None
    if resume is not None:
        given = [f"--{name.replace('_', '-')}" for names in RECIPE_FLAGS.values() for name in names
                 if options.get(name) not in (None, ()) and name not in RESUMABLE_DATA_FLAGS]  # fmt: skip
        if given or config_file is not None:
            raise ImgVmrError(
                f"--resume continues the run as it was configured; drop {', '.join(given) or '--config'} (only "
                "--device, --precision, --workers, --threads, --compile, --log-every and where the data is: "
                "--features, --text, --data-dir, --strict, --cache-features may change)"
            )
        last = resume / "last.pt"
        if not last.is_file():
            raise ImgVmrError(f"{resume} holds no last.pt to resume from")
        checkpoint = read_checkpoint(last)
        step = (checkpoint.training or {}).get("step", -1)
        summary = finished_summary(resume, step)
        if summary is not None:  # nothing to train, nothing to write
            log.info("%s is already finished (step %d, its final line is in metrics.jsonl); nothing to do", resume,
                     step)  # fmt: skip
            if summary and rank.is_main:
                click.echo(summary)
            return
        if rank.is_main:
            add_log_file(resume / "train.log")
        moved = data_overrides(**{name: options[name] for name in RESUMABLE_DATA_FLAGS})
        run = restored_run(checkpoint, runtime, moved)
        run_dir = resume
    else:
        assert out is not None
        if (out / "last.pt").exists():
            raise ImgVmrError(
                f"{out} already holds a run (last.pt); continue it with --resume {out} or use another --out"
            )
        if out.exists() and not out.is_dir():
            raise ImgVmrError(f"--out {out} is a file, not a folder; choose another --out")
        train_flags = {name: options[name] for name in RECIPE_FLAGS["train"]}
        data_flags = data_overrides(**{name: options[name] for name in RECIPE_FLAGS["data"]})
        run = resolve(config_file, {"train": train_flags, "data": data_flags, "runtime": runtime})
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
            detail = differences(recorded.get("recipe", {}), current.get("recipe", {}))
            if detail:
                raise CheckpointMismatchError(f"the {kind} inputs changed since the run started: {detail}")
        if run.model != checkpoint.config:
            detail = differences(vars(checkpoint.config), vars(run.model))
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
        _write_held_records(early_log, add_log_file(run_dir / "train.log"))
    result = trainer.fit(stop_after)
    if result.finished and rank.is_main:
        click.echo(result.final["summary"])


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


@main.command("convert-official")
@click.argument("source", metavar="IN.t7", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("target", metavar="OUT.pt", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--text",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Text store (img-extract text --embed glove:...) whose vocabulary the checkpoint's word ids follow; "
    "required for GloVe checkpoints: its vectors must equal the checkpoint's GloVe rows.",
)
@click.option(
    "--configs",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The authors' configs.json of the run (default: the one beside IN.t7): slots, iterations, heads.",
)
@click.option(
    "--slots", "event_num", type=click.IntRange(min=1), default=None, help="Event slots (not in the weights)."
)
@click.option(
    "--slot-iterations",
    type=click.IntRange(min=1),
    default=None,
    help="Slot-attention iterations (not in the weights).",
)
@click.option(
    "--num-heads",
    type=click.IntRange(min=1),
    default=None,
    help="Attention heads (not in the weights; default: configs.json's, else 8 as in every published setting).",
)
def convert_official(
    source: Path,
    target: Path,
    text: Path | None,
    configs: Path | None,
    event_num: int | None,
    slot_iterations: int | None,
    num_heads: int | None,
) -> None:
    """Convert a checkpoint saved by the authors' code (IN.t7, a plain IMGNet state dict) into an img_model
    checkpoint (OUT.pt) that img-eval reads.

    \b
    Sizes and GRU layers are read from the weights; the slot count and iterations are not in them: they come
    from the authors' configs.json beside IN.t7 (or --configs), or from --slots / --slot-iterations, and a
    checkpoint without either is refused rather than assumed 3/3. The vocabulary comes from --text.
    """
    from img_model.checkpoint import convert_official_checkpoint

    setup_logging(PROGRAM, False)
    try:
        checkpoint = convert_official_checkpoint(
            source, text, configs, event_num=event_num, slot_iterations=slot_iterations, num_heads=num_heads
        )
    except (CheckpointLayoutError, ImgVmrError) as exc:  # each names IN.t7 (or the file it is about)
        fail(PROGRAM, str(exc))
        return
    try:
        _write_converted(checkpoint, target)
    except ImgVmrError as exc:
        fail(PROGRAM, str(exc))
        return
    config = checkpoint.config
    vocabulary = f", vocabulary of {len(checkpoint.vocabulary['words'])} words" if checkpoint.vocabulary else ""
    click.echo(
        f"wrote {target}: IMG dim {config.dim}, video {config.video_feature_dim}-d, "
        f"audio {config.audio_feature_dim}-d, "
        f"{config.event_num} slots x {config.slot_iterations} iterations, {config.fusion_gru_layers} GRU layers, "
        f"{checkpoint.model().trainable_parameters():,} trainable parameters{vocabulary}"
    )


def _write_converted(checkpoint: Any, target: Path) -> None:
    from img_model.checkpoint import save_checkpoint

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(checkpoint, target)
    except OSError as error:
        blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker is not None else error.strerror
        raise ImgVmrError(f"cannot write {target} ({reason}); choose another OUT.pt") from None


if __name__ == "__main__":
    main()
