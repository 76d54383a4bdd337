"""What a user gives to be checked against: a true span (check_truth), and the rows of a batch manifest
(read_manifest, for img-predict batch: img_model/predict/batch.py). No torch here: a malformed manifest or span is
one line before any model loads.

Manifest: JSONL (`.jsonl`: one object a line) or CSV (`.csv`: a header row), with the keys / columns
- `video` (or `path`, as img-extract's manifests name it): the video file, relative to the manifest's folder
  unless absolute;
- `query`: the text;
- `start`, `end` (optional, seconds, both or neither; an empty CSV cell is none): the true span, so each
  branch's IoU is computed;
- `video_id` (optional): the name the outputs give the video (default: the file's name without its suffix).

Every row is read and checked at once; anything malformed is a UsageError naming the file and line.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from extract.core.errors import UsageError
from extract.core.files import jsonl_objects

MANIFEST_SUFFIXES = (".jsonl", ".csv")

Truth = tuple[float, float]  # a true span (start, end) in seconds


def check_truth(start: float, end: float, what: str = "the true span") -> Truth:
    """(start, end) as floats when both are finite and 0 <= start < end; else a one-line UsageError."""
    try:
        low, high = float(start), float(end)
    except (TypeError, ValueError):
        raise UsageError(f"{what}: start and end must be numbers of seconds, not {start!r} and {end!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low < high):
        raise UsageError(f"{what}: need finite seconds with 0 <= start < end, not {start!r} and {end!r}")
    return low, high


@dataclass(frozen=True)
class BatchRow:
    row: int  # the manifest's line number (CSV: the header is line 1)
    video: str  # as the manifest gives it
    path: Path  # resolved against the manifest's folder
    video_id: str
    query: str
    truth: Truth | None = None


def read_manifest(path: Path) -> list[BatchRow]:
    """The rows of a batch manifest; UsageError (one line, naming the file and line) for anything malformed."""
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise UsageError(f"--manifest {path}: name it .jsonl (one JSON object a line) or .csv (with a header row)")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"--manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read --manifest {path} ({getattr(error, 'strerror', None) or error})") from None
    rows = [_row(path, number, item) for number, item in _items(path, text)]
    if not rows:
        raise UsageError(f"--manifest {path} has no rows: give one (video, query[, start, end]) per line")
    return rows


def _items(path: Path, text: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        columns = set(reader.fieldnames or ())
        if "query" not in columns or not columns & {"video", "path"}:
            raise UsageError(f"{path}: the header must name the columns video (or path) and query")
        for number, item in enumerate(reader, 2):
            yield number, {key: value for key, value in item.items() if key is not None and value not in ("", None)}
        return
    yield from jsonl_objects(text, str(path), 'an object with "video" and "query"')


def _row(manifest: Path, number: int, item: Mapping[str, Any]) -> BatchRow:
    where = f"{manifest} line {number}"
    video, query = item.get("video", item.get("path")), item.get("query")
    if not isinstance(video, str) or not video.strip():
        raise UsageError(f'{where}: needs "video" (the video file, relative to the manifest\'s folder)')
    if not isinstance(query, str):
        raise UsageError(f'{where}: needs "query" (the text to find in the video)')
    truth = None
    if "start" in item or "end" in item:
        start, end = _seconds(item.get("start")), _seconds(item.get("end"))
        if start is None or end is None:
            raise UsageError(f'{where}: "start" and "end" must both be numbers of seconds')
        truth = check_truth(start, end, where)
    resolved = Path(video.strip())
    resolved = resolved if resolved.is_absolute() else manifest.parent / resolved
    video_id = item.get("video_id")
    if video_id is not None and (not isinstance(video_id, str) or not video_id.strip()):
        raise UsageError(f'{where}: "video_id" must be a non-empty text')
    return BatchRow(number, video.strip(), resolved, (video_id or resolved.stem).strip(), query, truth)


def _seconds(value: Any) -> float | None:
    """A JSON number, or a CSV cell that reads as one; None for anything else (true, "", null...)."""
    if type(value) in (int, float):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None
