"""Distributed data-parallel training under torchrun: the same run as one process, on N processes.

    torchrun --standalone --nproc-per-node 4 -m img_model.cli.train --dataset ... --out RUN

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; `start_process_group` joins them (NCCL on
GPUs, one GPU per process: the one of its LOCAL_RANK; gloo on CPUs). The run is the one-process run at the same
(global) batch size, up to floating-point noise:

- every process walks the same batches in the same order (trainer.EpochBatches) and takes a contiguous share of
  each batch's rows (`batch_share`); a process left without rows (a last batch smaller than the number of
  processes) computes row 0 with weight 0;
- each part is padded to the whole batch's lengths (padded steps change outputs, §7.12), and the model computes
  the rows of the whole batch it holds (model.BatchRows: the batch-index encoding, dropout masks and slot noise of
  those rows of the whole batch);
- the loss is the process's share of the batch's loss (losses.BatchScope); DistributedDataParallel averages the
  gradients over the processes, so each process scales its share by their number;
- evaluation splits the batches of a split over the processes and gathers the predictions in order
  (evaluator.Evaluator), so metrics are the one-process ones;
- rank 0 alone logs, writes checkpoints, metrics and TensorBoard; every process reads last.pt on --resume (the
  run folder must be on a filesystem every process sees), with any number of processes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

import torch
from torch import nn

from extract.core.errors import UsageError
from img_model.network.layers import BatchRows
from img_model.runtime import SINGLE_PROCESS, RankContext

log = logging.getLogger(f"img_vmr.{__name__}")


def launched_rank() -> RankContext:
    """This process's rank as torchrun set it in the environment; one process of one when not under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE_PROCESS
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    return RankContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")), local_world_size)


def process_device(spec: str, rank: RankContext) -> str:
    """The --device of this process: in a distributed run every process takes the GPU of its LOCAL_RANK, so a
    machine needs a GPU per process (auto: all processes on the CPU otherwise, the same choice everywhere)."""
    if not rank.distributed or spec == "cpu":
        return spec
    gpus = torch.cuda.device_count()
    if spec == "auto":
        return f"cuda:{rank.local_rank}" if gpus >= rank.local_world_size else "cpu"
    if spec != "cuda":
        raise UsageError(
            f"--device {spec}: under torchrun each process takes the GPU of its LOCAL_RANK; use --device cuda (or "
            "auto, cpu) and choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    if gpus < rank.local_world_size:
        fix = f"--nproc-per-node {gpus} or --device cpu" if gpus else "--device cpu"
        raise UsageError(
            f"--device cuda: {rank.local_world_size} processes on this machine but {gpus} GPU(s) visible; use {fix}"
        )
    return f"cuda:{rank.local_rank}"


def start_process_group(rank: RankContext, device_spec: str) -> None:
    """Join the processes of a torchrun launch (nothing to do in one process)."""
    if not rank.distributed:
        return
    import torch.distributed as dist

    device = process_device(device_spec, rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    log.info("distributed: %d processes (%s); this is rank %d", rank.world_size, backend, rank.rank)


def stop_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def data_parallel(model: nn.Module, rank: RankContext, device: torch.device) -> nn.Module:
    """The module that trains: `model` itself in one process, wrapped in DistributedDataParallel otherwise. The
    buffers are constants (no broadcast per forward); the graph is the same every step (static_graph), which also
    covers parameters a configuration never uses (slot_log_std with slot_noise = "never")."""
    if not rank.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False, static_graph=True)


@dataclass(frozen=True)
class BatchShare:
    """This process's rows start : start + count of a training batch of `total` samples."""

    start: int
    count: int
    total: int

    @property
    def weight(self) -> float:
        """1, or 0 for a process without rows: it computes a stand-in row (row 0) that must not count."""
        return 1.0 if self.count else 0.0

    @cached_property  # one object per share: torch.compile guards on the rows the model reads
    def rows(self) -> BatchRows | None:
        """The rows the model computes; None when they are the whole batch."""
        return None if self.count == self.total else BatchRows(self.start if self.count else 0, self.total)

    def take(self, keys: list[Any]) -> list[Any]:
        """This process's part of the batch's item keys."""
        return keys[self.start : self.start + self.count] if self.count else keys[:1]


@cache
def batch_share(total: int, rank: RankContext) -> BatchShare:
    """Contiguous, balanced shares: the first total % world_size processes take one row more."""
    base, extra = divmod(total, rank.world_size)
    start = rank.rank * base + min(rank.rank, extra)
    return BatchShare(start, base + (rank.rank < extra), total)


def evaluation_batches(size: int, batch_size: int, rank: RankContext) -> list[list[int]]:
    """The batches of an evaluation this process computes: batch k of the one-process order goes to process
    k % world_size, whole, so each query is padded and positioned in its batch as in one process."""
    starts = range(rank.rank * batch_size, size, rank.world_size * batch_size)
    return [list(range(start, min(start + batch_size, size))) for start in starts]


def in_batch_order(per_process: list[list[list[Any]]], world_size: int) -> list[Any]:
    """The items of every process's evaluation batches (`evaluation_batches`), flattened in the one-process order."""
    batches = sum(len(batches) for batches in per_process)
    return [item for number in range(batches) for item in per_process[number % world_size][number // world_size]]
