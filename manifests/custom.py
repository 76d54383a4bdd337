"""A user's own queries: one JSON object per line (JSONL).

    {"video_id": "cooking_03", "start": 12.5, "end": 19.0, "query": "she cracks an egg into the bowl"}

Required: video_id, start, end (seconds), query. Optional: duration (seconds; when absent, the caller passes
the feature store's: extract/store/reader.py `video_durations`), qid (default qid_N, N = the record's 0-based
position in the file), split (default "test"), and clip-level saliency labels in QVHighlights' fields (for the
highlight-detection metrics of img-eval):

    {..., "relevant_clip_ids": [13, 14, 15], "saliency_scores": [[4, 4, 2], [3, 4, 2], [2, 2, 3]], "clip_length": 2}

clip k covers [k·clip_length, (k+1)·clip_length) seconds (clip_length default 2, QVHighlights'); each relevant
clip has one score per annotator (or a single number: one annotator) on the 0-4 scale (very bad … very good);
the clips not listed score 0. Spans are clipped to [0, duration] like the published loaders
do, with a warning count; start > end, empty queries, missing fields, duplicate qids, unknown video ids and
non-UTF-8 files are errors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from manifests.errors import ManifestError
from manifests.records import (
    DEFAULT_CLIP_LENGTH,
    MAX_SALIENCY_SCORE,
    ClipSaliency,
    QueryRecord,
    clip_span,
    is_number,
)

log = logging.getLogger(f"img_vmr.{__name__}")

REQUIRED = ("video_id", "start", "end", "query")
DEFAULT_SPLIT = "test"
MAX_LISTED = 10
MAX_CLIPS = 100_000  # clips of one video with saliency labels (QVHighlights: 75)
SALIENCY_FIELDS = ("relevant_clip_ids", "saliency_scores")


@dataclass(frozen=True)
class CustomRow:
    """A validated line of the file, before durations are known."""

    line: int
    qid: str
    video_id: str
    start: float
    end: float
    query: str
    split: str
    duration: float | None
    saliency: ClipSaliency | None = None


def _problem(rows: list[str], path: Path, line: int, message: str) -> None:
    rows.append(f"{path} line {line}: {message}")


def read_rows(path: Path) -> list[CustomRow]:
    """Parse and validate every line; one ManifestError naming the first problem (and how many there are)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"annotation file {path} does not exist") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ManifestError(
            f"{path} is not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    rows: list[CustomRow] = []
    problems: list[str] = []
    for number, line in enumerate(text.lstrip("\ufeff").split("\n"), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            _problem(problems, path, number, f"not JSON ({error.msg})")
            continue
        if not isinstance(item, dict):
            _problem(problems, path, number, f"expected an object with {', '.join(REQUIRED)}")
            continue
        row = _row(item, number, len(rows), path, problems)
        if row is not None:
            rows.append(row)
    seen: dict[str, int] = {}
    for row in rows:
        if row.qid in seen:
            _problem(problems, path, row.line, f"qid {row.qid!r} already used on line {seen[row.qid]}")
        seen.setdefault(row.qid, row.line)
    if problems:
        more = f" ({len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise ManifestError(problems[0] + more)
    if not rows:
        raise ManifestError(f"{path} holds no queries; expected JSON lines with {', '.join(REQUIRED)}")
    return rows


def _row(item: dict, line: int, position: int, path: Path, problems: list[str]) -> CustomRow | None:
    missing = [name for name in REQUIRED if name not in item]
    if missing:
        _problem(problems, path, line, f"missing {', '.join(missing)} (needs {', '.join(REQUIRED)})")
        return None
    video_id, query = item["video_id"], item["query"]
    if not isinstance(video_id, str) or not video_id:
        _problem(problems, path, line, "video_id must be a non-empty string")
        return None
    if not isinstance(query, str) or not query.strip():
        _problem(problems, path, line, "empty query")
        return None
    times = {name: item[name] for name in ("start", "end", "duration") if item.get(name) is not None}
    bad = [name for name, value in times.items() if not is_number(value)]
    if bad:
        _problem(problems, path, line, f"{', '.join(bad)} must be numbers of seconds")
        return None
    if times["start"] > times["end"]:
        _problem(problems, path, line, f"start {times['start']} is after end {times['end']}")
        return None
    duration = times.get("duration")
    if duration is not None and duration <= 0:
        _problem(problems, path, line, f"duration {duration} must be positive")
        return None
    qid = item.get("qid", f"qid_{position}")
    if not isinstance(qid, str | int) or isinstance(qid, bool) or str(qid) == "":
        _problem(problems, path, line, "qid must be a string or an integer")
        return None
    split = item.get("split", DEFAULT_SPLIT)
    if not isinstance(split, str) or not split:
        _problem(problems, path, line, "split must be a non-empty string")
        return None
    saliency = _saliency(item)
    if isinstance(saliency, str):
        _problem(problems, path, line, saliency)
        return None
    return CustomRow(
        line,
        str(qid),
        video_id,
        float(times["start"]),
        float(times["end"]),
        query.strip(),
        split,
        None if duration is None else float(duration),
        saliency,
    )


def _saliency(item: dict) -> ClipSaliency | str | None:
    """The row's clip-level saliency labels, None when it has none, or what is wrong with them."""
    given = [name for name in SALIENCY_FIELDS if name in item]
    if not given:
        if "clip_length" in item:
            return "clip_length without relevant_clip_ids and saliency_scores (the clip-level saliency labels)"
        return None
    if len(given) == 1:
        other = next(name for name in SALIENCY_FIELDS if name not in given)
        return f"{given[0]} without {other}: give both (QVHighlights' fields)"
    ids, scores = item["relevant_clip_ids"], item["saliency_scores"]
    clip_length = item.get("clip_length", DEFAULT_CLIP_LENGTH)
    if not is_number(clip_length) or clip_length <= 0:
        return f"clip_length {clip_length!r} must be a positive number of seconds"
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        return "relevant_clip_ids must be a list of clip numbers (integers from 0)"
    if len(set(ids)) != len(ids):
        return "relevant_clip_ids lists a clip twice"
    if not isinstance(scores, list) or len(scores) != len(ids):
        return "saliency_scores must be a list with one entry per relevant clip id"
    rows = [score if isinstance(score, list) else [score] for score in scores]
    if any(not row or not all(is_number(v) for v in row) for row in rows):
        return "saliency_scores entries must be numbers or lists of numbers (one per annotator)"
    if len({len(row) for row in rows}) > 1:
        return "saliency_scores entries must have the same number of annotators"
    if any(not 0 <= v <= MAX_SALIENCY_SCORE for row in rows for v in row):
        return f"saliency_scores must be in [0, {MAX_SALIENCY_SCORE:g}] (0 very bad ... 4 very good)"
    return ClipSaliency(float(clip_length), tuple(ids), tuple(tuple(float(v) for v in row) for row in rows))


def _listed(ids: list[str]) -> str:
    shown = ", ".join(ids[:MAX_LISTED])
    return shown + (f" and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else "")


def read_custom(
    path: Path, durations: Mapping[str, float] | None = None, known_videos: Collection[str] | None = None
) -> tuple[list[QueryRecord], int]:
    """Query records of a custom JSONL file and how many spans were clipped to [0, duration].

    durations (e.g. from the feature store) fill in a missing duration; known_videos, when given, is the set of
    video ids that exist (the feature store's), and any other id is an error listing them.
    """
    rows = read_rows(path)
    if known_videos is not None:
        unknown = list(dict.fromkeys(row.video_id for row in rows if row.video_id not in known_videos))
        if unknown:
            raise ManifestError(f"{path}: {len(unknown)} video ids are not in the feature store: {_listed(unknown)}")
    records, clipped = [], 0
    for row in rows:
        duration = row.duration if row.duration is not None else (durations or {}).get(row.video_id)
        if duration is None:
            raise ManifestError(
                f'{path} line {row.line}: no duration for video {row.video_id!r}; add "duration" or pass the '
                "feature store that holds the video (--store feats.h5)"
            )
        if row.start >= duration:
            raise ManifestError(
                f"{path} line {row.line}: start {row.start} is not before the end of the video ({duration} s)"
            )
        if row.end <= 0:
            raise ManifestError(f"{path} line {row.line}: end {row.end} is not after the start of the video (0 s)")
        if row.saliency is not None:
            _check_clips(path, row.line, row.saliency, duration)
        start, end, changed = clip_span(row.start, row.end, duration)
        clipped += changed
        records.append(QueryRecord(row.qid, row.video_id, start, end, duration, row.query, row.split, row.saliency))
    if clipped:
        log.warning("%s: %d spans reach outside [0, duration] and were clipped", path, clipped)
    return records, clipped


def _check_clips(path: Path, line: int, saliency: ClipSaliency, duration: float) -> None:
    clips = saliency.num_clips(duration)
    if clips > MAX_CLIPS:
        raise ManifestError(
            f"{path} line {line}: clip_length {saliency.clip_length} cuts the {duration} s video into {clips} clips, "
            f"more than {MAX_CLIPS}; give the clip length in seconds"
        )
    outside = [clip for clip in saliency.clip_ids if clip >= clips]
    if outside:
        raise ManifestError(
            f"{path} line {line}: relevant clip {outside[0]} starts at {outside[0] * saliency.clip_length:g} s, not "
            f"before the end of the video ({duration} s; clips of {saliency.clip_length:g} s)"
        )
