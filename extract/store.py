"""The HDF5 feature store: immutable part files plus an index, written crash-safely, read lazily.

Layout for `--out feats.h5` (README "Feature store layout"):

    feats.h5                     index: links every current track (HDF5 external links) for h5py users
    feats.h5.parts/
        writer.lock              held (flock) by the one process writing (or compacting) the store
        part-<utc>-<host>-<pid>-<seq>.h5    committed parts, never modified after the rename
        part-....h5.tmp          a part being written; ignored by readers, removed by the next writer

A part holds videos (metadata + some or all of their tracks), failure records per (video, feature) and the
provenance of its features. It is built in memory, written under a temporary name, fsync'd, then renamed: a
kill -9 or a full disk loses at most the part being written, and HDF5 itself never writes to the disk (so a
failed write cannot leave the library holding a half-written file). The parts are the truth, read in name order
with later parts winning; the index is rebuilt from them, and readers scan the parts directly, so a store whose
index is stale or missing is still complete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import resource
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import h5py
import numpy as np

from extract.errors import (
    ProvenanceMismatchError,
    StoreCorruptError,
    StoreLockedError,
    StoreReadError,
    StoreWriteError,
    UsageError,
    cannot_write,
)
from extract.ids import escape_id, storable_text, unescape_id
from extract.record_differences import differences

STORE_FORMAT = "img-vmr-feature-store"
# 1: one failure record per video in /failures/<id> attrs. 2: records per (video, feature) in
# /failures/<id>/<feature> attrs (a record naming no feature stays on /failures/<id>). Readers take both.
STORE_FORMAT_VERSION = 2
PARTS_SUFFIX = ".parts"
PART_GLOB = "part-*.h5"
LOCK_NAME = "writer.lock"
MAX_OPEN_PARTS = 64
# JSON [[video id, metadata, [track names]], ...] of a part's videos: a scan reads it at once instead of one
# HDF5 attribute at a time (~0.2 ms each), which made opening a 10k-video store take a minute.
CATALOG = "catalog"
_STAMP_FORMAT = "%Y%m%dT%H%M%S.%f"
_SCAN_ATTEMPTS = 5
_CANNOT_OPEN_NOW = (errno.EMFILE, errno.ENFILE)

T = TypeVar("T")


@dataclass
class Track:
    """One feature track of one video: rows [T, D] and the [T, 2] start/end seconds each row covers."""

    features: np.ndarray
    timestamps: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class VideoRecord:
    """A video as the writer commits it: its metadata and the tracks computed for it (possibly not all)."""

    video_id: str
    metadata: dict[str, Any]
    tracks: dict[str, Track]


@dataclass
class FailureRecord:
    """Features of a video that could not be extracted: which stage failed and the one-line reason.

    `features` names the tracks that failed; a later part holding one of them supersedes the failure for that
    track only. A record naming no feature stands for the whole video (superseded by any later record of it).
    `recipes` ({feature: recipe_id}) are the recipes the features failed with: a new record leaves it None and the
    writer stamps each feature with the recipe its part records; a record read back keeps what it was written with
    ("" for records written before recipes were recorded), also through a compaction.
    """

    video_id: str
    path: str
    stage: str
    error_type: str
    message: str
    features: tuple[str, ...] = ()
    time: float = field(default_factory=time.time)
    recipes: Mapping[str, str] | None = field(default=None, compare=False)

    def reason_attrs(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "stage": self.stage,
            "error_type": self.error_type,
            "message": self.message,
            "time": self.time,
        }

    def as_attrs(self) -> dict[str, Any]:
        return {"video_id": self.video_id, **self.reason_attrs(), "features": ",".join(self.features)}


def recipe_id(recipe: Mapping[str, Any]) -> str:
    """A short, stable hash of a feature's recipe (everything that decides its numbers). Failure records carry it,
    so that a failure made with one recipe (a bad --fps) does not stop a run with another from trying again."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parts_dir(store_path: str | os.PathLike[str]) -> Path:
    path = Path(store_path)
    return path.with_name(path.name + PARTS_SUFFIX)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storable(value: Any) -> Any:
    return "" if value is None else storable_text(value) if isinstance(value, str) else value


def _write_attrs(target: h5py.AttributeManager, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        target[key] = _storable(value)


def _as_read_back(value: Any) -> Any:
    """A value as _read_attrs returns it after an HDF5 attribute round trip (so the catalog agrees with attrs)."""
    value = _storable(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | list | tuple):
        return np.asarray(value).tolist()
    return value


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


def acquire_writer_lock(
    folder: Path,
    store: Path,
    name: str = LOCK_NAME,
    wait_s: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> IO[str]:
    """flock folder/`name` for the one writer of `store`, waiting up to `wait_s` for its holder (`on_wait(holder)`
    is called once when it has to wait); StoreLockedError naming the holder if it is still taken."""
    handle = open(folder / name, "a+")  # noqa: SIM115 - held open for the writer's lifetime
    deadline = time.monotonic() + wait_s
    waiting = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if time.monotonic() >= deadline:
                handle.close()
                message = f"{store} is being written by {holder}; wait for it to finish or use another --out"
                raise StoreLockedError(message, holder) from None
            if on_wait is not None and not waiting:
                on_wait(holder)
            waiting = True
            time.sleep(0.2)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    handle.flush()
    return handle


def release_writer_lock(handle: IO[str] | None) -> None:
    if handle is not None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


# --- writing files -----------------------------------------------------------------------------------------


def write_error(store: Path, error: OSError) -> StoreWriteError:
    """The one-line StoreWriteError for an OSError met while writing `store` (e.g. no space left on device)."""
    return cannot_write(f"the feature store {store}", store.parent, error, StoreWriteError)


def save_atomically(path: Path, image: memoryview, tmp: Path | None = None) -> None:
    """Write bytes under a temporary name, fsync, rename over `path`, fsync the folder; no .tmp is left behind."""
    tmp = tmp or path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        try:
            remaining = image
            while remaining:
                remaining = remaining[os.write(fd, remaining) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def hdf5_image(fill: Callable[[h5py.File], None]) -> memoryview:
    """An HDF5 file built in memory; only save_atomically touches the disk."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    return buffer.getbuffer()


def _write_failures(
    parent: h5py.Group, failures: Iterable[FailureRecord], provenance: Mapping[str, Mapping[str, Any]]
) -> None:
    for record in failures:
        name = escape_id(record.video_id)
        group = parent[name] if name in parent else parent.create_group(name)
        group.attrs["video_id"] = storable_text(record.video_id)
        if not record.features:
            _write_attrs(group.attrs, record.as_attrs())
        for feature in record.features:
            if feature in group:
                del group[feature]
            if record.recipes is not None:
                recipe = record.recipes.get(feature, "")
            else:  # a new record: made with the recipe this part records for the feature
                made_with = provenance.get(feature, {}).get("recipe")
                recipe = recipe_id(made_with) if made_with is not None else ""
            _write_attrs(group.create_group(feature).attrs, {**record.reason_attrs(), "recipe": recipe})


def write_part(
    path: Path,
    videos: Iterable[VideoRecord],
    failures: Iterable[FailureRecord],
    provenance: Mapping[str, Mapping[str, Any]],
    writer: Mapping[str, Any],
) -> None:
    """Write one immutable part (OSError when the disk refuses; then no file is left behind)."""

    def fill(f: h5py.File) -> None:
        _write_attrs(f.attrs, {"format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION, **writer})
        prov = f.create_group("provenance")
        for name, record in provenance.items():
            prov.attrs[name] = json.dumps(record, sort_keys=True)
        video_group = f.create_group("videos")
        catalog = []
        for video in videos:
            group = video_group.create_group(escape_id(video.video_id))
            metadata = {**video.metadata, "video_id": video.video_id}
            _write_attrs(group.attrs, metadata)
            catalog.append([video.video_id, {k: _as_read_back(v) for k, v in metadata.items()}, list(video.tracks)])
            for name, track in video.tracks.items():
                track_group = group.create_group(name)
                track_group.create_dataset("features", data=track.features)
                track_group.create_dataset("timestamps", data=np.asarray(track.timestamps, np.float64))
                _write_attrs(track_group.attrs, track.attrs)
        f.create_dataset(CATALOG, data=np.frombuffer(json.dumps(catalog).encode(), np.uint8))
        _write_failures(f.create_group("failures"), failures, provenance)

    save_atomically(path, hdf5_image(fill))


def next_part_name(after: str | None, sequence: int) -> str:
    """A part name that sorts after `after` (the newest part there): later parts win even across clock skew."""
    now = datetime.now(UTC)
    if after is not None:
        with contextlib.suppress(ValueError, IndexError):
            previous = datetime.strptime(after.split("-")[1], _STAMP_FORMAT).replace(tzinfo=UTC)
            now = max(now, previous + timedelta(microseconds=1))
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:32]
    return f"part-{now.strftime(_STAMP_FORMAT)}-{host}-{os.getpid()}-{sequence:06d}.h5"


def check_is_store(store_path: Path) -> None:
    """StoreCorruptError saying what to do when store_path is not a feature store."""
    folder = parts_dir(store_path)
    if not folder.is_dir():
        if store_path.exists():
            raise StoreCorruptError(f"{store_path}: no {folder.name}/ beside it; not an img-vmr store")
        raise StoreCorruptError(f"{store_path}: no such feature store; run img-extract with --out {store_path}")


def list_parts(folder: Path) -> list[Path]:
    """The committed parts of a store, oldest first (the order in which later parts win)."""
    return sorted(folder.glob(PART_GLOB))


# --- reading parts -----------------------------------------------------------------------------------------


class _DamagedPart(Exception):
    """A part that opens but is not a readable img-vmr part (outside damage: parts are written atomically)."""


@dataclass
class _PartContents:
    provenance: dict[str, dict[str, Any]]
    videos: list[tuple[str, dict[str, Any], list[str]]]  # (video id, metadata, track names)
    failures: list[FailureRecord]


def _cannot_read(path: Path, error: OSError) -> StoreReadError:
    """The system refused to open or read `path` (not damage): say why and what to do."""
    reason = os.strerror(error.errno) if error.errno else str(error).splitlines()[0]
    reason = reason[:1].lower() + reason[1:]
    if error.errno in _CANNOT_OPEN_NOW:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return StoreReadError(
            f"cannot open {path} now: {reason} (this process may open {limit}); raise `ulimit -n` and try again"
        )
    return StoreReadError(f"cannot read {path}: {reason}")


def _open_part(part: Path) -> h5py.File:
    """Open a part read-only: FileNotFoundError if gone, StoreReadError if it cannot be opened now, else damaged."""
    try:
        return h5py.File(part, "r", locking=False)
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno is not None:  # the system refused (EMFILE, EACCES, EIO, ...), not the file's contents
            raise _cannot_read(part, error) from None
        raise _DamagedPart(str(error).splitlines()[0] or type(error).__name__) from None


def _failure_records(video_id: str, group: h5py.Group) -> list[FailureRecord]:
    def record(attrs: dict[str, Any], features: tuple[str, ...], recipes: dict[str, str]) -> FailureRecord:
        return FailureRecord(
            video_id,
            str(attrs.get("path", "")),
            str(attrs.get("stage", "")),
            str(attrs.get("error_type", "")),
            str(attrs.get("message", "")),
            features,
            float(attrs.get("time", 0.0)),
            recipes,
        )

    records = []
    attrs = _read_attrs(group.attrs)
    if "stage" in attrs:  # format 1, or a record naming no feature
        records.append(record(attrs, tuple(x for x in str(attrs.get("features", "")).split(",") if x), {}))
    by_reason: dict[tuple[Any, ...], dict[str, str]] = {}  # one record per reason: {feature: its recipe}
    for feature, sub in group.items():
        reason = _read_attrs(sub.attrs)
        recipe = str(reason.pop("recipe", ""))
        by_reason.setdefault(tuple(sorted(reason.items())), {})[feature] = recipe
    for reason, recipes in by_reason.items():
        records.append(record(dict(reason), tuple(recipes), recipes))
    return records


def _read_part(part: Path) -> _PartContents:
    handle = _open_part(part)
    try:
        with handle as f:
            if f.attrs.get("format") != STORE_FORMAT:
                raise _DamagedPart("not an img-vmr store part")
            version = int(f.attrs.get("format_version", 1))
            if version > STORE_FORMAT_VERSION:
                raise StoreReadError(
                    f"{part} is in store format {version}, newer than this img-vmr reads "
                    f"({STORE_FORMAT_VERSION}); upgrade img-vmr"
                )
            provenance = {name: json.loads(value) for name, value in f["provenance"].attrs.items()}
            if CATALOG in f:
                videos = [tuple(entry) for entry in json.loads(f[CATALOG][()].tobytes())]
            else:  # parts written before the catalog
                videos = [(unescape_id(n), _read_attrs(group.attrs), list(group)) for n, group in f["videos"].items()]
            failures = [r for name, group in f["failures"].items() for r in _failure_records(unescape_id(name), group)]
    except OSError as error:
        if error.errno is not None:
            raise _cannot_read(part, error) from None
        raise _DamagedPart(str(error).splitlines()[0] or type(error).__name__) from None
    except (KeyError, ValueError, TypeError) as error:
        raise _DamagedPart(str(error).splitlines()[0] if str(error) else type(error).__name__) from None
    return _PartContents(provenance, videos, failures)


@dataclass
class _TrackRef:
    part: Path
    order: int


@dataclass
class _VideoEntry:
    metadata: dict[str, Any]
    tracks: dict[str, _TrackRef] = field(default_factory=dict)
    order: int = -1  # the latest part holding a record of this video


@dataclass
class _Failing:
    order: int
    key: int  # tells the records of one part apart
    record: FailureRecord


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
        self.max_open_files = max(1, max_open_files)
        self._given_parts = None if parts is None else [Path(p) for p in parts]
        self._open_files: OrderedDict[Path, h5py.File] = OrderedDict()
        self._scan()

    @classmethod
    def exists(cls, store_path: str | os.PathLike[str]) -> bool:
        return parts_dir(store_path).is_dir()

    # --- scanning ----------------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._videos: dict[str, _VideoEntry] = {}
        self._track_failures: dict[str, dict[str, _Failing]] = {}
        self._video_failures: dict[str, _Failing] = {}
        self._part_provenance: dict[Path, dict[str, dict[str, Any]]] = {}
        self._provenance: dict[str, dict[str, Any]] = {}
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
                raise _cannot_read(self.parts_dir, error) from None
            try:
                for order, part in enumerate(self.parts):
                    try:
                        self._apply(_read_part(part), part, order)
                    except _DamagedPart as damage:
                        self.corrupt_parts.append((part, str(damage)))
            except FileNotFoundError as error:
                if self._given_parts is not None:
                    raise StoreReadError(f"{error.filename}: no such part file") from None
                continue  # a compaction replaced parts between listing and opening them: list again
            self._settle_provenance()
            return
        raise StoreReadError(f"{self.path}: its parts kept changing while being read; try again")

    def _apply(self, contents: _PartContents, part: Path, order: int) -> None:
        self._part_provenance[part] = contents.provenance
        # Failures first: a track in the same part as a failure of that feature wins.
        for key, record in enumerate(contents.failures):
            failing = _Failing(order, key, record)
            if not record.features:
                self._video_failures[record.video_id] = failing
            for feature in record.features:
                self._track_failures.setdefault(record.video_id, {})[feature] = failing
        for video_id, metadata, track_names in contents.videos:
            entry = self._videos.setdefault(video_id, _VideoEntry(metadata={}))
            entry.metadata, entry.order = metadata, order
            self._video_failures.pop(video_id, None)
            failing = self._track_failures.get(video_id, {})
            for name in track_names:
                entry.tracks[name] = _TrackRef(part, order)
                failing.pop(name, None)
            if not failing:
                self._track_failures.pop(video_id, None)

    def _settle_provenance(self) -> None:
        """A feature's recipe comes from the newest part holding a current track of it, never from failures."""
        newest: dict[str, _TrackRef] = {}
        for entry in self._videos.values():
            for name, ref in entry.tracks.items():
                recorded = self._part_provenance[ref.part].get(name)  # a part written without it cannot decide
                if recorded and (name not in newest or ref.order > newest[name].order):
                    newest[name] = ref
        for name, ref in newest.items():
            self._provenance[name] = self._part_provenance[ref.part][name]

    def _rescan(self) -> None:
        self.close()
        self._scan()

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
        """Feature kinds with tracks in the store (or of one video)."""
        if video_id is None:
            return sorted({name for entry in self._videos.values() for name in entry.tracks})
        return sorted(self._entry(video_id).tracks)

    def provenance(self, feature: str) -> dict[str, Any]:
        """The recipe (everything that decides the numbers) of a feature kind, from the parts holding its tracks."""
        return self.provenance_record(feature)["recipe"]

    def provenance_record(self, feature: str) -> dict[str, Any]:
        """The full provenance (recipe, software, runtime) of the newest part holding tracks of `feature`."""
        if feature not in self._provenance:
            raise KeyError(f"{self.path}: holds no feature {feature!r} (has: {', '.join(self._provenance) or 'none'})")
        return self._provenance[feature]

    def recipes(self) -> dict[str, dict[str, Any]]:
        """{feature: recipe} for every feature kind whose tracks carry provenance."""
        return {name: record["recipe"] for name, record in self._provenance.items()}

    def part_provenance(self, video_id: str, feature: str) -> dict[str, Any]:
        """Full provenance (recipe + software versions) of the part that holds this track."""
        ref = self._track_ref(video_id, feature)
        return self._part_provenance[ref.part].get(feature, {})

    def failures(self) -> list[FailureRecord]:
        """Current failures: each record's `features` narrowed to the tracks still failing (none held since)."""
        current = []
        for video_id in sorted(set(self._track_failures) | set(self._video_failures)):
            if video_id in self._video_failures:
                current.append(self._video_failures[video_id].record)
            by_record: dict[tuple[int, int], tuple[FailureRecord, set[str]]] = {}
            for feature, failing in self._track_failures.get(video_id, {}).items():
                by_record.setdefault((failing.order, failing.key), (failing.record, set()))[1].add(feature)
            for _, (record, features) in sorted(by_record.items()):
                current.append(replace(record, features=tuple(f for f in record.features if f in features)))
        return current

    def failed_features(self, video_id: str, recipes: Mapping[str, str] | None = None) -> frozenset[str]:
        """Features of `video_id` whose latest outcome is a failure (a record naming no feature adds none).

        recipes ({feature: recipe_id}): only failures made with that recipe, or with an unrecorded one, count.
        """
        failing = self._track_failures.get(video_id, {})
        if recipes is None:
            return frozenset(failing)
        made_with = {feature: (entry.record.recipes or {}).get(feature, "") for feature, entry in failing.items()}
        return frozenset(
            feature for feature, recipe in made_with.items() if not recipe or recipe == recipes.get(feature, recipe)
        )

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
            lambda group: Track(group["features"][()], group["timestamps"][()], _read_attrs(group.attrs)),
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
        handle = self._open_files.get(part)
        if handle is not None:
            self._open_files.move_to_end(part)
            return handle
        while len(self._open_files) >= self.max_open_files:
            self._open_files.popitem(last=False)[1].close()
        try:
            handle = _open_part(part)
        except StoreReadError:
            if not self._open_files:
                raise
            # Out of file descriptors: give back the older half of ours and try once more.
            for _ in range((len(self._open_files) + 1) // 2):
                self._open_files.popitem(last=False)[1].close()
            handle = _open_part(part)
        except _DamagedPart as damage:
            raise StoreCorruptError(f"{part}: damaged since it was scanned ({damage})") from None
        self._open_files[part] = handle
        return handle

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
        """Rebuild feats.h5 from the parts (atomic rename): one entry per video, external links to current tracks.

        Every linked part must exist (a link to a missing part reads as an error only later, in the user's code).
        """
        for attempt in range(2):
            linked = sorted({ref.part for entry in self._videos.values() for ref in entry.tracks.values()})
            missing = [part for part in linked if not part.exists()]
            if not missing:
                break
            if attempt or self._given_parts is not None:
                raise StoreCorruptError(f"{self.path}: part {missing[0]} holds tracks but no longer exists")
            self._rescan()
        folder = self.path.parent

        def fill(f: h5py.File) -> None:
            _write_attrs(
                f.attrs,
                {
                    "format": STORE_FORMAT + "-index",
                    "format_version": STORE_FORMAT_VERSION,
                    "parts_dir": os.path.relpath(self.parts_dir, folder),
                    "parts": json.dumps([os.path.relpath(part, folder) for part in linked]),
                },
            )
            prov = f.create_group("provenance")
            for name, record in self._provenance.items():
                prov.attrs[name] = json.dumps(record["recipe"], sort_keys=True)
            videos = f.create_group("videos")
            for video_id, entry in sorted(self._videos.items()):
                name = escape_id(video_id)
                group = videos.create_group(name)
                _write_attrs(group.attrs, entry.metadata)
                for feature, ref in entry.tracks.items():
                    group[feature] = h5py.ExternalLink(os.path.relpath(ref.part, folder), f"/videos/{name}/{feature}")
            _write_failures(f.create_group("failures"), self.failures(), self._provenance)

        tmp = self.path.with_name("." + self.path.name + f".{os.getpid()}.tmp")
        try:
            save_atomically(self.path, hdf5_image(fill), tmp)
        except OSError as error:
            raise write_error(self.path, error) from None


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
            detail = differences(recipes[name], record["recipe"])
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


def iter_tracks(store: FeatureStore, feature: str) -> Iterator[tuple[str, Track]]:
    """Every video's track of one feature kind, one at a time."""
    for video_id in store.video_ids():
        if feature in store.feature_names(video_id):
            yield video_id, store.track(video_id, feature)
