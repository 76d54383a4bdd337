"""The HDF5 feature store: immutable part files plus an index, written crash-safely, read lazily.

Layout for `--out feats.h5` (README "Feature store"):

    feats.h5                     index: links every committed track (HDF5 external links) for h5py users
    feats.h5.parts/
        writer.lock              held (flock) by the one process writing the store
        part-<utc>-<host>-<pid>-<seq>.h5    committed parts, never modified after the rename
        part-....h5.tmp          a part being written; ignored by readers, removed by the next writer

A part holds whole videos (metadata + their tracks), failure records and the provenance of its features. It is
written under a temporary name, fsync'd, then renamed: a kill -9 loses at most the part being written. The
parts are the truth; the index is rebuilt from them at the end of every run, and readers scan the parts
directly, so a store whose index is stale or missing is still complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np

from extract.errors import (
    ProvenanceMismatchError,
    StoreCorruptError,
    StoreLockedError,
    StoreWriteError,
    UsageError,
)
from extract.ids import escape_id, storable_text, unescape_id

STORE_FORMAT = "img-vmr-feature-store"
STORE_FORMAT_VERSION = 1
PARTS_SUFFIX = ".parts"
PART_GLOB = "part-*.h5"
LOCK_NAME = "writer.lock"


@dataclass
class Track:
    """One feature track of one video: rows [T, D] and the [T, 2] start/end seconds each row covers."""

    features: np.ndarray
    timestamps: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class VideoRecord:
    """A finished video as the writer commits it: its metadata and one track per feature."""

    video_id: str
    metadata: dict[str, Any]
    tracks: dict[str, Track]


@dataclass
class FailureRecord:
    """A video that could not be extracted: which stage failed and the one-line reason."""

    video_id: str
    path: str
    stage: str
    error_type: str
    message: str
    features: tuple[str, ...] = ()
    time: float = field(default_factory=time.time)

    def as_attrs(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "path": self.path,
            "stage": self.stage,
            "error_type": self.error_type,
            "message": self.message,
            "features": ",".join(self.features),
            "time": self.time,
        }


def parts_dir(store_path: str | os.PathLike[str]) -> Path:
    path = Path(store_path)
    return path.with_name(path.name + PARTS_SUFFIX)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_attrs(target: h5py.AttributeManager, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        target[key] = "" if value is None else storable_text(value) if isinstance(value, str) else value


def _read_attrs(source: h5py.AttributeManager) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in source.items():
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        out[key] = value
    return out


def acquire_writer_lock(folder: Path, store: Path) -> IO[str]:
    """flock folder/writer.lock for the one writer of `store`; StoreLockedError naming the holder if taken."""
    handle = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the writer's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StoreLockedError(
            f"{store} is being written by {holder}; wait for it to finish or use another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    handle.flush()
    return handle


def release_writer_lock(handle: IO[str] | None) -> None:
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def write_part(
    path: Path,
    videos: Iterable[VideoRecord],
    failures: Iterable[FailureRecord],
    provenance: Mapping[str, Mapping[str, Any]],
    writer: Mapping[str, Any],
) -> None:
    """Write one immutable part: temporary name, fsync, atomic rename, fsync of the directory."""
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        _write_attrs(f.attrs, {"format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION, **writer})
        prov = f.create_group("provenance")
        for name, record in provenance.items():
            prov.attrs[name] = json.dumps(record, sort_keys=True)
        video_group = f.create_group("videos")
        for video in videos:
            group = video_group.create_group(escape_id(video.video_id))
            _write_attrs(group.attrs, {**video.metadata, "video_id": video.video_id})
            for name, track in video.tracks.items():
                track_group = group.create_group(name)
                track_group.create_dataset("features", data=track.features)
                track_group.create_dataset("timestamps", data=np.asarray(track.timestamps, np.float64))
                _write_attrs(track_group.attrs, track.attrs)
        failure_group = f.create_group("failures")
        for failure in failures:
            group = failure_group.create_group(escape_id(failure.video_id))
            _write_attrs(group.attrs, failure.as_attrs())
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


@dataclass
class _TrackRef:
    part: Path
    order: int


@dataclass
class _VideoEntry:
    metadata: dict[str, Any]
    tracks: dict[str, _TrackRef] = field(default_factory=dict)
    last_success: int = -1


class FeatureStore:
    """Read-only view of a store: list videos, read one track at a time (nothing else is loaded)."""

    def __init__(self, store_path: str | os.PathLike[str]) -> None:
        self.path = Path(store_path)
        self.parts_dir = parts_dir(self.path)
        self._videos: dict[str, _VideoEntry] = {}
        self._failures: dict[str, list[tuple[int, FailureRecord]]] = {}
        self._provenance: dict[str, dict[str, Any]] = {}
        self._part_provenance: dict[Path, dict[str, dict[str, Any]]] = {}
        self._open_files: dict[Path, h5py.File] = {}
        self.parts: list[Path] = []
        self.corrupt_parts: list[tuple[Path, str]] = []
        self._scan()

    @classmethod
    def exists(cls, store_path: str | os.PathLike[str]) -> bool:
        return parts_dir(store_path).is_dir()

    def _scan(self) -> None:
        if not self.parts_dir.is_dir():
            if self.path.exists():
                raise StoreCorruptError(f"{self.path}: no {self.parts_dir.name}/ beside it; not an img-vmr store")
            raise StoreCorruptError(f"{self.path}: no such feature store; run img-extract with --out {self.path}")
        self.parts = sorted(self.parts_dir.glob(PART_GLOB))
        for order, part in enumerate(self.parts):
            try:
                self._scan_part(part, order)
            except (OSError, KeyError, ValueError) as error:
                # A committed part is written atomically, so this means outside damage: report, keep the rest.
                self.corrupt_parts.append((part, str(error).splitlines()[0] if str(error) else type(error).__name__))

    def _scan_part(self, part: Path, order: int) -> None:
        with h5py.File(part, "r", locking=False) as f:
            if f.attrs.get("format") != STORE_FORMAT:
                raise ValueError("not an img-vmr store part")
            provenance = {name: json.loads(value) for name, value in f["provenance"].attrs.items()}
            self._part_provenance[part] = provenance
            held: set[str] = set()
            for name, group in f["videos"].items():
                video_id = unescape_id(name)
                entry = self._videos.setdefault(video_id, _VideoEntry(metadata={}))
                entry.metadata = _read_attrs(group.attrs)
                entry.last_success = order
                for track_name in group:
                    entry.tracks[track_name] = _TrackRef(part, order)
                    held.add(track_name)
            # A recipe is fixed by committed tracks: a part holding only failures does not decide it.
            for name in held & set(provenance):
                self._provenance.setdefault(name, provenance[name]["recipe"])
            for name, group in f["failures"].items():
                attrs = _read_attrs(group.attrs)
                features = tuple(x for x in str(attrs.get("features", "")).split(",") if x)
                record = FailureRecord(
                    video_id=unescape_id(name),
                    path=str(attrs.get("path", "")),
                    stage=str(attrs.get("stage", "")),
                    error_type=str(attrs.get("error_type", "")),
                    message=str(attrs.get("message", "")),
                    features=features,
                    time=float(attrs.get("time", 0.0)),
                )
                self._failures.setdefault(record.video_id, []).append((order, record))

    # --- queries -----------------------------------------------------------------------------------------

    def video_ids(self) -> list[str]:
        return sorted(self._videos)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._videos

    def __len__(self) -> int:
        return len(self._videos)

    def metadata(self, video_id: str) -> dict[str, Any]:
        return dict(self._entry(video_id).metadata)

    def feature_names(self, video_id: str | None = None) -> list[str]:
        if video_id is None:
            tracks = {name for entry in self._videos.values() for name in entry.tracks}
            return sorted(tracks | set(self._provenance))
        return sorted(self._entry(video_id).tracks)

    def provenance(self, feature: str) -> dict[str, Any]:
        """The recipe (everything that decides the numbers) of a feature kind, as stored once per part."""
        if feature not in self._provenance:
            raise KeyError(f"{self.path}: holds no feature {feature!r} (has: {', '.join(self._provenance) or 'none'})")
        return self._provenance[feature]

    def part_provenance(self, video_id: str, feature: str) -> dict[str, Any]:
        """Full provenance (recipe + software versions) of the part that holds this track."""
        ref = self._track_ref(video_id, feature)
        return self._part_provenance[ref.part].get(feature, {})

    def has_features(self, video_id: str, features: Iterable[str]) -> bool:
        entry = self._videos.get(video_id)
        return entry is not None and all(name in entry.tracks for name in features)

    def failures(self) -> list[FailureRecord]:
        """Current failures, each narrowed to the tracks still failing (a later part holding a track supersedes
        the failure of that track; a record naming no features fails the whole video until a later success)."""
        current = []
        for video_id, records in sorted(self._failures.items()):
            entry = self._videos.get(video_id)
            for order, record in records:
                if not record.features:
                    if entry is None or entry.last_success < order:
                        current.append(record)
                    continue
                still = tuple(name for name in record.features if self._still_failing(entry, name, order, records))
                if still:
                    current.append(dataclasses.replace(record, features=still))
        return current

    def failed_features(self, video_id: str) -> frozenset[str]:
        """The features of a video whose latest outcome is a failure."""
        records = self._failures.get(video_id, [])
        entry = self._videos.get(video_id)
        return frozenset(
            name
            for order, record in records
            for name in record.features
            if self._still_failing(entry, name, order, records)
        )

    @staticmethod
    def _still_failing(
        entry: _VideoEntry | None, name: str, order: int, records: list[tuple[int, FailureRecord]]
    ) -> bool:
        track = entry.tracks.get(name) if entry is not None else None
        if track is not None and track.order >= order:
            return False
        return not any(later > order and name in other.features for later, other in records)

    def track_shape(self, video_id: str, feature: str) -> tuple[int, ...]:
        """Shape [T, D] of a track, read from the file's metadata without loading the rows."""
        ref = self._track_ref(video_id, feature)
        return tuple(self._file(ref.part)["videos"][escape_id(video_id)][feature]["features"].shape)

    def track(self, video_id: str, feature: str) -> Track:
        """Read one track from disk: features [T, D], timestamps [T, 2] in seconds, and its attributes."""
        ref = self._track_ref(video_id, feature)
        group = self._file(ref.part)["videos"][escape_id(video_id)][feature]
        return Track(group["features"][()], group["timestamps"][()], _read_attrs(group.attrs))

    def _entry(self, video_id: str) -> _VideoEntry:
        try:
            return self._videos[video_id]
        except KeyError:
            raise KeyError(f"{self.path}: no video {video_id!r}") from None

    def _track_ref(self, video_id: str, feature: str) -> _TrackRef:
        tracks = self._entry(video_id).tracks
        if feature not in tracks:
            raise KeyError(f"{self.path}: video {video_id!r} has no {feature!r} track (has: {', '.join(tracks)})")
        return tracks[feature]

    def _file(self, part: Path) -> h5py.File:
        if part not in self._open_files:
            self._open_files[part] = h5py.File(part, "r", locking=False)
        return self._open_files[part]

    def close(self) -> None:
        for handle in self._open_files.values():
            handle.close()
        self._open_files.clear()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the index ---------------------------------------------------------------------------------------

    def write_index(self) -> None:
        """Rebuild feats.h5 from the parts (atomic rename): video metadata and external links to the tracks."""
        tmp = self.path.with_name("." + self.path.name + f".{os.getpid()}.tmp")
        relative = os.path.relpath(self.parts_dir, self.path.parent)
        with h5py.File(tmp, "w") as f:
            _write_attrs(
                f.attrs,
                {
                    "format": STORE_FORMAT + "-index",
                    "format_version": STORE_FORMAT_VERSION,
                    "parts_dir": relative,
                    "parts": json.dumps([p.name for p in self.parts]),
                },
            )
            prov = f.create_group("provenance")
            for name, recipe in self._provenance.items():
                prov.attrs[name] = json.dumps(recipe, sort_keys=True)
            videos = f.create_group("videos")
            for video_id, entry in sorted(self._videos.items()):
                name = escape_id(video_id)
                group = videos.create_group(name)
                _write_attrs(group.attrs, entry.metadata)
                for feature, ref in entry.tracks.items():
                    target = f"{relative}/{ref.part.name}"
                    group[feature] = h5py.ExternalLink(target, f"/videos/{name}/{feature}")
            failures = f.create_group("failures")
            for record in self.failures():
                group = failures.create_group(escape_id(record.video_id))
                _write_attrs(group.attrs, record.as_attrs())
        os.replace(tmp, self.path)


class StoreWriter:
    """The one writer of a store: takes the lock, checks provenance, commits videos in immutable parts."""

    def __init__(self, store_path: str | os.PathLike[str], provenance: Mapping[str, Mapping[str, Any]]) -> None:
        self.path = Path(store_path)
        self.parts_dir = parts_dir(self.path)
        self.provenance = {name: dict(record) for name, record in provenance.items()}
        self._pending_videos: list[VideoRecord] = []
        self._pending_failures: list[FailureRecord] = []
        self._sequence = 0
        self._lock_handle: Any = None
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
            probe = self.parts_dir / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise UsageError(
                f"cannot write the store at {self.path} ({error.strerror}); choose a writable --out"
            ) from None
        self._lock()
        for stale in self.parts_dir.glob(PART_GLOB + ".tmp"):
            stale.unlink(missing_ok=True)

    def _lock(self) -> None:
        self._lock_handle = acquire_writer_lock(self.parts_dir, self.path)

    def check_provenance(self, existing: FeatureStore | None) -> None:
        """Refuse to add features whose recipe differs from what the store already holds under that name."""
        if existing is None:
            return
        for name, record in self.provenance.items():
            if name not in existing.feature_names():
                continue
            stored = existing.provenance(name)
            if stored != record["recipe"]:
                changed = sorted(
                    k for k in set(stored) | set(record["recipe"]) if stored.get(k) != record["recipe"].get(k)
                )
                detail = ", ".join(f"{k}: {stored.get(k)!r} -> {record['recipe'].get(k)!r}" for k in changed[:3])
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
        """Write everything pending as one part; return its path (None when nothing was pending)."""
        if not self.pending:
            return None
        self._sequence += 1
        now = time.time()  # one clock read; microseconds truncated so that names sort in commit order
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now * 1e6) % 1_000_000:06d}"
        host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:32]
        part = self.parts_dir / f"part-{stamp}-{host}-{os.getpid()}-{self._sequence:06d}.h5"
        writer = {"writer_pid": os.getpid(), "writer_host": socket.gethostname(), "committed_at": time.time()}
        try:
            write_part(part, self._pending_videos, self._pending_failures, self.provenance, writer)
        except OSError as error:  # the records stay pending; nothing half-written stays behind
            part.with_name(part.name + ".tmp").unlink(missing_ok=True)
            raise StoreWriteError(f"cannot write a part of {self.path}: {_os_reason(error)}") from error
        self.committed_videos += len(self._pending_videos)
        self.committed_failures += len(self._pending_failures)
        self._pending_videos, self._pending_failures = [], []
        self.committed_parts.append(part)
        return part

    def close(self) -> None:
        """Commit what is pending, rebuild the index, release the lock."""
        try:
            self.commit()
            try:
                with contextlib.suppress(StoreCorruptError), FeatureStore(self.path) as store:
                    store.write_index()
            except OSError as error:
                for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                    stale.unlink(missing_ok=True)
                raise StoreWriteError(
                    f"the parts of {self.path} are committed but its index could not be rebuilt ({_os_reason(error)}); "
                    "readers scan the parts, and the next run rebuilds it"
                ) from error
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Release the lock without committing (used when the run is interrupted by an error)."""
        release_writer_lock(self._lock_handle)
        self._lock_handle = None


def _os_reason(error: OSError) -> str:
    """One line for an OSError, also for h5py's multi-line ones ("no space left on device")."""
    if error.errno:
        return os.strerror(error.errno).lower()
    return (str(error).splitlines() or [type(error).__name__])[0]


def iter_tracks(store: FeatureStore, feature: str) -> Iterator[tuple[str, Track]]:
    """Every video's track of one feature kind, one at a time."""
    for video_id in store.video_ids():
        if feature in store.feature_names(video_id):
            yield video_id, store.track(video_id, feature)
