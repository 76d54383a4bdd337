"""What a training run writes beside its checkpoints (config.toml, metrics.jsonl, TensorBoard scalars,
summary.txt), and metrics.jsonl read back (img-train's resume, img-pipeline's "is the run finished?") without
importing torch.

Every file is written whole or not at all (a temporary name renamed into place; a metrics line appended whole or
truncated away), and an OSError while writing (a full disk) is one OutputWriteError line saying what could not be
written and which checkpoint holds the run so far.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extract.core.errors import OutputWriteError, cannot_write
from extract.core.files import write_atomically

if TYPE_CHECKING:
    from img_model.train.config import TrainingRunConfig

log = logging.getLogger(f"img_vmr.{__name__}")

REFIT_FOLDER = "refit"  # RUN/refit/: the refit run of a run with train.refit (img_model/train/session.py)


def metrics_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """metrics.jsonl's lines with their entries; a line torn by a kill while it was written is left out (it is
    after last.pt's step: a resume logs it again)."""
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            lines.append((line, json.loads(line)))
        except json.JSONDecodeError:
            if line.strip():
                log.warning("%s: left out a line torn by an interrupted write: %.60s", path, line)
    return lines


def has_final_line(run_dir: Path) -> bool:
    """img-train finished the run: its metrics.jsonl holds the "final" line (written after summary.txt)."""
    return any(entry.get("kind") == "final" for _, entry in metrics_lines(run_dir / "metrics.jsonl"))


def finished_summary(run_dir: Path, step: int) -> str | None:
    """The summary of a run whose last.pt (at `step`) it finished: metrics.jsonl holds a final line at that step.
    None when the run is not finished."""
    entries = [entry for _, entry in metrics_lines(run_dir / "metrics.jsonl")]
    if not any(entry.get("kind") == "final" and entry.get("step") == step for entry in entries):
        return None
    summary = run_dir / "summary.txt"
    return summary.read_text(encoding="utf-8").rstrip("\n") if summary.exists() else ""


class RunLog:
    """The files of a run folder that are not checkpoints, written by rank 0 (a RunLog that was not opened, as on
    the other ranks, writes nothing). `kept()` names the checkpoint that holds the run so far, for the line of a
    write that failed."""

    def __init__(self, run_dir: Path, kept: Callable[[], str] = lambda: "no checkpoint was written yet") -> None:
        self.run_dir = run_dir
        self.kept = kept
        self.writer: Any = None  # TensorBoard's SummaryWriter, once opened

    @contextlib.contextmanager
    def writing(self, what: str | Path) -> Iterator[None]:
        """An OSError within the block (a full disk) is one OutputWriteError line: what could not be written, and
        the checkpoint that holds the run so far (every file is written so that the previous one stays whole)."""
        try:
            yield
        except OSError as error:
            failure = cannot_write(str(what), self.run_dir, error)
            raise OutputWriteError(f"{failure}; {self.kept()}", failure.make_room) from None

    def open(self, run: TrainingRunConfig, step: int) -> None:
        """The run's config.toml; metrics.jsonl without the evaluations logged after `step` (a resume repeats them
        identically); a TensorBoard writer that drops the scalars logged after `step`."""
        from torch.utils.tensorboard import SummaryWriter

        from img_model.train.config import to_toml

        for stale in self.run_dir.glob(".*.tmp"):  # a write a kill interrupted (never renamed)
            log.info("removing %s, a write that was interrupted", stale.name)
            stale.unlink(missing_ok=True)
        header = f"img-train run {self.run_dir.name}: the resolved configuration"
        with self.writing(self.run_dir / "config.toml"):
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_atomically(self.run_dir / "config.toml", to_toml(run, header=header))
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():
            kept = [line for line, entry in metrics_lines(metrics) if entry.get("step", 0) <= step]
            with self.writing(metrics):  # all of it or none: a full disk keeps the file as it was
                write_atomically(metrics, "".join(line + "\n" for line in kept))
        # scalars logged after the checkpoint's step are dropped (they will be logged again); the step's own stay
        with self.writing(self.run_dir / "tensorboard"):
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=step + 1 if step else None)

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        if self.writer is not None:
            with self.writing(self.run_dir / "tensorboard"):
                for name, value in values.items():
                    self.writer.add_scalar(f"{prefix}{name}", value, step)

    def flush(self) -> None:
        if self.writer is not None:
            with self.writing(self.run_dir / "tensorboard"):
                self.writer.flush()

    def log_metrics(self, entry: dict[str, Any]) -> None:
        """One line of metrics.jsonl (an evaluation, or the final line that marks the run finished), appended whole
        or not at all (a full disk leaves no torn line)."""
        path = self.run_dir / "metrics.jsonl"
        with self.writing(path):
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

    def summary(self, text: str) -> None:
        with self.writing(self.run_dir / "summary.txt"):
            write_atomically(self.run_dir / "summary.txt", text + "\n")

    def close(self) -> None:
        """Close the TensorBoard writer at the end of a run (its last events written: a failure is the line)."""
        if self.writer is not None:
            with self.writing(self.run_dir / "tensorboard"):
                self.writer.close()
            self.writer = None

    def abandon(self) -> None:
        """Close the writer of a run stopped by an error: that error is the one the user sees."""
        if self.writer is not None:
            with contextlib.suppress(OSError):
                self.writer.close()
            self.writer = None
