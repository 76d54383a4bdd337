"""What every img-vmr command shares on the console: logging, the one-line error, exit codes, the click classes
that make command-line mistakes one line too, SIGTERM as an interrupt, and how a probability is printed.

Every module logs to `img_vmr.` + its dotted name (img_vmr.extract.run.engine_local), so that a command can show
or hide a package's lines by name. Every command (img-extract, img-train, img-eval, img-predict, img-pipeline)
logs through `setup_logging` as
"program: message" on stderr (its full log, tracebacks included, in a file when it keeps one), ends with `fail`
when it cannot go on, and is a `CommandGroup` or `OneLineCommand`: an unknown option is one line, the same
style and exit status (2) as every other usage error.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import math
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_STOPPED = 3  # the run stopped before its end (store not writable, an internal error); finished work is kept
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, 128 + SIGTERM, as a shell reports them

ROOT_LOGGER = "img_vmr"
_program: list[str] = []  # the name setup_logging was given: what fail() says by default
LOG_FORMAT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"


def setup_logging(program: str, verbose: bool = False, quiet: bool = False, log_file: Path | None = None) -> None:
    """Messages on stderr as "program: message" (debug messages too with `verbose`; warnings and errors only when
    `quiet`, as the processes of a distributed run other than rank 0 log); the full log in `log_file` when given."""
    _program[:] = [program]
    root = logging.getLogger(ROOT_LOGGER)
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    console.setFormatter(logging.Formatter(f"{program}: %(message)s"))
    root.addHandler(console)
    if log_file is not None:
        attach_log_file(log_file)


class LogFile(logging.FileHandler):
    """Appends every message to a file, opened by the first one. When the file cannot be written (a full disk)
    it goes quiet instead of printing a logging traceback per message; the console still has what matters."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8", errors="backslashreplace", delay=True)
        self.broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.broken = True


def attach_log_file(path: Path) -> logging.Handler:
    """Log everything of img-vmr (debug level, tracebacks) to `path` too (OUT.parts/extract.log, RUN/train.log);
    remove the handler to stop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = LogFile(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger(ROOT_LOGGER).addHandler(handler)
    return handler


def fail(message: str, code: int = EXIT_USAGE, program: str | None = None) -> NoReturn:
    """The last line of a command that cannot go on: one line on stderr (whatever the message holds), then exit.
    `program` defaults to the name the command set up its logging with (img-extract, img-train, ...)."""
    program = program or (_program[0] if _program else "img-vmr")
    click.echo(f"{program}: error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def format_probability(value: float | None, digits: int = 3) -> str:
    """A probability or importance as a person reads it: `digits` decimals, "< 0.001" (for 3 digits) when it is
    above 0 but would round to zero (a collapsed audio-importance head predicts ~1e-17, which "0.000" hides),
    "0" when it is exactly 0, and "n/a" when there is none (None or NaN: a model without the head)."""
    if value is None or math.isnan(value):
        return "n/a"
    if value == 0:
        return "0"
    smallest = 10.0**-digits
    if 0 < value < smallest:
        return f"< {smallest:.{digits}f}"
    return f"{value:.{digits}f}"


class OneLineErrors:
    """A click command whose command-line mistakes (an unknown option, --fps nan) are one line under the
    command's name, like every other error; mixed into CommandGroup and OneLineCommand."""

    name: str | None

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        try:
            return super().main(*args, standalone_mode=False, **kwargs)  # type: ignore[misc]
        except click.exceptions.NoArgsIsHelpError as error:
            error.show()
            sys.exit(error.exit_code)
        except click.ClickException as error:
            context = getattr(error, "ctx", None)
            hint = f" (see {context.command_path} --help)" if context is not None else ""
            fail(f"{error.format_message()}{hint}", error.exit_code, self.name)
        except click.Abort:
            fail("aborted", EXIT_INTERRUPTED, self.name)


class OneLineCommand(OneLineErrors, click.Command):
    """A single command (img-eval, img-pipeline) with one-line usage errors."""


class CommandGroup(OneLineErrors, click.Group):
    """A command with subcommands and one-line usage errors; `default` is the subcommand that runs when the first
    word names none (img-extract VIDEOS runs `run`). With `default_takes_words=False` the default subcommand takes
    options only, so a first word that is no command is a mistyped command, said in one line."""

    def __init__(self, *args: Any, default: str | None = None, default_takes_words: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.default, self.default_takes_words = default, default_takes_words

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if self.default and args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            if not self.default_takes_words and not args[0].startswith("-"):
                close = difflib.get_close_matches(args[0], list(self.commands), n=1)
                hint = f"did you mean {close[0]}?" if close else f"the commands are {', '.join(self.commands)}"
                fail(f"no command {args[0]!r}; {hint}", EXIT_USAGE, self.name)
            args = [self.default, *args]
        return super().parse_args(ctx, args)


# --- SIGTERM --------------------------------------------------------------------------------------------------


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
