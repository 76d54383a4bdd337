"""The one writer of a store: it takes the writer lock, checks provenance and commits videos in immutable parts."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from extract.core.errors import ProvenanceMismatchError, StoreCorruptError, UsageError
from extract.core.files import acquire_writer_lock, check_writable, release_writer_lock
from extract.core.provenance import compare_recipes
from extract.store.parts import PART_GLOB, list_parts, next_part_name, parts_dir, write_error, write_part
from extract.store.reader import FeatureStore
from extract.store.records import FailureRecord, VideoRecord


class StoreWriter:
    """The one writer of a store: takes the lock, checks provenance, commits videos in immutable parts.

    `committed_videos` / `committed_failures` count what really reached the disk; a commit that fails raises
    StoreWriteError and keeps its records pending, so a later commit (after space was freed) writes them.
    """

    def __init__(self, store_path: str | os.PathLike[str], provenance: Mapping[str, Mapping[str, Any]]) -> None:
        self.path = Path(store_path)
        self.parts_dir = parts_dir(self.path)
        self.provenance = {name: dict(record) for name, record in provenance.items()}
        self._pending_videos: list[VideoRecord] = []
        self._pending_failures: list[FailureRecord] = []
        self._sequence = 0
        self._lock_handle: Any = None
        self._newest_part: str | None = None
        self.committed_parts: list[Path] = []
        self.committed_videos = 0
        self.committed_failures = 0
        self._open()

    def _open(self) -> None:
        if self.path.exists() and self.path.is_dir():
            raise UsageError(f"--out {self.path} is a directory; give a file name such as {self.path}/feats.h5")
        if self.path.exists() and not self.parts_dir.is_dir():
            raise UsageError(f"--out {self.path} exists and is not an img-vmr store; choose another --out")
        try:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            check_writable(self.parts_dir)
        except OSError as error:
            raise UsageError(
                f"cannot write the store at {self.path} ({error.strerror}); choose a writable --out"
            ) from None
        self._lock()
        for stale in self.parts_dir.glob(PART_GLOB + ".tmp"):
            stale.unlink(missing_ok=True)
        existing = list_parts(self.parts_dir)
        self._newest_part = existing[-1].name if existing else None

    def _lock(self) -> None:
        self._lock_handle = acquire_writer_lock(self.parts_dir, self.path)

    def check_provenance(self, existing: FeatureStore | None) -> None:
        """Refuse to add features whose recipe differs from the one the store's tracks of that name were made with."""
        if existing is None:
            return
        recipes = existing.recipes()
        for name, record in self.provenance.items():
            if name not in recipes:
                continue
            detail = compare_recipes(recipes[name], record["recipe"]).refused
            if detail:
                raise ProvenanceMismatchError(
                    f"{self.path} already holds {name!r} features made differently ({detail}); "
                    "use another --out to keep both"
                )

    def add_video(self, record: VideoRecord) -> None:
        self._pending_videos.append(record)

    def add_failure(self, record: FailureRecord) -> None:
        self._pending_failures.append(record)

    @property
    def pending(self) -> int:
        return len(self._pending_videos) + len(self._pending_failures)

    def commit(self) -> Path | None:
        """Write everything pending as one part; return its path (None when nothing was pending).

        StoreWriteError (one line: the store and the cause) when the disk refuses; the records stay pending.
        """
        if not self.pending:
            return None
        self._sequence += 1
        part = self.parts_dir / next_part_name(self._newest_part, self._sequence)
        writer = {"writer_pid": os.getpid(), "writer_host": socket.gethostname(), "committed_at": time.time()}
        try:
            write_part(part, self._pending_videos, self._pending_failures, self.provenance, writer)
        except OSError as error:
            raise write_error(self.path, error) from None
        self._newest_part = part.name
        self.committed_videos += len(self._pending_videos)
        self.committed_failures += len(self._pending_failures)
        self._pending_videos, self._pending_failures = [], []
        self.committed_parts.append(part)
        return part

    def close(self) -> None:
        """Commit what is pending, rebuild the index, release the lock."""
        try:
            self.commit()
            with contextlib.suppress(StoreCorruptError), FeatureStore(self.path) as store:
                store.write_index()
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Release the lock without committing (used when the run is interrupted by an error)."""
        release_writer_lock(self._lock_handle)
        self._lock_handle = None


class PartWriter(StoreWriter):
    """Commits parts into a store whose writer lock another process holds (the parent of several workers).

    It takes no lock, leaves the `.tmp` files of the other writers alone (each part's temporary name carries its
    writer's pid) and writes no index: the lock holder builds it once, when every worker is done.
    """

    def _open(self) -> None:
        if not self.parts_dir.is_dir():
            raise StoreCorruptError(f"{self.path}: no {self.parts_dir.name}/ beside it; its lock holder creates it")
        existing = list_parts(self.parts_dir)
        self._newest_part = existing[-1].name if existing else None

    def close(self) -> None:
        """Commit what is pending (the index is the lock holder's)."""
        self.commit()
