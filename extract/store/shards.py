"""Which shards of an N-way split (`img-extract --shard i/N`, extract/run/shard.py) a store holds: recorded in
`shard.json` beside its parts, with the shards merged into it later, so that `img-extract merge` refuses shards of
different N and names the shards not merged yet (a missing shard cannot silently leave its videos out)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from extract.core.errors import StoreCorruptError
from extract.core.files import write_atomically

SHARD_RECORD = "shard.json"  # in the store's parts folder


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
