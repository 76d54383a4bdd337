"""img-predict batch: a manifest of (video, query[, start, end]) rows answered by one checkpoint, into one JSONL of
answers and one HTML summary (img_model/predict/batch_report.py), without img-extract, img-extract text or
img-eval run by hand.

Manifest: see img_model/predict/manifest.py (docs/prediction.md, "Batch prediction").

Every row is read and checked before any video is touched (a malformed manifest is one line, exit 2). Rows are
grouped by video: each video's features are made once (the Predictor's cache), then its queries are answered,
each alone as img-predict answers it. A video that cannot be read fails its rows, a query that cannot be read
(an empty one, one with no known word) fails its row, and the run goes on; problems every video would share (a
checkpoint whose weights do not fit, a full disk) stop it. Output lines are written as each video finishes: in
manifest order within a video, videos in the order they first appear, each line carrying its manifest `row`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from extract.core.errors import VideoDecodeError
from img_model.predict.manifest import BatchRow
from img_model.predict.predictor import Predictor, VideoAnswers
from img_model.predict.queries import QueryError, QueryInput

log = logging.getLogger(f"img_vmr.{__name__}")

ANSWERS_FILE = "answers.jsonl"
REPORT_FILE = "report.html"


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
