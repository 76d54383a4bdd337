"""The batch order of a training run: replayable per epoch from the seed alone (exact resume), shared among the
processes of a distributed run, and the steps of an epoch after which the run evaluates."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from img_model.distributed import BatchShare, batch_share
from img_model.runtime import SINGLE_PROCESS, RankContext


class EpochBatches(Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index) keys: epoch e's order is a permutation seeded by (seed, e), so any epoch can be
    replayed, and started from any batch (`skip`), without a saved sampler state. The last batch may be short
    (the authors' loader keeps it). In a distributed run every process walks the same batches and yields its
    share of each (`share`)."""

    def __init__(self, size: int, batch_size: int, seed: int, rank: RankContext = SINGLE_PROCESS) -> None:
        self.size, self.batch_size, self.seed, self.rank = size, batch_size, seed, rank
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def batches_per_epoch(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def share(self, number: int) -> BatchShare:
        """This process's rows of batch `number` (0-based) of an epoch."""
        return batch_share(min(self.batch_size, self.size - number * self.batch_size), self.rank)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        for number in range(self.skip, self.batches_per_epoch()):
            first = number * self.batch_size
            yield self.share(number).take([(self.epoch, int(i)) for i in order[first : first + self.batch_size]])

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.skip


def evaluation_steps(batches_per_epoch: int, evals_per_epoch: int) -> list[int]:
    """Steps within an epoch (1-based) after which to evaluate: N//2 and N for two per epoch (§4.7)."""
    n = batches_per_epoch
    return sorted({n * k // evals_per_epoch for k in range(1, evals_per_epoch + 1)} - {0})
