"""What a training run writes beside its checkpoints (config.toml, metrics.jsonl, TensorBoard scalars,
summary.txt), and metrics.jsonl read back (img-train's resume, img-pipeline's "is the run finished?") without
importing torch."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from extract.core.files import write_atomically

if TYPE_CHECKING:
    from img_model.train.config import TrainingRunConfig

log = logging.getLogger(f"img_vmr.{__name__}")


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
    the other ranks, writes nothing)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.writer: Any = None  # TensorBoard's SummaryWriter, once opened

    def open(self, run: TrainingRunConfig, step: int) -> None:
        """The run's config.toml; metrics.jsonl without the evaluations logged after `step` (a resume repeats them
        identically); a TensorBoard writer that drops the scalars logged after `step`."""
        from torch.utils.tensorboard import SummaryWriter

        from img_model.train.config import to_toml

        self.run_dir.mkdir(parents=True, exist_ok=True)
        header = f"img-train run {self.run_dir.name}: the resolved configuration"
        write_atomically(self.run_dir / "config.toml", to_toml(run, header=header))
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists():
            kept = [line for line, entry in metrics_lines(metrics) if entry.get("step", 0) <= step]
            write_atomically(metrics, "".join(line + "\n" for line in kept))
        for stale in self.run_dir.glob(".*.pt.*.tmp"):  # a checkpoint write a kill interrupted (never renamed)
            log.info("removing %s, a checkpoint write that was interrupted", stale.name)
            stale.unlink(missing_ok=True)
        # scalars logged after the checkpoint's step are dropped (they will be logged again); the step's own stay
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=step + 1 if step else None)

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}{name}", value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def log_metrics(self, entry: dict[str, Any]) -> None:
        """One line of metrics.jsonl (an evaluation, or the final line that marks the run finished)."""
        with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as out:
            out.write(json.dumps(entry) + "\n")

    def summary(self, text: str) -> None:
        write_atomically(self.run_dir / "summary.txt", text + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
