"""img-eval --report: one self-contained HTML file to look at a model's answers (no network: the script, the
style and the data are inside the file; videos are linked, never embedded).

It shows img-eval's warnings first, then, per split and for all splits together: the metrics table of the three
branches and the mean predicted audio importance (img-eval's own numbers: the rows are read back into its
QueryPredictions and go through EvalReport; a branch that does not apply, no audio in the model or in any video,
reads n/a), a histogram of the IoU, R1 against the IoU threshold, R1 per predicted audio importance bin (Table 16)
and per moment length; with `compared`, a second evaluation of the same queries side by side. Then every query in
a paged, sortable list with its true span and each branch's span drawn on the video's timeline, the IoU, the audio
importance, its P(start)/P(end) curves on demand, and filters: wrong answers only (fused IoU below the threshold),
audio-decided only (a video with audio where fused is right and visual-only wrong: the sound decided the answer),
by split, by text. With `videos` (a folder as img-extract scans it: a video's id is its path without the
extension, extract.media.sources.folder_video_id), a row whose video is there has a player that seeks to the
predicted start. The rows export as CSV (report_csv; the page's link builds the same table).

Sizes: the list renders one page (50 rows) at a time; a row's curves take at most 2·CURVE_POINTS characters; the
size and speed of a report of ActivityNet's test split are measured once, in docs/prediction.md ("The report").
Whether a branch is right at 0.3 / 0.5 / 0.7 is decided here, in Python, with the same IoUs as the metrics, so
filters and table can never disagree.

    from img_model.evaluate.report import write_report
    write_report("report.html", rows, title="charades test", videos="videos/")  # rows: predictions JSONL dicts
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from extract.core.files import write_atomically
from img_model.evaluate.breakdowns import RATIO_BINS
from img_model.evaluate.evaluator import BRANCHES, METRIC_NAMES, BranchPrediction, EvalReport, QueryPrediction
from img_model.network.metrics import MAP_WINDOWS, THRESHOLDS, TOP_K, recall_at
from manifests.records import ClipSaliency

HISTOGRAM_BINS = 10
# [k/10, (k+1)/10): k/10 as written (np.histogram's linspace edges are 0.30000000000000004, 0.6000000000000001 and
# 0.7000000000000001, which put an IoU of exactly 0.3 below 0.3 although R1@0.3 counts it)
HISTOGRAM_EDGES = np.array([k / HISTOGRAM_BINS for k in range(HISTOGRAM_BINS + 1)], np.float64)
RECALL_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 ... 0.95
# A row's P(start)/P(end) curves (fused branch) in the page: at most CURVE_POINTS points each (a longer video's steps
# summed in groups, so a point holds the probability of its group), each value one character of CURVE_ALPHABET: its
# level of the row's peak of the two curves, in 63 steps. A query costs at most 2·64 characters and its peak.
CURVE_POINTS = 64
CURVE_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-_"
CSV_BRANCH_FIELDS = ("start", "end", "iou")
PROBABILITIES = ("start_probability", "end_probability")  # a predictions row's curves of a branch


@dataclass(frozen=True)
class Compared:
    """A second evaluation of the same queries (another checkpoint, or this one without audio), shown beside the
    first: its metrics in a second column, its fused answer in every row (matched by split and qid)."""

    label: str
    rows: Sequence[Mapping[str, Any]]


def _branch(predicted: Mapping[str, Any]) -> BranchPrediction:
    """A branch of a predictions JSONL row read back (its `top` list padded to TOP_K as img-eval pads it)."""
    top = list(predicted.get("top", []))[:TOP_K]
    pad = TOP_K - len(top)
    kept = list(predicted.get("top_nms", []))[:MAP_WINDOWS]
    return BranchPrediction(
        steps=tuple(predicted.get("steps", (0, 0))),
        span=tuple(predicted["span"]),
        score=float(predicted.get("score", 0.0)),
        iou=float(predicted["iou"]),
        top_steps=np.array([span.get("steps", (0, 0)) for span in top] + [(-1, -1)] * pad, np.int64).reshape(-1, 2),
        top_spans=np.array([span["span"] for span in top] + [(np.nan, np.nan)] * pad, np.float64).reshape(-1, 2),
        top_scores=np.array([span.get("score", 0.0) for span in top] + [0.0] * pad, np.float64),
        top_ious=np.array([span["iou"] for span in top] + [np.nan] * pad, np.float64),
        nms_steps=np.array([span.get("steps", (0, 0)) for span in kept], np.int64).reshape(-1, 2),
        nms_spans=np.array([span["span"] for span in kept], np.float64).reshape(-1, 2),
        nms_scores=np.array([span.get("score", 0.0) for span in kept], np.float64),
        nms_ious=np.array([span["iou"] for span in kept], np.float64),
        saliency=np.array(predicted.get("saliency", []), np.float32),
        start_probability=np.array(predicted.get("start_probability", []), np.float32),
        end_probability=np.array(predicted.get("end_probability", []), np.float32),
    )


def _saliency_labels(row: Mapping[str, Any]) -> ClipSaliency | None:
    labels = row.get("saliency_labels")
    if labels is None:
        return None
    scores = tuple(tuple(float(v) for v in scores) for scores in labels["saliency_scores"])
    return ClipSaliency(float(labels["clip_length"]), tuple(labels["relevant_clip_ids"]), scores)


def read_prediction(row: Mapping[str, Any]) -> QueryPrediction:
    """A predictions JSONL row (QueryPrediction.as_json) as the QueryPrediction img-eval computed."""
    return QueryPrediction(
        qid=str(row["qid"]),
        video_id=str(row["video_id"]),
        duration=float(row["duration"]),
        num_steps=int(row.get("num_steps", 0)),
        ground_truth=tuple(row["ground_truth"]),
        has_audio=bool(row.get("has_audio", True)),
        audio_importance=None if row.get("audio_importance") is None else float(row["audio_importance"]),
        branches={name: _branch(row["branches"][name]) for name in BRANCHES if name in row["branches"]},
        query=row.get("query", ""),
        split=row.get("split") or "test",
        saliency_labels=_saliency_labels(row),
    )


def summary(predictions: Sequence[QueryPrediction], ratio_bins: int = RATIO_BINS) -> dict[str, Any]:
    """img-eval's metrics, mean audio importance and breakdowns (EvalReport), the IoU histogram and R1 against the
    threshold of each branch over these predictions."""
    evaluated = EvalReport.from_predictions("", predictions, ratio_bins)
    mean_importance = evaluated.mean_importance if predictions else None
    out: dict[str, Any] = {
        "queries": len(predictions),
        "metrics": evaluated.branches,
        # as img-eval's table prints them (Python rounds a tie to even, JavaScript's toFixed up: 14.625 -> 14.63)
        "metrics_text": {
            branch: {name: f"{value:.2f}" if np.isfinite(value) else "-" for name, value in metrics.items()}
            for branch, metrics in evaluated.branches.items()
        },
        "histogram": {},
        "recall": {},
        "mean_importance": mean_importance,
        "breakdowns": {
            "ratio": evaluated.ratio_bins,
            "length": evaluated.length_buckets,
            "importance": evaluated.importance_bins,
        },
    }
    for branch in evaluated.branches:  # a model without audio has no audio branch
        best = np.array([prediction.branches[branch].iou for prediction in predictions], np.float64)
        out["histogram"][branch] = iou_histogram(best)
        out["recall"][branch] = [recall_at(best, t) for t in RECALL_THRESHOLDS]
    # the page shows "n/a" for a branch that does not apply: none of the model, or audio where no video had any
    # (the audio branch then read zero tracks: its numbers say nothing about the sound)
    out["applies"] = {
        branch: branch in evaluated.branches and (branch != "audio" or any(p.has_audio for p in predictions))
        for branch in BRANCHES
    }
    return out


def encode_curves(start: np.ndarray, end: np.ndarray) -> list[Any] | None:
    """[steps, peak, start, end]: a row's P(start)/P(end) as CURVE_POINTS characters at most (see CURVE_ALPHABET),
    `peak` the largest value of either (4 significant digits); None without curves."""
    steps = len(start)
    if steps == 0 or len(end) != steps:
        return None
    cuts = np.linspace(0, steps, min(steps, CURVE_POINTS) + 1).round().astype(int)[:-1]
    grouped = [np.add.reduceat(np.asarray(curve, np.float64), cuts) for curve in (start, end)]
    peak = float(max(curve.max() for curve in grouped))
    if not peak > 0:
        return None
    top = len(CURVE_ALPHABET) - 1
    text = ["".join(CURVE_ALPHABET[level] for level in np.rint(top * curve / peak).astype(int)) for curve in grouped]
    return [steps, float(f"{peak:.4g}"), *text]


def iou_histogram(ious: np.ndarray) -> list[int]:
    """Queries per IoU bin [k/10, (k+1)/10), an IoU of 1 in the last: the bins from 0.3 up hold R1@0.3's queries."""
    bins = np.searchsorted(HISTOGRAM_EDGES, np.clip(ious, 0.0, 1.0), side="right") - 1
    return np.bincount(np.minimum(bins, HISTOGRAM_BINS - 1), minlength=HISTOGRAM_BINS).tolist()


def _correct_bits(row: Mapping[str, Any]) -> int:
    """Bit (3·branch + threshold) set when that branch's IoU reaches THRESHOLDS[threshold]."""
    bits = 0
    for b, branch in enumerate(name for name in BRANCHES if name in row["branches"]):
        for t, threshold in enumerate(THRESHOLDS):
            if row["branches"][branch]["iou"] >= threshold:
                bits |= 1 << (3 * b + t)
    return bits


def _video_links(videos: Path, out_dir: Path) -> dict[str, str]:
    """{video id: URL of the file relative to the report} for every video under the folder."""
    from extract.media.sources import folder_video_id, video_files

    links = {}
    for path in video_files(videos):
        video_id = folder_video_id(videos, path)
        relative = os.path.relpath(path.absolute(), out_dir.absolute())
        links.setdefault(video_id, urllib.parse.quote(Path(relative).as_posix()))
    return links


def _span_values(row: Mapping[str, Any] | None, branches: Sequence[str]) -> list[float]:
    """start, end and IoU of each branch (NaN, null on the page, where the row or the branch is missing)."""
    values: list[float] = []
    for branch in branches:
        if row is None or branch not in row["branches"]:
            values += [np.nan] * 3
        else:
            values += [round(float(v), 4) for v in (*row["branches"][branch]["span"], row["branches"][branch]["iou"])]
    return values


def report_data(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    context: Mapping[str, Any] | None = None,
    links: Mapping[str, str] | None = None,
    warnings: Sequence[str] = (),
    compared: Compared | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as one JSON-able object (columnar rows). `overall` is the
    summary of all splits together, `summaries` one per split (by name: any name, "all" too, is a split's);
    `warnings` (img-eval's) are shown above everything; `compared` adds a second column."""
    predictions = [read_prediction(row) for row in rows]
    splits = list(dict.fromkeys(prediction.split for prediction in predictions))
    videos = list(dict.fromkeys(row["video_id"] for row in rows))
    video_index = {video: number for number, video in enumerate(videos)}
    split_index = {split: number for number, split in enumerate(splits)}
    ratio_bins = int((context or {}).get("ratio_bin_count", RATIO_BINS))
    summaries = {split: summary([p for p in predictions if p.split == split], ratio_bins) for split in splits}
    other = {(row.get("split") or "test", row["qid"]): row for row in compared.rows} if compared else {}
    compact, curves = [], []
    for row in rows:
        importance = row.get("audio_importance")
        fused = row["branches"]["fused"]
        curves.append(encode_curves(*(np.asarray(fused.get(name, []), np.float64) for name in PROBABILITIES)))
        match = other.get((row.get("split") or "test", row["qid"]))
        compact.append(
            [
                row["qid"],
                video_index[row["video_id"]],
                row.get("query", ""),
                split_index[row.get("split") or "test"],
                round(float(row["duration"]), 3),
                *(round(float(t), 3) for t in row["ground_truth"]),
                # 4 significant digits: a collapsed importance (1e-17) stays above 0, "< 0.001" on the page
                np.nan if importance is None else float(f"{float(importance):.4g}"),
                int(bool(row.get("has_audio", True))),
                _correct_bits(row),
                *_span_values(row, BRANCHES),
                *((*_span_values(match, ["fused"]), -1 if match is None else _correct_bits(match)) if compared else ()),
            ]
        )
    links = links or {}
    return {
        "title": title,
        "generated": time.strftime("%Y-%m-%d %H:%M"),
        "context": dict(context or {}),
        "branches": [name for name in BRANCHES if not rows or name in rows[0]["branches"]],
        "thresholds": list(THRESHOLDS),
        "metric_names": list(METRIC_NAMES),
        "recall_thresholds": list(RECALL_THRESHOLDS),
        "histogram_bins": HISTOGRAM_BINS,
        "splits": splits,
        "videos": videos,
        "media": [links.get(video) for video in videos],
        "overall": summary(predictions, ratio_bins),
        "summaries": summaries,
        "columns": [
            "qid",
            "video",
            "query",
            "split",
            "duration",
            "true_start",
            "true_end",
            "importance",
            "has_audio",
            "correct",
            *(f"{b}_{f}" for b in BRANCHES for f in CSV_BRANCH_FIELDS),
            *((*(f"compared_fused_{f}" for f in CSV_BRANCH_FIELDS), "compared_correct") if compared else ()),
        ],
        "rows": compact,
        "curves": curves,
        "curve_points": CURVE_POINTS,
        "curve_alphabet": CURVE_ALPHABET,
        "warnings": list(warnings),
        "compared": None
        if compared is None
        else {
            "label": compared.label,
            "overall": summary([read_prediction(row) for row in compared.rows], ratio_bins),
            "summaries": {
                split: summary(scoped, ratio_bins)
                for split in splits
                if (scoped := [read_prediction(r) for r in compared.rows if (r.get("split") or "test") == split])
            },
        },
    }


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
    warnings: Sequence[str] = (),
    compared: Compared | None = None,
) -> Path:
    """Write the report of these prediction rows (img-eval's predictions JSONL objects) to `path`."""
    out = Path(path)
    links = _video_links(Path(videos), out.parent) if videos is not None else None
    data = report_data(rows, title, context, links, warnings, compared)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, render(data))
    return out


def csv_header(data: Mapping[str, Any]) -> list[str]:
    """The CSV's columns: every column of the page's rows but the filter bits, importance named as in the JSONL."""
    names = [name for name in data["columns"] if not name.endswith("correct")]
    return ["audio_importance" if name == "importance" else name for name in names]


def report_csv(data: Mapping[str, Any]) -> str:
    """The page's rows as CSV (img-eval --csv; the page's "CSV" link builds the same table from the same data):
    one line per query, the video by id and the split by name, empty cells where a value does not exist."""
    keep = [k for k, name in enumerate(data["columns"]) if not name.endswith("correct")]
    video, split = data["columns"].index("video"), data["columns"].index("split")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(csv_header(data))
    for row in data["rows"]:
        named = {video: data["videos"][row[video]], split: data["splits"][row[split]]}
        values = [named.get(k, row[k]) for k in keep]
        writer.writerow(["" if isinstance(v, float) and not np.isfinite(v) else v for v in values])
    return buffer.getvalue()


def _json_safe(value: Any) -> Any:
    """NaN (e.g. a metric of an empty bin) as null: the page reads strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
