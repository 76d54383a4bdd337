"""What every img-extract command shares: logging, the one-line error, exit codes, option types and the
options several commands take. extract/cli.py and extract/text_cli.py both import from here (and not from
each other)."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2
EXIT_STOPPED = 3  # the run stopped before its end (store not writable, an internal error); finished work is kept
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as a shell reports them

WEIGHTS_DIR_HELP = (
    "Folder with model weights for offline use: published files by name, saved Hugging Face models as "
    "DIR/<name> (default $IMG_WEIGHTS_DIR or ~/.cache/img-vmr)."
)


def setup_logging(verbose: bool, program: str = "img-extract", quiet: bool = False) -> None:
    """Messages on stderr as "program: message" (debug messages too with --verbose; warnings and errors only when
    quiet). Every img-vmr command logs this way (img_model/cli_common.py passes img-train / img-eval)."""
    root = logging.getLogger("img_vmr")
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    console.setFormatter(logging.Formatter(f"{program}: %(message)s"))
    root.addHandler(console)


def fail(message: str, code: int = EXIT_USAGE, program: str = "img-extract") -> NoReturn:
    """The last line of a command that cannot go on: one line on stderr (whatever the message holds), then exit."""
    click.echo(f"{program}: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


class OneLineErrors(click.Group):
    """A group whose command-line mistakes (an unknown option, --fps nan) are one line, like every other error."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as error:
            error.show()
            sys.exit(error.exit_code)
        except click.ClickException as error:
            context = getattr(error, "ctx", None)
            hint = f" (see {context.command_path} --help)" if context is not None else ""
            fail(f"{error.format_message()}{hint}", error.exit_code)
        except click.Abort:
            fail("aborted", EXIT_INTERRUPTED)


class PositiveNumber(click.ParamType):
    """A finite number above zero, within [least, most] when given: nan, inf, 0, negative values and numbers outside
    the range are refused at parse time (a number that cannot work would fail every video, or never finish)."""

    name = "number"

    def __init__(self, least: float = 0.0, most: float = math.inf) -> None:
        self.least, self.most = least, most

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or number <= 0:
            self.fail(f"{value!r} is not a finite positive number", param, ctx)
        if not self.least <= number <= self.most:
            self.fail(f"{value!r} is not between {self.least:g} and {self.most:g}", param, ctx)
        return number


POSITIVE = PositiveNumber()
# Frames per second sampled: one frame every 1000 s at least (below, a video gives no frame at all), at most 240
# (high-speed footage; --fps 1e6 would make ffmpeg repeat every frame a million times a second, for hours).
FPS = PositiveNumber(0.001, 240.0)
# PANNs windows: Cnn14 needs 9,920 samples at 32 kHz (0.31 s); it was trained on AudioSet's 10-s clips (a larger
# window only costs memory: --audio-window 1e9 asked for 116 TiB).
AUDIO_WINDOW = PositiveNumber(0.31, 10.0)
AUDIO_HOP = PositiveNumber(0.01, 10.0)  # and at most the window (checked with the preset's window)
# Seconds per row of imported features: a millisecond to an hour.
ROW_SECONDS = PositiveNumber(0.001, 3600.0)
# Seconds without progress before a decoder or a Ray run is given up: less than 30 s would take a Ray worker
# process still starting (importing torch on a busy node) for a stall; a day is far beyond any real stall.
STALL_SECONDS = PositiveNumber(30.0, 86400.0)


def weights_dir_option(help_text: str = WEIGHTS_DIR_HELP) -> Callable[[Any], Any]:
    return click.option("--weights-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help=help_text)


def resume_option(what: str, redo: str) -> Callable[[Any], Any]:
    """--resume/--no-resume: skip `what` already in the output (the default), or `redo` everything."""
    return click.option(
        "--resume/--no-resume",
        default=True,
        show_default=True,
        help=f"Skip {what} already in the output (--no-resume {redo}).",
    )


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm or Kubernetes preemption), raised in the main thread so that finished work is committed
    on the way out, as for Ctrl-C."""


# Set by the SIGTERM handler: a library that catches the interrupt may raise a plain KeyboardInterrupt of its own
# instead (Ray turns a signal that arrives inside ray.get/ray.wait into one), so the type alone cannot tell.
_sigterm_received = threading.Event()


def is_sigterm(interrupt: BaseException) -> bool:
    """Whether an interrupt came from SIGTERM (exit 143) rather than Ctrl-C (exit 130)."""
    return isinstance(interrupt, Terminated) or _sigterm_received.is_set()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, the first SIGTERM raises Terminated in the main thread; later ones are ignored while
    the finished work is committed."""

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _sigterm_received.set()
        raise Terminated()

    _sigterm_received.clear()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
