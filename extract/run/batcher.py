"""Batches of model units filled across videos.

Units arrive per (video, feature) in pieces of any size; a batch of a feature takes them first in, first out,
splitting a piece at the batch edge, so a batch holds the units of many short videos (one 30-s Charades video
at 1 fps fills half of a 64-frame batch) and a long video streams through many batches. The keys are opaque:
an engine passes its work items, tests pass strings.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from extract.models.base import Units

K = TypeVar("K", bound=Hashable)


@dataclass
class Piece(Generic[K]):
    key: K
    units: Units


@dataclass
class UnitBatch(Generic[K]):
    """Units of one feature from one or more keys, in arrival order."""

    feature: str
    pieces: list[Piece[K]]

    def __len__(self) -> int:
        return sum(len(piece.units) for piece in self.pieces)

    def inputs(self) -> np.ndarray:
        return np.concatenate([piece.units.inputs for piece in self.pieces])

    def split(self, rows: np.ndarray) -> list[tuple[Piece[K], np.ndarray]]:
        """The rows of the whole batch handed back to the piece each belongs to."""
        out, offset = [], 0
        for piece in self.pieces:
            out.append((piece, rows[offset : offset + len(piece.units)]))
            offset += len(piece.units)
        return out


class Batcher(Generic[K]):
    """Queues units per feature and hands them out in batches of at most `batch_sizes[feature]` units."""

    def __init__(self, batch_sizes: Mapping[str, int]) -> None:
        if any(size < 1 for size in batch_sizes.values()):
            raise ValueError(f"batch sizes must be positive, got {dict(batch_sizes)}")
        self._sizes = dict(batch_sizes)
        self._queues: dict[str, deque[Piece[K]]] = {name: deque() for name in batch_sizes}
        self._counts = dict.fromkeys(batch_sizes, 0)

    def add(self, feature: str, key: K, units: Units) -> None:
        if len(units):
            self._queues[feature].append(Piece(key, units))
            self._counts[feature] += len(units)

    def pending(self, feature: str | None = None) -> int:
        return self._counts[feature] if feature is not None else sum(self._counts.values())

    def full_batches(self) -> list[UnitBatch[K]]:
        """Every batch that can be filled completely now."""
        return [self._take(name) for name, size in self._sizes.items() for _ in range(self._counts[name] // size)]

    def all_batches(self) -> list[UnitBatch[K]]:
        """Everything queued, in batches (the last of each feature may be partial)."""
        return [
            self._take(name)
            for name, size in self._sizes.items()
            for _ in range(-(-self._counts[name] // size))  # ceil
        ]

    def drop(self, key: K, features: Iterable[str] | None = None) -> int:
        """Forget the queued units of `key` (for some features, or all); return how many were dropped."""
        dropped = 0
        for name in self._sizes if features is None else features:
            queue = self._queues[name]
            kept = deque(piece for piece in queue if piece.key != key)
            removed = self._counts[name] - sum(len(piece.units) for piece in kept)
            self._queues[name], self._counts[name] = kept, self._counts[name] - removed
            dropped += removed
        return dropped

    def _take(self, feature: str) -> UnitBatch[K]:
        queue, room, pieces = self._queues[feature], self._sizes[feature], []
        while queue and room:
            piece = queue[0]
            if len(piece.units) <= room:
                pieces.append(queue.popleft())
            else:
                units = piece.units
                pieces.append(Piece(piece.key, Units(units.inputs[:room], units.spans[:room])))
                queue[0] = Piece(piece.key, Units(units.inputs[room:], units.spans[room:]))
            room -= len(pieces[-1].units)
        self._counts[feature] -= self._sizes[feature] - room
        return UnitBatch(feature, pieces)
