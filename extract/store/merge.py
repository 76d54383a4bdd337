"""`img-extract merge`: the stores that shards of one extraction wrote (`--shard i/N`) joined into one store.

The shards are read as one view (FeatureStore over all their parts, in the order given: a video held by two
shards comes from the last one) and written into OUT as new parts by store_compact's plan_merge/write_merged,
then OUT's index is built. Shards whose tracks of a feature were made with different recipes are refused before
anything is written. While merging, the writer locks of OUT and of every shard are held, so a shard that is
still being written is refused with one line naming its writer. Parts OUT held before are merged too (they
rank first) and removed once the new parts and the index are in place, as `compact` does.

Shard runs record their shard (extract/store/shards.py): shards of different N are refused, and the shards of the
split that OUT does not hold yet are named (OUT records those it holds, so they can be merged into it later).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from extract.core.errors import ProvenanceMismatchError, StoreCorruptError, StoreWriteError, UsageError
from extract.core.files import LOCK_NAME, acquire_writer_lock, fsync_path, release_writer_lock
from extract.core.provenance import compare_recipes
from extract.store.compact import DEFAULT_PART_BYTES, plan_merge, write_merged
from extract.store.parts import PART_GLOB, check_is_store, list_parts, parts_dir, write_error
from extract.store.reader import FeatureStore
from extract.store.shards import ShardRecord, read_shard_record, write_shard_record

log = logging.getLogger(f"img_vmr.{__name__}")


@dataclass
class MergeReport:
    out: Path
    shards: list[Path]
    written: list[Path]
    videos: int
    failures: int
    duplicates: int  # videos held by more than one shard (the last shard listed wins)
    damaged: list[tuple[Path, str]]  # unreadable parts of the shards: their videos are not in OUT
    missing_shards: str = ""  # shards of the split (e.g. "1/4, 3/4") OUT does not hold yet
    unrecorded: list[Path] = field(default_factory=list)  # stores that record no shard (the check is not possible)


def _check_shard_recipes(shards: list[Path]) -> None:
    """Refuse shards whose features were made with different recipes, naming the two shards and the difference."""
    seen: dict[str, tuple[Path, dict]] = {}
    for shard in shards:
        with FeatureStore(shard) as store:
            recipes = store.recipes()
        for name, recipe in recipes.items():
            first, known = seen.setdefault(name, (shard, recipe))
            detail = compare_recipes(known, recipe).refused
            if detail:
                raise ProvenanceMismatchError(
                    f"{first} and {shard} hold {name!r} features made differently ({detail}); "
                    "merge only the shards of one extraction"
                )


def _shards_held(shards: list[Path], out: Path, folder: Path) -> tuple[ShardRecord | None, list[Path]]:
    """What OUT will hold of a --shard i/N split (None when no store records a shard), and the stores that record
    none. Shards of different N are refused: a video's shard depends on N, so they would miss or repeat videos."""
    own = read_shard_record(folder)
    records = {shard: read_shard_record(parts_dir(shard)) for shard in shards}
    known = [(shard, record) for shard, record in records.items() if record is not None]
    if own is not None:
        known.insert(0, (out, own))
    if not known:
        return None, []
    first, reference = known[0]
    for shard, record in known[1:]:
        if record.count != reference.count:
            raise UsageError(
                f"{first} holds shard {reference.names(reference.indices)} and {shard} shard "
                f"{record.names(record.indices)}: they split the videos differently; merge the shards of one "
                f"--shard i/N split"
            )
    indices = frozenset().union(*(record.indices for _, record in known))
    return ShardRecord(reference.count, indices), [shard for shard, record in records.items() if record is None]


def merge_stores(
    shards: list[Path], out: Path, part_bytes: int = DEFAULT_PART_BYTES, progress: bool = False
) -> MergeReport:
    if not shards:
        raise UsageError("name the shard stores to merge, e.g. img-extract merge feats-*.h5 --out feats.h5")
    named = [shard.resolve() for shard in shards]
    twice = next((shard for shard, where in zip(shards, named, strict=True) if named.count(where) > 1), None)
    if twice is not None:
        raise UsageError(f"{twice} is named twice; name each shard once")
    for shard in shards:
        check_is_store(shard)
    if out.resolve() in named:
        raise UsageError(f"--out {out} is one of the shards; merge into a new store")
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise UsageError(f"--out {out} should end in .h5 (the store's index file)")
    if out.exists() and not parts_dir(out).is_dir():
        raise UsageError(f"--out {out} exists and is not an img-vmr store; choose another --out")
    folder = parts_dir(out)
    locks: list[IO[str]] = []
    created = False  # OUT's folder is this merge's: a merge that does not finish removes it
    try:
        for shard in shards:  # a shard still being written is refused with its writer's name
            locks.append(acquire_writer_lock(parts_dir(shard), shard))
        _check_shard_recipes(shards)
        created = _make_folder(folder, out)
        locks.append(acquire_writer_lock(folder, out))
        return _merge(shards, out, folder, part_bytes, progress)
    except BaseException:
        if created and len(locks) == len(shards) + 1:  # only while holding OUT's lock: no other writer is in it
            _remove_if_unused(folder)
        raise
    finally:
        for lock in locks:
            release_writer_lock(lock)


def _make_folder(folder: Path, out: Path) -> bool:
    """Create OUT's parts folder; whether this call created it (False: it was there)."""
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return False
    except OSError as error:
        raise UsageError(f"cannot write the store at {out} ({error.strerror}); choose a writable --out") from None
    return True


def _remove_if_unused(folder: Path) -> None:
    """Remove a parts folder that holds nothing but its writer lock (a merge into it that did not finish)."""
    try:
        if set(os.listdir(folder)) <= {LOCK_NAME}:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()
    except OSError as error:
        log.warning("could not remove %s (%s); it holds nothing", folder, error.strerror)


def _merge(shards: list[Path], out: Path, folder: Path, part_bytes: int, progress: bool) -> MergeReport:
    for stale in folder.glob(PART_GLOB + ".tmp"):
        stale.unlink(missing_ok=True)
    held, unrecorded = _shards_held(shards, out, folder)
    own = list_parts(folder)
    holders: dict[str, int] = {}
    for shard in shards:
        with FeatureStore(shard) as store:
            for video_id in store.video_ids():
                holders[video_id] = holders.get(video_id, 0) + 1
    parts = own + [part for shard in shards for part in list_parts(parts_dir(shard))]
    with FeatureStore(out, parts=parts) as view:
        damaged = list(view.corrupt_parts)
        plan = plan_merge(view, part_bytes)
        try:
            written = write_merged(view, folder, plan, progress)
        except OSError as error:
            raise write_error(out, error) from None
        videos, failures = len(view), len(view.failures())
    try:
        with FeatureStore(out, parts=written) as merged:
            merged.write_index()
    except (StoreCorruptError, StoreWriteError):  # OUT's earlier parts and index stay as they were
        for part in written:
            part.unlink(missing_ok=True)
        raise
    for part in own:
        part.unlink(missing_ok=True)
    write_shard_record(folder, held if held is not None and not unrecorded else None)
    fsync_path(folder)
    duplicates = sum(count > 1 for count in holders.values())
    missing = held.names(held.missing()) if held is not None else ""
    return MergeReport(out, list(shards), written, videos, failures, duplicates, damaged, missing, unrecorded)
