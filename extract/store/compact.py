"""Merging parts: `img-extract compact` rewrites a store's many small parts as a few large ones.

`plan_merge` + `write_merged` write the current view of any FeatureStore (a store's parts, or the parts of
several shard stores given as one list) as new parts: every video's latest metadata, its current tracks with
the provenance of the part each came from, and its current failures narrowed per track. `compact` runs them on
one store under the writer lock and then removes the merged parts. Each step leaves a store that reads the same:

1. the new parts are renamed in after every old part (their names sort last), so a reader listing the folder
   now sees the old parts and the new ones, which restate the same view and win;
2. the index is rebuilt, linking the new parts;
3. the old parts are removed; a reader that scanned before and opens a removed part scans again.

A compaction that fails before step 3 (a full disk) removes the new parts again: the store is left as it was.

Damaged parts are left where they are (and reported), never merged away.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extract.core.errors import ProvenanceMismatchError, StoreCorruptError, StoreWriteError
from extract.core.files import acquire_writer_lock, fsync_path, release_writer_lock
from extract.core.provenance import compare_recipes
from extract.store.parts import (
    PART_GLOB,
    check_is_store,
    list_parts,
    next_part_name,
    parts_dir,
    write_error,
    write_part,
)
from extract.store.reader import FeatureStore
from extract.store.records import FailureRecord, VideoRecord

log = logging.getLogger(f"img_vmr.{__name__}")

DEFAULT_PART_BYTES = 512 * 2**20  # a new part is built in memory before it is written


@dataclass
class _Group:
    """Videos whose tracks agree on one provenance record per feature: they can share one part."""

    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    video_ids: list[str] = field(default_factory=list)

    def accepts(self, records: dict[str, dict[str, Any]]) -> bool:
        return all(self.provenance.get(name, record) == record for name, record in records.items())


@dataclass
class CompactReport:
    store: Path
    merged: list[Path]  # parts merged and removed
    written: list[Path]  # the new parts
    damaged: list[tuple[Path, str]]  # left in place
    videos: int
    failures: int
    bytes_before: int
    bytes_after: int


def _check_recipes(view: FeatureStore) -> None:
    """Refuse a view whose tracks of one feature were made with different recipes (e.g. shards of two runs)."""
    seen: dict[str, dict[str, Any]] = {}
    for video_id in view.video_ids():
        for name in view.feature_names(video_id):
            recipe = view.part_provenance(video_id, name).get("recipe")
            if recipe is None:
                continue
            detail = compare_recipes(seen.setdefault(name, recipe), recipe).refused
            if detail:
                raise ProvenanceMismatchError(
                    f"{view.path}: {name!r} tracks were made with different recipes (e.g. {video_id!r}: {detail}); "
                    "they cannot be merged into one store"
                )


def _group_videos(view: FeatureStore, failed_only: list[str]) -> list[_Group]:
    groups: list[_Group] = []
    for video_id in view.video_ids():
        records = {
            name: record for name in view.feature_names(video_id) if (record := view.part_provenance(video_id, name))
        }
        group = next((g for g in groups if g.accepts(records)), None)
        if group is None:
            group = _Group()
            groups.append(group)
        group.provenance.update(records)
        group.video_ids.append(video_id)
    if failed_only:
        if not groups:
            groups.append(_Group())
        groups[0].video_ids.extend(failed_only)
    return groups


def _chunks(view: FeatureStore, video_ids: list[str], part_bytes: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for video_id in video_ids:
        names = view.feature_names(video_id) if video_id in view else []
        nbytes = sum(view.track_nbytes(video_id, name) for name in names)
        if chunk and size + nbytes > part_bytes:
            yield chunk
            chunk, size = [], 0
        chunk.append(video_id)
        size += nbytes
    if chunk:
        yield chunk


def plan_merge(view: FeatureStore, part_bytes: int = DEFAULT_PART_BYTES) -> list[_Group]:
    """The new parts that would hold the view: videos grouped by provenance, at most ~part_bytes of tracks each.

    Each video goes into exactly one new part, whole. ProvenanceMismatchError when the view mixes recipes.
    """
    _check_recipes(view)
    failed_only = sorted({r.video_id for r in view.failures()} - set(view.video_ids()))
    return [
        _Group(group.provenance, chunk)
        for group in _group_videos(view, failed_only)
        for chunk in _chunks(view, group.video_ids, part_bytes)
    ]


def write_merged(view: FeatureStore, out_dir: Path, plan: list[_Group], progress: bool = False) -> list[Path]:
    """Write the view as the planned parts in out_dir (named after every part there); return them.

    On any error the new parts written so far are removed again and the error (OSError) propagates.
    """
    from tqdm import tqdm

    failures: dict[str, list[FailureRecord]] = {}
    for record in view.failures():
        failures.setdefault(record.video_id, []).append(record)
    newest = max([p.name for p in view.parts] + [p.name for p in list_parts(out_dir)], default=None)
    writer = {
        "writer_pid": os.getpid(),
        "writer_host": socket.gethostname(),
        "committed_at": time.time(),
        "merged_from": len(view.parts),
    }
    written: list[Path] = []
    total = sum(len(part.video_ids) for part in plan)
    bar = tqdm(total=total, unit="video", desc="compact", disable=None if progress else True)

    def records(video_ids: list[str]) -> Iterator[VideoRecord]:
        for video_id in video_ids:
            if video_id in view:
                tracks = {name: view.track(video_id, name) for name in view.feature_names(video_id)}
                yield VideoRecord(video_id, view.metadata(video_id), tracks)
            bar.update()

    try:
        for planned in plan:
            part = out_dir / next_part_name(newest, len(written) + 1)
            part_failures = [r for video_id in planned.video_ids for r in failures.get(video_id, [])]
            write_part(part, records(planned.video_ids), part_failures, planned.provenance, writer)
            written.append(part)
            newest = part.name
    except BaseException:
        for part in written:
            with contextlib.suppress(OSError):
                part.unlink()
        raise
    finally:
        bar.close()
    return written


def compact(store_path: Path, part_bytes: int = DEFAULT_PART_BYTES, progress: bool = False) -> CompactReport:
    """Merge every readable part of a store into a few new ones, under the writer lock; see the module doc."""
    folder = parts_dir(store_path)
    check_is_store(store_path)
    lock = acquire_writer_lock(folder, store_path)
    try:
        for stale in folder.glob(PART_GLOB + ".tmp"):
            stale.unlink(missing_ok=True)
        with FeatureStore(store_path) as view:
            damaged = list(view.corrupt_parts)
            broken = {part for part, _ in damaged}
            sources = [part for part in view.parts if part not in broken]
            before = sum(part.stat().st_size for part in sources)
            videos, failures = len(view), len(view.failures())
            plan = plan_merge(view, part_bytes)
            if len(plan) >= len(sources):  # already as few parts as the content needs
                return CompactReport(store_path, [], [], damaged, videos, failures, before, before)
            try:
                written = write_merged(view, folder, plan, progress)
            except OSError as error:
                raise write_error(store_path, error) from None
        try:
            with FeatureStore(store_path, parts=written) as merged:  # the new parts alone hold the whole view
                merged.write_index()
        except (StoreCorruptError, StoreWriteError):  # the old parts and index still hold the store: step 1 undone
            for part in written:
                part.unlink(missing_ok=True)
            raise
        for part in sources:
            part.unlink(missing_ok=True)
        fsync_path(folder)
        after = sum(part.stat().st_size for part in written)
        return CompactReport(store_path, sources, written, damaged, videos, failures, before, after)
    finally:
        release_writer_lock(lock)
