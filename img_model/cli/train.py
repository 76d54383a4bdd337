"""img-train: train IMG on features from the stores, and convert the authors' checkpoints.

The flags map onto img_model/train/session.py's TrainingRequest; every failure is one line on stderr (the traceback
goes to RUN/train.log).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from extract.core.console import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandGroup,
    fail,
    setup_logging,
)
from extract.core.errors import ImgVmrError, OutputWriteError
from img_model.cli.cost import cost_command
from img_model.cli.options import data_options, dataset_table, log_thread_failures, runtime_options, write_failed
from img_model.train.config import MAX_BATCH, MAX_EPOCHS, MAX_EVALS_PER_EPOCH, MAX_SEED

log = logging.getLogger(f"img_vmr.{__name__}")
PROGRAM = "img-train"


@click.group(
    PROGRAM,
    cls=CommandGroup,
    default="train",
    default_takes_words=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
def main() -> None:
    """Train IMG video-moment-retrieval models and convert the authors' checkpoints.

    \b
    img-train --dataset NAME --features feats.h5 --visual V --audio A --text text.h5 --out RUN
                                                   train (same as `img-train train ...`)
    img-train --resume RUN                         continue a run exactly where its last.pt stopped
    torchrun --standalone --nproc-per-node N -m img_model.cli.train --dataset ... --out RUN
                                                   the same run on N processes (GPUs), DistributedDataParallel
    img-train convert-official IN.t7 OUT.pt --text text.h5
                                                   an authors' checkpoint as an img_model checkpoint
    img-train cost [CHECKPOINT]                    parameters and FLOPs per module (Table 12)

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
    "--selection-noise",
    type=click.Choice(["off", "fresh"]),
    default=None,
    help="Slot noise of the selection evaluations: off (initial slots = mu, default) or fresh (a new draw at "
    "every evaluation, as the authors' code; img_spec.md §7.2).",
)
@click.option(
    "--train-fraction",
    type=float,
    default=None,
    metavar="F",
    help="Train on a seeded share F in (0, 1] of the training videos (1; the paper's Table 15); seeded by "
    "--val-seed, so every --seed trains on the same videos.",
)
@click.option(
    "--refit",
    is_flag=True,
    default=None,
    help="After selecting step S on validation data, train again on all training videos (validation ones too) "
    "for S steps into RUN/refit/ and report that model: validation selection without losing its videos.",
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
    Under torchrun (`torchrun --nproc-per-node N -m img_model.cli.train ...`) the run is trained by N processes with
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
    from img_model.network.convert import CheckpointLayoutError
    from img_model.train.session import TrainingRequest, train
    from img_model.train.trainer import TrainingDivergedError

    rank = launched_rank()
    program = PROGRAM if rank.is_main else f"{PROGRAM}[rank {rank.rank}]"
    setup_logging(program, verbose, quiet=not rank.is_main)
    log_thread_failures()
    request = TrainingRequest(out, resume, config_file, stop_after, not no_progress, options)
    run_dir = request.run_dir or Path(".")
    try:
        summary = train(request, rank)
    except CheckpointLayoutError as error:
        fail(str(error), program=program)
    except OutputWriteError as error:  # a full disk: every file written before is whole
        log.debug("stopped", exc_info=True)
        resumable = (run_dir / "last.pt").is_file()
        write_failed(program, error, f"img-train --resume {run_dir}" if resumable else "run the same command again")
    except ImgVmrError as error:
        log.debug("stopped", exc_info=True)
        fail(str(error), EXIT_FAILED if isinstance(error, TrainingDivergedError) else EXIT_USAGE, program)
    except KeyboardInterrupt:
        log.info("interrupted; %s holds the last checkpoint written", run_dir / "last.pt")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as error:  # one line for the user, the traceback in the log
        log.debug("internal error", exc_info=True)
        log_file = run_dir / "train.log"
        where = f"traceback in {log_file}" if log_file.is_file() else "-v shows the traceback"
        fail(f"internal error: {type(error).__name__}: {error} ({where})", EXIT_FAILED, program)
    finally:
        stop_process_group()
    if summary:
        click.echo(summary)


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
    from img_model.network.convert import CheckpointLayoutError

    setup_logging(PROGRAM)
    try:
        checkpoint = convert_official_checkpoint(
            source, text, configs, event_num=event_num, slot_iterations=slot_iterations, num_heads=num_heads
        )
    except (CheckpointLayoutError, ImgVmrError) as exc:  # each names IN.t7 (or the file it is about)
        fail(str(exc))
        return
    try:
        _write_converted(checkpoint, target)
    except ImgVmrError as exc:
        fail(str(exc))
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


main.add_command(cost_command)

if __name__ == "__main__":
    main()
