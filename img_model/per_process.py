"""Objects opened lazily and per process (HDF5 stores): a DataLoader worker forked from the process that built a
dataset opens its own on first use and never touches the parent's (an h5py handle must not be shared across
fork); pickled for a spawn-started worker, they travel as what to open, without the opened objects."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar


class Closable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


class PerProcess(Generic[T]):
    """`open_one(source)` for each of `sources`, opened on first use in each process."""

    def __init__(self, open_one: Callable[[Any], T], sources: Sequence[Any]) -> None:
        self._open_one = open_one  # picklable (a class or module function) for spawn-started workers
        self.sources = tuple(sources)
        self._owner: int | None = os.getpid()
        self._opened: list[T | None] = [None] * len(self.sources)

    def get(self, number: int = 0) -> T:
        """This process's object for source `number`, opened now if it is not yet."""
        if os.getpid() != self._owner:  # a forked (or spawned) worker: forget the parent's objects
            self._owner, self._opened = os.getpid(), [None] * len(self.sources)
        opened = self._opened[number]
        if opened is None:
            opened = self._opened[number] = self._open_one(self.sources[number])
        return opened

    def all(self) -> list[T]:
        return [self.get(number) for number in range(len(self.sources))]

    def close(self) -> None:
        """Close this process's objects (they open again on the next `get`)."""
        if os.getpid() == self._owner:
            for opened in self._opened:
                if opened is not None:
                    opened.close()
        self._owner, self._opened = os.getpid(), [None] * len(self.sources)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_opened": [None] * len(self.sources), "_owner": None}
