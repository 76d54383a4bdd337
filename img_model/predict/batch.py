"""img-predict batch: a manifest of (video, query[, start, end]) rows answered by one checkpoint, into one JSONL of
answers and one HTML summary (img_model/predict/batch_report.py), without img-extract, img-extract text or
img-eval run by hand.

Manifest: JSONL (`.jsonl`: one object a line) or CSV (`.csv`: a header row), with the keys / columns
- `video` (or `path`, as img-extract's manifests name it): the video file, relative to the manifest's folder
  unless absolute;
- `query`: the text;
- `start`, `end` (optional, seconds, both or neither; an empty CSV cell is none): the true span, so each
  branch's IoU is computed;
- `video_id` (optional): the name the outputs give the video (default: the file's name without its suffix).

Every row is read and checked before any video is touched (a malformed manifest is one line, exit 2). Rows are
grouped by video: each video's features are made once (the Predictor's cache), then its queries are answered,
each alone as img-predict answers it. A video that cannot be read fails its rows, a query that cannot be read
(an empty one, one with no known word) fails its row, and the run goes on; problems every video would share (a
checkpoint whose weights do not fit, a full disk) stop it. Output lines are written as each video finishes: in
manifest order within a video, videos in the order they first appear, each line carrying its manifest `row`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from extract.core.errors import UsageError, VideoDecodeError
from img_model.predict.predictor import Predictor, Truth, VideoAnswers, check_truth
from img_model.predict.queries import QueryError, QueryInput

log = logging.getLogger(f"img_vmr.{__name__}")

MANIFEST_SUFFIXES = (".jsonl", ".csv")
ANSWERS_FILE = "answers.jsonl"
REPORT_FILE = "report.html"


@dataclass(frozen=True)
class BatchRow:
    row: int  # the manifest's line number (CSV: the header is line 1)
    video: str  # as the manifest gives it
    path: Path  # resolved against the manifest's folder
    video_id: str
    query: str
    truth: Truth | None = None


@dataclass
class BatchSummary:
    rows: int = 0
    answered: int = 0
    failed: int = 0
    videos: int = 0
    failed_videos: int = 0
    seconds: float = 0.0
    results: list[dict[str, Any]] = field(default_factory=list)  # the JSONL lines, in the order written

    def line(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        unread = f"; {self.failed_videos} of {self.videos} videos could not be read" if self.failed_videos else ""
        return (
            f"batch: {self.rows} rows, {self.videos} videos: {self.answered} answered, {self.failed} failed{unread}; "
            f"{self.seconds:.1f} s, {rate:.2f} rows/s"
        )


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
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise UsageError(f"{path} line {number}: not JSON ({error.msg})") from None
        if not isinstance(item, dict):
            raise UsageError(f'{path} line {number}: expected an object with "video" and "query"')
        yield number, item


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


def run_batch(
    predictor: Predictor,
    rows: Sequence[BatchRow],
    out: TextIO,
    drop_audio: bool = False,
    top_k: int | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> BatchSummary:
    """Answer every row, writing one JSON line per row to `out` as each video finishes (flushed)."""
    started = time.perf_counter()
    summary = BatchSummary(rows=len(rows))
    groups: dict[Path, list[BatchRow]] = {}
    for row in rows:
        groups.setdefault(row.path, []).append(row)
    summary.videos = len(groups)
    for number, (path, video_rows) in enumerate(groups.items(), 1):
        video_started = time.perf_counter()
        results = _answer_video(predictor, path, video_rows, drop_audio, top_k or predictor.top_k, summary)
        for result in results:
            out.write(json.dumps(result) + "\n")
            summary.results.append(result)
            if on_result is not None:
                on_result(result)
        out.flush()
        ok = sum("error" not in result for result in results)
        log.info(
            "video %d/%d %s: %d of %d queries answered (%.1f s)",
            number,
            len(groups),
            video_rows[0].video_id,
            ok,
            len(results),
            time.perf_counter() - video_started,
        )
    summary.answered = sum("error" not in result for result in summary.results)
    summary.failed = summary.rows - summary.answered
    summary.seconds = time.perf_counter() - started
    return summary


def _answer_video(
    predictor: Predictor,
    path: Path,
    rows: list[BatchRow],
    drop_audio: bool,
    top_k: int,
    summary: BatchSummary,
) -> list[dict[str, Any]]:
    """The JSON lines of one video's rows: an answer each, or the row's error."""
    inputs: dict[int, QueryInput] = {}
    errors: dict[int, str] = {}
    for row in rows:
        try:
            inputs[row.row] = predictor.read_queries([row.query])[0]
        except QueryError as error:
            errors[row.row] = str(error)
            log.warning("row %d (%s): %s", row.row, row.video_id, error)
    answered: VideoAnswers | None = None
    if inputs:
        try:
            features = predictor.features.features(path)
        except VideoDecodeError as error:
            summary.failed_videos += 1
            # the message names the file as the manifest does, not by this machine's path
            message = str(error).replace(str(path), rows[0].video)
            log.warning("video %s, rows %s: %s", rows[0].video_id, ", ".join(str(r.row) for r in rows), message)
            errors.update({row.row: message for row in rows if row.row not in errors})
        else:
            kept = [row for row in rows if row.row in inputs]
            answered = predictor.answer(
                features, [inputs[row.row] for row in kept], top_k, [row.truth for row in kept], drop_audio
            )
    answers = iter(answered.answers) if answered is not None else iter(())
    video: dict[str, Any] = {}
    if answered is not None:  # the video's keys on each of its lines; "video" stays the manifest's
        video = {key: value for key, value in answered.as_json().items() if key not in ("answers", "video")}
    results = []
    for row in rows:
        head = {"row": row.row, "video_id": row.video_id, "video": row.video}
        if row.row in errors:
            results.append({**head, "query": row.query, "error": errors[row.row]})
        else:
            results.append({**head, **video, **next(answers).as_json()})
    return results
