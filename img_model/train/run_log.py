"""A run folder's metrics.jsonl read back (img-train's resume, img-pipeline's "is the run finished?"), without
importing torch."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

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
