"""How a run behaves: batch sizes, parallelism, resume, commits (the CLI maps its flags onto this)."""

from __future__ import annotations

from dataclasses import dataclass

from extract.decode import STALL_TIMEOUT_S


@dataclass(frozen=True)
class RunConfig:
    batch_size: int = 64
    workers: int = 2
    resume: bool = True
    retry_failed: bool = False
    limit: int | None = None
    commit_every: int = 32
    commit_seconds: float = 60.0
    progress: bool = True
    # A decode worker that makes no progress this long loses its video (failure records) and is replaced; longer
    # than the decoder's own watchdog, which normally fires first with a more precise reason.
    stall_seconds: float = STALL_TIMEOUT_S + 60.0
