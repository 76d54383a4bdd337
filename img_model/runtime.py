"""Where training and evaluation run: the device (their precision: extract/core/precision.py) and the rank.

`RankContext` is this process's place in a distributed run (torchrun, img_model/distributed.py) and the
collectives over its processes: identities in one process, so the training and evaluation code has one path.
Only rank 0 writes files and logs.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from extract.core.child_process import end_with_parent
from extract.core.devices import resolve_device

log = logging.getLogger(f"img_vmr.{__name__}")

T = TypeVar("T")


def runtime_device(spec: str, threads: int = 0) -> torch.device:
    """auto / cpu / cuda / cuda:N as every command resolves it (extract/core/devices.py: logged with its GPU);
    `threads` > 0 sets torch's CPU threads."""
    if threads:
        torch.set_num_threads(threads)
    return resolve_device(spec)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a Slurm or container limit), or the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loader_workers(asked: int, batches: int, what: str) -> dict[str, Any]:
    """DataLoader options for `batches` batches of `what` on `asked` worker processes: at most the CPUs this
    process may use and the batches (one line says so when fewer run: workers = 100000 forked until the OOM killer
    ended the run and other users' jobs), persistent, and each ending with its parent process even when the parent
    is killed with SIGKILL (otherwise they would linger, holding the parent's files)."""
    cpus = usable_cpus()
    workers = max(0, min(asked, cpus, batches))
    if workers < asked:
        reason = f"the CPUs this process may use: {cpus}" if cpus <= batches else f"its batches: {batches}"
        log.info("%d DataLoader workers asked for; %d run for %s (%s)", asked, workers, what, reason)
    options: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0}
    if workers:
        options["worker_init_fn"] = functools.partial(_end_with_parent, os.getpid())
    return options


def _end_with_parent(parent_pid: int, worker_id: int) -> None:
    """A DataLoader worker's first step: SIGKILL when the parent dies (it holds nothing worth saving)."""
    if not end_with_parent(parent_pid, signal.SIGKILL):
        os._exit(1)  # the parent died while this worker started


@dataclass(frozen=True)
class RankContext:
    """This process's place in a (possibly distributed) run, and the collectives over the run's processes (the
    process group must be started, img_model/distributed.py, when world_size > 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the process's index on its machine: its GPU
    local_world_size: int = 1  # processes on this machine

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over the processes (a new tensor; `tensor` itself in one process)."""
        return self._all_reduce(tensor, "SUM")

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        """The elementwise maximum of `tensor` over the processes."""
        return self._all_reduce(tensor, "MAX")

    def _all_reduce(self, tensor: torch.Tensor, operation: str) -> torch.Tensor:
        if not self.distributed:
            return tensor
        import torch.distributed as dist

        reduced = tensor.detach().clone()
        dist.all_reduce(reduced, op=getattr(dist.ReduceOp, operation))
        return reduced

    def gather(self, value: T) -> list[T]:
        """Every process's `value` (picklable), in rank order, on every process."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        """Wait until every process is here (after rank 0 wrote a file the others read)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()


SINGLE_PROCESS = RankContext()
