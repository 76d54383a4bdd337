"""`--shard i/N`: which videos of a manifest one of N independent jobs extracts.

A video belongs to shard `blake2b(video id) mod N`: the same on every machine, Python version and run (Python's
own hash() of a string changes with every process), and independent of the manifest's order, so a Slurm job
array or a Kubernetes indexed job can give each task the whole manifest and its index. Adding videos to the
manifest never moves a video to another shard.

A store written by a `--shard i/N` run records which shard it holds (extract/store/shards.py).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from extract.core.errors import UsageError
from extract.store.shards import ShardRecord, read_shard_record, write_shard_record


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
