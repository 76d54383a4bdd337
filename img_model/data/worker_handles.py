"""Objects opened lazily and per process (HDF5 stores): a DataLoader worker forked from the process that built a
dataset opens its own on first use and never touches the parent's (an h5py handle must not be shared across
fork); pickled for a spawn-started worker, they travel as what to open, without the opened objects.

Objects that reopen their files by themselves after `close()` (FeatureStore) can be kept in a fork
(`keep_in_fork`): a forked worker closes its inherited copies of the handles (in itself only; the parent's are
untouched) and reads through the parent's scan instead of scanning every part again (at 20,000 videos in 627
parts that took 5 s and 26 MiB per worker and per DataLoader)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar


class Closable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


class PerProcess(Generic[T]):
    """`open_one(source)` for each of `sources`, opened on first use in each process; `keep_in_fork`: a forked
    worker closes the parent's objects and keeps them (they must reopen their files on the next read)."""

    def __init__(self, open_one: Callable[[Any], T], sources: Sequence[Any], keep_in_fork: bool = False) -> None:
        self._open_one = open_one  # picklable (a class or module function) for spawn-started workers
        self.sources = tuple(sources)
        self.keep_in_fork = keep_in_fork
        self._owner: int | None = os.getpid()
        self._opened: list[T | None] = [None] * len(self.sources)

    def get(self, number: int = 0) -> T:
        """This process's object for source `number`, opened now if it is not yet."""
        if os.getpid() != self._owner:  # a forked worker (a spawned one has none): not the parent's handles
            self._owner = os.getpid()
            if self.keep_in_fork:
                for inherited in self._opened:
                    if inherited is not None:
                        inherited.close()  # this process's copies of the handles; the parent's are untouched
            else:
                self._opened = [None] * len(self.sources)
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
