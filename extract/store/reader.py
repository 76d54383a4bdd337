"""The HDF5 feature store: immutable part files plus an index, written crash-safely, read lazily.

Layout for `--out feats.h5` (docs/store.md, "Layout"):

    feats.h5                     index: links every current track (HDF5 external links) for h5py users
    feats.h5.parts/
        writer.lock              held (flock) by the one process writing (or compacting) the store
        part-<utc>-<host>-<pid>-<seq>.h5    committed parts, never modified after the rename
        part-....h5.tmp          a part being written; ignored by readers, removed by the next writer

A part (extract/store/parts.py) holds videos, failure records and the provenance of its features; the writer
(extract/store/writer.py) commits parts whole. The parts are the truth, read in name order with later parts
winning (extract/store/catalog.py); the index is rebuilt from them, and readers scan the parts directly, so a
store whose index is stale or missing is still complete.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import h5py

from extract.core.errors import StoreCorruptError, StoreReadError
from extract.core.files import write_atomically
from extract.media.probe import stored_duration
from extract.store.catalog import Catalog, TrackRef, VideoEntry
from extract.store.ids import escape_id
from extract.store.parts import (
    STORE_FORMAT,
    STORE_FORMAT_VERSION,
    DamagedPart,
    cannot_read,
    check_is_store,
    hdf5_image,
    list_parts,
    open_part,
    parts_dir,
    read_attrs,
    read_part,
    write_attrs,
    write_error,
    write_failures,
)
from extract.store.records import FailureRecord, Track

MAX_OPEN_PARTS = 64
_SCAN_ATTEMPTS = 5

T = TypeVar("T")


class OpenParts:
    """The parts a reader holds open: at most `limit` at once, the least recently used closed first, and half of
    them given back when the process runs out of file descriptors."""

    def __init__(self, limit: int = MAX_OPEN_PARTS) -> None:
        self.limit = max(1, limit)
        self._handles: OrderedDict[Path, h5py.File] = OrderedDict()

    def get(self, part: Path) -> h5py.File:
        handle = self._handles.get(part)
        if handle is not None:
            self._handles.move_to_end(part)
            return handle
        while len(self._handles) >= self.limit:
            self._handles.popitem(last=False)[1].close()
        try:
            handle = open_part(part)
        except StoreReadError:
            if not self._handles:
                raise
            for _ in range((len(self._handles) + 1) // 2):
                self._handles.popitem(last=False)[1].close()
            handle = open_part(part)
        except DamagedPart as damage:
            raise StoreCorruptError(f"{part}: damaged since it was scanned ({damage})") from None
        self._handles[part] = handle
        return handle

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __len__(self) -> int:
        return len(self._handles)

    def __iter__(self) -> Iterator[Path]:
        return iter(self._handles)

    def values(self) -> list[h5py.File]:
        return list(self._handles.values())


class FeatureStore:
    """Read-only view of a store: list videos, read one track at a time (nothing else is loaded).

    At most `max_open_files` parts are open at once (least recently used closed first). A part removed by a
    compaction after the scan makes the reader scan again, so readers never see a half-compacted store.
    `parts` reads an explicit list of part files instead (in precedence order, later wins), e.g. the parts of
    several shard stores as one view.
    """

    def __init__(
        self,
        store_path: str | os.PathLike[str],
        *,
        parts: Sequence[Path] | None = None,
        max_open_files: int = MAX_OPEN_PARTS,
    ) -> None:
        self.path = Path(store_path)
        self.parts_dir = parts_dir(self.path)
        self._given_parts = None if parts is None else [Path(p) for p in parts]
        self.max_open_files = max(1, max_open_files)
        self._open_files = OpenParts(self.max_open_files)
        self._scan()

    @classmethod
    def exists(cls, store_path: str | os.PathLike[str]) -> bool:
        return parts_dir(store_path).is_dir()

    # --- scanning ----------------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._catalog = Catalog()
        self.parts: list[Path] = []
        self.corrupt_parts: list[tuple[Path, str]] = []

    def _scan(self) -> None:
        if self._given_parts is None:
            check_is_store(self.path)
        for _ in range(_SCAN_ATTEMPTS):
            self._reset()
            try:
                self.parts = list_parts(self.parts_dir) if self._given_parts is None else list(self._given_parts)
            except OSError as error:
                raise cannot_read(self.parts_dir, error) from None
            try:
                for order, part in enumerate(self.parts):
                    try:
                        self._catalog.apply(read_part(part), part, order)
                    except DamagedPart as damage:
                        self.corrupt_parts.append((part, str(damage)))
            except FileNotFoundError as error:
                if self._given_parts is not None:
                    raise StoreReadError(f"{error.filename}: no such part file") from None
                continue  # a compaction replaced parts between listing and opening them: list again
            self._catalog.settle()
            return
        raise StoreReadError(f"{self.path}: its parts kept changing while being read; try again")

    def _rescan(self) -> None:
        self.close()
        self._scan()

    # --- queries -----------------------------------------------------------------------------------------

    def video_ids(self) -> list[str]:
        return sorted(self._catalog.videos)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._catalog.videos

    def __len__(self) -> int:
        return len(self._catalog.videos)

    def metadata(self, video_id: str) -> dict[str, Any]:
        return dict(self._entry(video_id).metadata)

    def feature_names(self, video_id: str | None = None) -> list[str]:
        """Feature kinds with tracks in the store (or of one video)."""
        if video_id is None:
            return sorted({name for entry in self._catalog.videos.values() for name in entry.tracks})
        return sorted(self._entry(video_id).tracks)

    def provenance(self, feature: str) -> dict[str, Any]:
        """The recipe (everything that decides the numbers) of a feature kind, from the parts holding its tracks."""
        return self.provenance_record(feature)["recipe"]

    def provenance_record(self, feature: str) -> dict[str, Any]:
        """The full provenance (recipe, software, runtime) of the newest part holding tracks of `feature`."""
        if feature not in self._catalog.provenance:
            held = ", ".join(self._catalog.provenance) or "none"
            raise KeyError(f"{self.path}: holds no feature {feature!r} (has: {held})")
        return self._catalog.provenance[feature]

    def recipes(self) -> dict[str, dict[str, Any]]:
        """{feature: recipe} for every feature kind whose tracks carry provenance."""
        return {name: record["recipe"] for name, record in self._catalog.provenance.items()}

    def part_provenance(self, video_id: str, feature: str) -> dict[str, Any]:
        """Full provenance (recipe + software versions) of the part that holds this track."""
        ref = self._track_ref(video_id, feature)
        return self._catalog.part_provenance[ref.part].get(feature, {})

    def failures(self) -> list[FailureRecord]:
        """Current failures: each record's `features` narrowed to the tracks still failing (none held since)."""
        return self._catalog.failures()

    def failed_features(self, video_id: str, recipes: Mapping[str, str] | None = None) -> frozenset[str]:
        """Features of `video_id` whose latest outcome is a failure (Catalog.failed_features)."""
        return self._catalog.failed_features(video_id, recipes)

    def track_shape(self, video_id: str, feature: str) -> tuple[int, ...]:
        """Shape [T, D] of a track, read from the file's metadata without loading the rows."""
        return self._read(video_id, feature, lambda group: tuple(group["features"].shape))

    def track_nbytes(self, video_id: str, feature: str) -> int:
        """Bytes of a track's rows and timestamps, without loading them."""
        return self._read(video_id, feature, lambda group: group["features"].nbytes + group["timestamps"].nbytes)

    def track(self, video_id: str, feature: str) -> Track:
        """Read one track from disk: features [T, D], timestamps [T, 2] in seconds, and its attributes."""
        return self._read(
            video_id,
            feature,
            lambda group: Track(group["features"][()], group["timestamps"][()], read_attrs(group.attrs)),
        )

    def _read(self, video_id: str, feature: str, read: Callable[[h5py.Group], T]) -> T:
        ref = self._track_ref(video_id, feature)
        try:
            handle = self._file(ref.part)
        except FileNotFoundError:
            if self._given_parts is not None:
                raise StoreReadError(f"{ref.part}: no such part file") from None
            self._rescan()  # compacted since the scan: the same tracks now live in the new parts
            ref = self._track_ref(video_id, feature)
            handle = self._file(ref.part)
        return read(handle[f"videos/{escape_id(video_id)}/{feature}"])

    def _entry(self, video_id: str) -> VideoEntry:
        try:
            return self._catalog.videos[video_id]
        except KeyError:
            raise KeyError(f"{self.path}: no video {video_id!r}") from None

    def _track_ref(self, video_id: str, feature: str) -> TrackRef:
        tracks = self._entry(video_id).tracks
        if feature not in tracks:
            raise KeyError(f"{self.path}: video {video_id!r} has no {feature!r} track (has: {', '.join(tracks)})")
        return tracks[feature]

    def _file(self, part: Path) -> h5py.File:
        return self._open_files.get(part)

    def close(self) -> None:
        self._open_files.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the index ---------------------------------------------------------------------------------------

    def write_index(self) -> None:
        """Rebuild feats.h5 from the parts (atomic rename): one entry per video, external links to current tracks.

        Every linked part must exist (a link to a missing part reads as an error only later, in the user's code).
        """
        for attempt in range(2):
            linked = sorted({ref.part for entry in self._catalog.videos.values() for ref in entry.tracks.values()})
            missing = [part for part in linked if not part.exists()]
            if not missing:
                break
            if attempt or self._given_parts is not None:
                raise StoreCorruptError(f"{self.path}: part {missing[0]} holds tracks but no longer exists")
            self._rescan()
        image = hdf5_image(lambda f: _fill_index(f, self.path, self.parts_dir, self._catalog, linked))
        try:
            write_atomically(self.path, image)
        except OSError as error:
            raise write_error(self.path, error) from None


def _fill_index(f: h5py.File, path: Path, parts_folder: Path, catalog: Catalog, linked: list[Path]) -> None:
    """The index file: one entry per video, HDF5 external links to its current tracks, the provenance and the
    current failures."""
    folder = path.parent
    write_attrs(
        f.attrs,
        {
            "format": STORE_FORMAT + "-index",
            "format_version": STORE_FORMAT_VERSION,
            "parts_dir": os.path.relpath(parts_folder, folder),
            "parts": json.dumps([os.path.relpath(part, folder) for part in linked]),
        },
    )
    prov = f.create_group("provenance")
    for name, record in catalog.provenance.items():
        prov.attrs[name] = json.dumps(record["recipe"], sort_keys=True)
    videos = f.create_group("videos")
    for video_id, entry in sorted(catalog.videos.items()):
        name = escape_id(video_id)
        group = videos.create_group(name)
        write_attrs(group.attrs, entry.metadata)
        for feature, ref in entry.tracks.items():
            group[feature] = h5py.ExternalLink(os.path.relpath(ref.part, folder), f"/videos/{name}/{feature}")
    write_failures(f.create_group("failures"), catalog.failures(), catalog.provenance)


def iter_tracks(store: FeatureStore, feature: str) -> Iterator[tuple[str, Track]]:
    """Every video's track of one feature kind, one at a time."""
    for video_id in store.video_ids():
        if feature in store.feature_names(video_id):
            yield video_id, store.track(video_id, feature)


class VideoMetadata(Protocol):
    def video_ids(self) -> list[str]: ...
    def metadata(self, video_id: str) -> dict[str, Any]: ...


def video_durations(store: VideoMetadata) -> dict[str, float]:
    """{video_id: duration} of the videos of a store (or several read as one) whose metadata records one
    (extract/media/probe.py `stored_duration`): the durations of users' queries that give none."""
    durations = {video_id: stored_duration(store.metadata(video_id)) for video_id in store.video_ids()}
    return {video_id: duration for video_id, duration in durations.items() if duration is not None}
