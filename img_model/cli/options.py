"""What img-train, img-eval and img-predict share: the data options, the runtime options, the line of an output
that could not be written, and background threads' failures sent to the log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from extract.core.console import EXIT_STOPPED, fail
from extract.core.errors import OutputWriteError
from extract.core.options import precision_option
from img_model.train.config import MAX_THREADS, MAX_WORKERS
from manifests.registry import DATASETS

log = logging.getLogger(f"img_vmr.{__name__}")


def log_thread_failures() -> None:
    """An exception that ends a background thread goes to the log (with its traceback, in RUN/train.log and with
    -v), not as a traceback on the console: the threads img-train starts (TensorBoard's event writer, which stops on
    a full disk) hand their failure to the main thread, whose one line says it."""

    def to_the_log(failure: threading.ExceptHookArgs) -> None:
        name = failure.thread.name if failure.thread is not None else "a thread"
        error = (failure.exc_type, failure.exc_value, failure.exc_traceback)
        log.debug("%s stopped: %s", name, failure.exc_value, exc_info=error)  # type: ignore[arg-type]

    threading.excepthook = to_the_log


def write_failed(program: str, error: OutputWriteError, then: str) -> NoReturn:
    """The last line of a command that could not write an output, as img-extract's (exit 3): what, what to free
    when the disk is full, and what to run `then`."""
    room = f"make room ({error.make_room}), then " if error.make_room else ""
    fail(f"{error}; {room}{then}", EXIT_STOPPED, program)


def dataset_table() -> str:
    return "\n".join(f"  {name:<13} {manifest.description}" for name, manifest in DATASETS.items())


def data_options(required: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--dataset, --features, --visual, --audio, --text, --data-dir, --align, --strict, --cache-features. With
    required=False they default to what the checkpoint recorded (img-eval)."""
    recorded = "" if required else " (default: the checkpoint's)"
    options = [
        click.option(
            "--dataset",
            default=None,
            help="A dataset name (charades-sta, charades-am, activitynet) or your queries as a .jsonl file." + recorded,
        ),
        click.option(
            "--features",
            "features",
            multiple=True,
            type=click.Path(path_type=Path, dir_okay=False),
            help="Feature store written by img-extract; repeat it for shards read as one." + recorded,
        ),
        click.option(
            "--visual",
            default=None,
            help="Visual feature name in the store, e.g. i3d-charades-vslnet; several joined by ',' are read as one, "
            "concatenated in that order on the first one's steps (clip,slowfast: 512 + 2304 = 2816-d)." + recorded,
        ),
        click.option("--audio", default=None, help="Audio feature name in the store, e.g. panns." + recorded),
        click.option(
            "--text",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="Text store written by img-extract text (GloVe ids or token features)." + recorded,
        ),
        click.option(
            "--data-dir",
            type=click.Path(path_type=Path, file_okay=False),
            default=None,
            help="Folder of the annotation files (default $IMG_DATA_DIR or ~/.cache/img-vmr/annotations).",
        ),
        click.option(
            "--align",
            type=click.Choice(["img", "time"]),
            default=None,
            help="Audio onto the visual rows by IMG's index rule (img, default) or by time overlap (time)." + recorded,
        ),
        click.option(
            "--strict",
            is_flag=True,
            default=None,
            help="Queries without features or text are an error (default: left out, listed in one line).",
        ),
        click.option(
            "--cache-features",
            is_flag=True,
            default=None,
            help="Read every video's features into memory first (default: read from HDF5 as needed).",
        ),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def runtime_options(workers: int, precision: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--device, --precision, --workers, --threads, --no-progress, --verbose; `workers` and `precision`: what the
    command does when they are not given (for the help)."""
    options = [
        click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N."),
        precision_option(precision),
        click.option(
            "--workers",
            type=click.IntRange(0, MAX_WORKERS),
            default=None,
            help=f"DataLoader worker processes ({workers}); at most the CPUs this process may use and the batches "
            "of a pass (one line says so when fewer run).",
        ),
        click.option(
            "--threads",
            type=click.IntRange(0, MAX_THREADS),
            default=None,
            help="torch CPU threads (default: torch's choice).",
        ),
        click.option("--no-progress", is_flag=True, help="No progress bars."),
        click.option("-v", "--verbose", is_flag=True, help="Debug messages."),
    ]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate
