"""img-eval --report: one self-contained HTML file to look at a model's answers (no network: the script, the
style and the data are inside the file; videos are linked, never embedded).

It shows, per split and for all splits together: the metrics table of the three branches (the numbers img-eval
prints), a histogram of the IoU and R1 against the IoU threshold for the fused, visual-only and audio-only
branches; then every query in a paged list with its true span and each branch's span drawn on the video's
timeline, the IoU, the audio importance, and filters: wrong answers only (fused IoU below the threshold),
audio-decided only (fused right and visual-only wrong: where the sound decided the answer), by split, by text.
With `videos` (a folder as img-extract scans it: a video's id is its path without the extension), a row whose
video is there has a player that seeks to the predicted start.

Sizes: a row is ~150 bytes of JSON and the list renders one page (50 rows) at a time, so ActivityNet's 17,502
test queries make a ~3 MB file that filters in milliseconds. Whether a branch is right at 0.3 / 0.5 / 0.7 is
decided here, in Python, with the same IoUs as the metrics, so filters and table can never disagree.

    from img_model.report import write_report
    write_report("report.html", rows, title="charades test", videos="videos/")  # rows: predictions JSONL dicts
"""

from __future__ import annotations

import html
import json
import os
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from img_model.evaluator import BRANCHES
from img_model.metrics import THRESHOLDS, TOP_K, recall_at, retrieval_metrics

ALL_SPLITS = "all"
HISTOGRAM_BINS = 10
RECALL_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 ... 0.95


def branch_ious(rows: Sequence[Mapping[str, Any]], branch: str) -> tuple[np.ndarray, np.ndarray]:
    """(best IoU (n,), top-k IoUs (n, TOP_K), missing spans as 0) of one branch over the rows."""
    best = np.array([row["branches"][branch]["iou"] for row in rows], dtype=np.float64)
    top = np.zeros((len(rows), TOP_K))
    for number, row in enumerate(rows):
        ious = [span["iou"] for span in row["branches"][branch].get("top", [])][:TOP_K]
        top[number, : len(ious)] = ious
    return best, top


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Metrics, IoU histogram and R1 against the threshold of each branch over these rows."""
    out: dict[str, Any] = {"queries": len(rows), "metrics": {}, "histogram": {}, "recall": {}}
    importance = [row["audio_importance"] for row in rows if row.get("has_audio", True)]
    out["mean_importance"] = float(np.mean(importance)) if importance else None
    for branch in BRANCHES:
        best, top = branch_ious(rows, branch)
        with_top = any(row["branches"][branch].get("top") for row in rows)
        out["metrics"][branch] = retrieval_metrics(best, top if with_top else None)
        counts, _ = np.histogram(np.clip(best, 0.0, 1.0), bins=HISTOGRAM_BINS, range=(0.0, 1.0))
        out["histogram"][branch] = counts.tolist()
        out["recall"][branch] = [recall_at(best, t) for t in RECALL_THRESHOLDS]
    return out


def _correct_bits(row: Mapping[str, Any]) -> int:
    """Bit (3·branch + threshold) set when that branch's IoU reaches THRESHOLDS[threshold]."""
    bits = 0
    for b, branch in enumerate(BRANCHES):
        for t, threshold in enumerate(THRESHOLDS):
            if row["branches"][branch]["iou"] >= threshold:
                bits |= 1 << (3 * b + t)
    return bits


def _video_links(videos: Path, out_dir: Path) -> dict[str, str]:
    """{video id: URL of the file relative to the report} for every video under the folder."""
    from extract.sources import video_files

    links = {}
    for path in video_files(videos):
        video_id = path.relative_to(videos).with_suffix("").as_posix()
        relative = os.path.relpath(path.absolute(), out_dir.absolute())
        links.setdefault(video_id, urllib.parse.quote(Path(relative).as_posix()))
    return links


def report_data(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    context: Mapping[str, Any] | None = None,
    links: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able object (columnar rows, ~150 bytes each)."""
    splits = list(dict.fromkeys(row.get("split") or "test" for row in rows))
    videos = list(dict.fromkeys(row["video_id"] for row in rows))
    video_index = {video: number for number, video in enumerate(videos)}
    split_index = {split: number for number, split in enumerate(splits)}
    summaries = {ALL_SPLITS: summary(rows)}
    for split in splits:
        summaries[split] = summary([row for row in rows if (row.get("split") or "test") == split])
    compact = []
    for row in rows:
        spans = [
            value for branch in BRANCHES for value in (*row["branches"][branch]["span"], row["branches"][branch]["iou"])
        ]
        compact.append(
            [
                row["qid"],
                video_index[row["video_id"]],
                row.get("query", ""),
                split_index[row.get("split") or "test"],
                round(float(row["duration"]), 3),
                *(round(float(t), 3) for t in row["ground_truth"]),
                round(float(row["audio_importance"]), 4),
                int(bool(row.get("has_audio", True))),
                _correct_bits(row),
                *(round(float(v), 4) for v in spans),
            ]
        )
    links = links or {}
    return {
        "title": title,
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "context": dict(context or {}),
        "branches": list(BRANCHES),
        "thresholds": list(THRESHOLDS),
        "recall_thresholds": list(RECALL_THRESHOLDS),
        "histogram_bins": HISTOGRAM_BINS,
        "splits": splits,
        "videos": videos,
        "media": [links.get(video) for video in videos],
        "summaries": summaries,
        "columns": ["qid", "video", "query", "split", "duration", "true_start", "true_end", "importance",
                    "has_audio", "correct", *(f"{b}_{f}" for b in BRANCHES for f in ("start", "end", "iou"))],
        "rows": compact,
    }  # fmt: skip


def render(data: Mapping[str, Any]) -> str:
    """The page: the template with the data inline (every `<` escaped as \\u003c: no text can end the script)."""
    template = resources.files("img_model").joinpath("templates/report.html").read_text(encoding="utf-8")
    payload = json.dumps(_json_safe(data), separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    values = {"TITLE": html.escape(str(data["title"])), "DATA": payload}
    return re.sub(r"\{\{(TITLE|DATA)\}\}", lambda match: values[match.group(1)], template)


def write_report(
    path: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    title: str = "img-eval report",
    context: Mapping[str, Any] | None = None,
    videos: str | os.PathLike[str] | None = None,
) -> Path:
    """Write the report of these prediction rows (img-eval's predictions JSONL objects) to `path`."""
    out = Path(path)
    links = _video_links(Path(videos), out.parent) if videos is not None else None
    data = report_data(rows, title, context, links)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(render(data), encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _json_safe(value: Any) -> Any:
    """NaN (e.g. a metric of an empty bin) as null: the page reads strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
