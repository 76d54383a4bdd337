"""How a run behaves: batch sizes, parallelism, resume, commits (the CLI maps its flags onto this)."""

from __future__ import annotations

from dataclasses import dataclass

from extract.media.decode import STALL_TIMEOUT_S
from extract.run.shard import Shard


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
    shard: Shard | None = None  # --shard i/N: only the videos of shard i
    engine: str = "local"  # local | ray
    devices: tuple[str, ...] = ()  # local engine: one worker process per device (e.g. cuda:0, cuda:1); () = one
    ray_address: str | None = None  # Ray engine: the cluster (None: $RAY_ADDRESS, else a local one)
    ray_device: str = "auto"  # Ray engine: auto | cpu | cuda, resolved on each model actor
    attempts: int = 3  # Ray engine: tries per video when the worker decoding or embedding it is lost
