"""`--shard i/N`: which videos of a manifest one of N independent jobs extracts.

A video belongs to shard `blake2b(video id) mod N`: the same on every machine, Python version and run (Python's
own hash() of a string changes with every process), and independent of the manifest's order, so a Slurm job
array or a Kubernetes indexed job can give each task the whole manifest and its index. Adding videos to the
manifest never moves a video to another shard.

A store written by a `--shard i/N` run records which shard it holds (`shard.json` beside its parts, with the
shards merged into it later): `img-extract merge` refuses shards of different N and names the shards not merged
yet, so that a missing shard cannot silently leave its videos out of the merged store.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from extract.core.errors import StoreCorruptError, UsageError
from extract.core.files import write_atomically

SHARD_RECORD = "shard.json"  # in the store's parts folder


def shard_of(video_id: str, count: int) -> int:
    """The shard (0 .. count-1) of a video id; ids that are not valid UTF-8 hash by their original bytes."""
    digest = hashlib.blake2b(video_id.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(f"--shard {self.index}/{self.count}: need 0 <= i < N, e.g. --shard 0/{max(self.count, 2)}")

    def holds(self, video_id: str) -> bool:
        return self.count == 1 or shard_of(video_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'i/N' -> Shard(i, N); a one-line UsageError otherwise."""
        match = re.fullmatch(r"\s*([0-9]+)\s*/\s*([0-9]+)\s*", text)  # ASCII digits: not '²' nor '٣'
        if match is None:
            raise UsageError(f"--shard {text!r} is not i/N (e.g. --shard 0/4 for the first of four jobs)")
        return cls(int(match[1]), int(match[2]))


@dataclass(frozen=True)
class ShardRecord:
    """Which shards of an N-way split a store holds: one for a `--shard i/N` run, more after merges."""

    count: int
    indices: frozenset[int]

    def missing(self) -> list[int]:
        return [index for index in range(self.count) if index not in self.indices]

    def names(self, indices: Iterable[int]) -> str:
        return ", ".join(f"{index}/{self.count}" for index in sorted(indices))


def read_shard_record(parts_folder: Path) -> ShardRecord | None:
    """The shards a store holds, from its parts folder; None for a store not written by shard runs."""
    path = parts_folder / SHARD_RECORD
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        record = ShardRecord(int(data["count"]), frozenset(int(index) for index in data["indices"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        damage = f"{path} is damaged ({type(error).__name__}); delete it if the store is whole"
        raise StoreCorruptError(damage) from None
    if record.count < 1 or not all(0 <= index < record.count for index in record.indices):
        raise StoreCorruptError(f"{path} names shards outside 0..N-1; delete it if the store is whole")
    return record


def write_shard_record(parts_folder: Path, record: ShardRecord | None) -> None:
    """Write (atomically) or, for a store that now holds every shard (or None), remove the record."""
    path = parts_folder / SHARD_RECORD
    if record is None or not record.missing():
        path.unlink(missing_ok=True)
        return
    text = json.dumps({"count": record.count, "indices": sorted(record.indices)})
    write_atomically(path, text)


def record_run_shard(store: Path, parts_folder: Path, shard: Shard | None, has_parts: bool) -> None:
    """Check a run's --shard against what its store holds, and record it: a store of shard runs takes only
    shard runs of the same N; a new store run with --shard records its shard."""
    recorded = read_shard_record(parts_folder)
    if shard is None or shard.count == 1:
        if recorded is not None:
            raise UsageError(
                f"{store} holds shard {recorded.names(recorded.indices)} of a split extraction; run with --shard "
                f"i/{recorded.count}, or merge the shards (img-extract merge) and extract into the merged store"
            )
        return
    if recorded is None:
        if not has_parts:  # a store that already holds videos of a whole run is not a shard's
            write_shard_record(parts_folder, ShardRecord(shard.count, frozenset({shard.index})))
        return
    if recorded.count != shard.count:
        raise UsageError(
            f"{store} holds shard {recorded.names(recorded.indices)}; --shard {shard} splits the videos another way "
            f"(a video's shard depends on N): use --shard i/{recorded.count} or another --out"
        )
    if shard.index not in recorded.indices:
        write_shard_record(parts_folder, ShardRecord(shard.count, recorded.indices | {shard.index}))
