"""Where and in which precision training and evaluation run: the device, autocast, and the rank of this process.

`RankContext` is the seam for distributed training (torchrun, issue 11): one process of one today; a DDP run
gives each process its rank, and only rank 0 writes files and logs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from extract.errors import UsageError

log = logging.getLogger("img_vmr.train")

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str, precision: str = "fp32", threads: int = 0) -> torch.device:
    """auto / cpu / cuda / cuda:N as img-extract resolves it, checked against the precision; `threads` > 0 sets
    torch's CPU threads."""
    from extract.devices import resolve_device as resolve_extraction_device

    if threads:
        torch.set_num_threads(threads)
    device = resolve_extraction_device(spec)  # logs the device, GPU name and any nvidia-smi mismatch
    if precision == "fp16" and device.type != "cuda":
        raise UsageError(
            "--precision fp16 needs a CUDA GPU (it trains with a gradient scaler); use bf16 or fp32 on CPU"
        )
    log.info("precision: %s", precision)
    return device


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """torch.autocast for bf16 / fp16, nothing for fp32."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision]):
        yield


@dataclass(frozen=True)
class RankContext:
    """This process's place in a (possibly distributed) run."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = RankContext()
