"""Part files: their names, their HDF5 layout, and writing and reading one part whole.

A part holds videos (metadata + some or all of their tracks), failure records per (video, feature) and the
provenance of its features. It is built in memory and saved by write_atomically (a kill -9 or a full disk loses at
most the part being written, and HDF5 itself never writes to the disk, so a failed write cannot leave the library
holding a half-written file). The layout of a store (extract/store/reader.py) is the list of its parts.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import resource
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from extract.core.errors import StoreCorruptError, StoreReadError, StoreWriteError, cannot_write
from extract.core.files import write_atomically
from extract.store.ids import escape_id, storable_text, unescape_id
from extract.store.records import FailureRecord, VideoRecord, recipe_id

STORE_FORMAT = "img-vmr-feature-store"
# 1: one failure record per video in /failures/<id> attrs. 2: records per (video, feature) in
# /failures/<id>/<feature> attrs (a record naming no feature stays on /failures/<id>). Readers take both.
STORE_FORMAT_VERSION = 2
PARTS_SUFFIX = ".parts"
PART_GLOB = "part-*.h5"
# JSON [[video id, metadata, [track names]], ...] of a part's videos: a scan reads it at once instead of one
# HDF5 attribute at a time (~0.2 ms each), which made opening a 10k-video store take a minute.
CATALOG = "catalog"
_STAMP_FORMAT = "%Y%m%dT%H%M%S.%f"
_CANNOT_OPEN_NOW = (errno.EMFILE, errno.ENFILE)


def parts_dir(store_path: str | os.PathLike[str]) -> Path:
    path = Path(store_path)
    return path.with_name(path.name + PARTS_SUFFIX)


def _storable(value: Any) -> Any:
    return "" if value is None else storable_text(value) if isinstance(value, str) else value


def write_attrs(target: h5py.AttributeManager, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        target[key] = _storable(value)


def _as_read_back(value: Any) -> Any:
    """A value as read_attrs returns it after an HDF5 attribute round trip (so the catalog agrees with attrs)."""
    value = _storable(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | list | tuple):
        return np.asarray(value).tolist()
    return value


def read_attrs(source: h5py.AttributeManager) -> dict[str, Any]:
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


def write_error(store: Path, error: OSError) -> StoreWriteError:
    """The one-line StoreWriteError for an OSError met while writing `store` (e.g. no space left on device)."""
    return cannot_write(f"the feature store {store}", store.parent, error, StoreWriteError)


def hdf5_image(fill: Callable[[h5py.File], None]) -> bytes:
    """An HDF5 file built in memory; only write_atomically (extract/core/files.py) touches the disk.

    bytes, not a view of the buffer: on Python 3.12 a view still held by a failed write's traceback (a full disk)
    made the exit crash ("deallocated BytesIO object has exported buffers", exit 139)."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        fill(f)
    return buffer.getvalue()


def write_failures(
    parent: h5py.Group, failures: Iterable[FailureRecord], provenance: Mapping[str, Mapping[str, Any]]
) -> None:
    for record in failures:
        name = escape_id(record.video_id)
        group = parent[name] if name in parent else parent.create_group(name)
        group.attrs["video_id"] = storable_text(record.video_id)
        if not record.features:
            write_attrs(group.attrs, record.as_attrs())
        for feature in record.features:
            if feature in group:
                del group[feature]
            if record.recipes is not None:
                recipe = record.recipes.get(feature, "")
            else:  # a new record: made with the recipe this part records for the feature
                made_with = provenance.get(feature, {}).get("recipe")
                recipe = recipe_id(made_with) if made_with is not None else ""
            write_attrs(group.create_group(feature).attrs, {**record.reason_attrs(), "recipe": recipe})


def write_part(
    path: Path,
    videos: Iterable[VideoRecord],
    failures: Iterable[FailureRecord],
    provenance: Mapping[str, Mapping[str, Any]],
    writer: Mapping[str, Any],
) -> None:
    """Write one immutable part (OSError when the disk refuses; then no file is left behind)."""

    def fill(f: h5py.File) -> None:
        write_attrs(f.attrs, {"format": STORE_FORMAT, "format_version": STORE_FORMAT_VERSION, **writer})
        prov = f.create_group("provenance")
        for name, record in provenance.items():
            prov.attrs[name] = json.dumps(record, sort_keys=True)
        video_group = f.create_group("videos")
        catalog = []
        for video in videos:
            group = video_group.create_group(escape_id(video.video_id))
            metadata = {**video.metadata, "video_id": video.video_id}
            write_attrs(group.attrs, metadata)
            catalog.append([video.video_id, {k: _as_read_back(v) for k, v in metadata.items()}, list(video.tracks)])
            for name, track in video.tracks.items():
                track_group = group.create_group(name)
                track_group.create_dataset("features", data=track.features)
                track_group.create_dataset("timestamps", data=np.asarray(track.timestamps, np.float64))
                write_attrs(track_group.attrs, track.attrs)
        f.create_dataset(CATALOG, data=np.frombuffer(json.dumps(catalog).encode(), np.uint8))
        write_failures(f.create_group("failures"), failures, provenance)

    write_atomically(path, hdf5_image(fill), path.with_name(path.name + ".tmp"))


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


class DamagedPart(Exception):
    """A part that opens but is not a readable img-vmr part (outside damage: parts are written atomically)."""


@dataclass
class PartContents:
    provenance: dict[str, dict[str, Any]]
    videos: list[tuple[str, dict[str, Any], list[str]]]  # (video id, metadata, track names)
    failures: list[FailureRecord]


def cannot_read(path: Path, error: OSError) -> StoreReadError:
    """The system refused to open or read `path` (not damage): say why and what to do."""
    reason = os.strerror(error.errno) if error.errno else str(error).splitlines()[0]
    reason = reason[:1].lower() + reason[1:]
    if error.errno in _CANNOT_OPEN_NOW:
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return StoreReadError(
            f"cannot open {path} now: {reason} (this process may open {limit}); raise `ulimit -n` and try again"
        )
    return StoreReadError(f"cannot read {path}: {reason}")


def open_part(part: Path) -> h5py.File:
    """Open a part read-only: FileNotFoundError if gone, StoreReadError if it cannot be opened now, else damaged."""
    try:
        return h5py.File(part, "r", locking=False)
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno is not None:  # the system refused (EMFILE, EACCES, EIO, ...), not the file's contents
            raise cannot_read(part, error) from None
        raise DamagedPart(str(error).splitlines()[0] or type(error).__name__) from None


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
    attrs = read_attrs(group.attrs)
    if "stage" in attrs:  # format 1, or a record naming no feature
        records.append(record(attrs, tuple(x for x in str(attrs.get("features", "")).split(",") if x), {}))
    by_reason: dict[tuple[Any, ...], dict[str, str]] = {}  # one record per reason: {feature: its recipe}
    for feature, sub in group.items():
        reason = read_attrs(sub.attrs)
        recipe = str(reason.pop("recipe", ""))
        by_reason.setdefault(tuple(sorted(reason.items())), {})[feature] = recipe
    for reason, recipes in by_reason.items():
        records.append(record(dict(reason), tuple(recipes), recipes))
    return records


def read_part(part: Path) -> PartContents:
    handle = open_part(part)
    try:
        with handle as f:
            if f.attrs.get("format") != STORE_FORMAT:
                raise DamagedPart("not an img-vmr store part")
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
                videos = [(unescape_id(n), read_attrs(group.attrs), list(group)) for n, group in f["videos"].items()]
            failures = [r for name, group in f["failures"].items() for r in _failure_records(unescape_id(name), group)]
    except OSError as error:
        if error.errno is not None:
            raise cannot_read(part, error) from None
        raise DamagedPart(str(error).splitlines()[0] or type(error).__name__) from None
    except (KeyError, ValueError, TypeError) as error:
        raise DamagedPart(str(error).splitlines()[0] if str(error) else type(error).__name__) from None
    return PartContents(provenance, videos, failures)
