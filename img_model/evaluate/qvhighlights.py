"""Predictions in the QVHighlights / Moment-DETR layout, both ways: img-eval's written for their standalone
evaluation (Moment-DETR's standalone_eval, lighthouse), and theirs scored with img-eval's metrics.

One JSON object per query (QVHighlights' submission files; Moment-DETR's README, "Evaluation and Codalab
Submission"):

    {"qid": 2579, "query": "a girl and her mother cooked ...", "vid": "NUsG9BgSes0_210.0_360.0",
     "pred_relevant_windows": [[0.0, 70.0, 0.9986], [78.0, 146.0, 0.4138], ...],
     "pred_saliency_scores": [-0.245, -0.378, ...]}

- `pred_relevant_windows`: [start, end, score] in seconds, best first (at most 10 are read, as Moment-DETR's
  max_pred_windows); `pred_saliency_scores`: one score per clip of the whole video (clip k covers [k·c, (k+1)·c),
  c = 2 s for QVHighlights), optional.
- Export (`img-eval --export-qvhighlights FILE`): the fused branch. The windows are the spans img-eval's NMS kept
  (those its R5-NMS and mAPs read), with the authors' decoding (R1, mIoU) first where it differs; the saliency is
  the fused saliency head's raw score of the step holding each clip's middle (img-eval's highlight rule), per clip
  of the query's saliency labels' length where it has labels, else of 2 s. A qid of digits only is written as a
  number, as QVHighlights' qids are.
- Score (`img-eval --score-qvhighlights FILE --dataset ANNOTATIONS`): against the dataset's annotations, matched
  by qid (as text), with img-eval's metric functions, as Moment-DETR's evaluation reads the file: R1@μ and mIoU
  from each query's first window; R5-NMS@μ and the mAPs from its windows ranked by score (stable; the first 10),
  whatever suppression the file's maker applied; HL-mAP and HL-HIT@1 from `pred_saliency_scores` on the queries
  with clip-level saliency labels. R5-noNMS needs the most probable spans before suppression, which the layout
  does not hold: not reported. The queries' ground truth is one moment (start, end) each, as img-vmr's
  annotations hold; a prediction whose qid is not in the split is left out (said), a query of the split without
  one is an error.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extract.core.errors import UsageError, listed, writing
from extract.core.files import jsonl_objects, write_atomically
from img_model.evaluate.evaluator import BranchPrediction, EvalReport, QueryPrediction, clip_truth
from img_model.network.decoding import clip_steps
from img_model.network.metrics import MAP_WINDOWS, highlight_metrics, temporal_iou
from manifests.records import DEFAULT_CLIP_LENGTH, ClipSaliency, QueryRecord

log = logging.getLogger(f"img_vmr.{__name__}")

EXPORTED_BRANCH = "fused"  # the answer; without audio the fused outputs are the visual branch's
FIELDS = ("qid", "pred_relevant_windows")  # what a file must hold to be scored


# --- img-eval's predictions -> the layout ------------------------------------------------------------------


def qvhighlights_row(row: dict[str, Any]) -> dict[str, Any]:
    """One img-eval prediction row (QueryPrediction.as_json) in the QVHighlights layout."""
    branch = row["branches"][EXPORTED_BRANCH]
    windows = [[*spanned["span"], spanned["score"]] for spanned in branch["top_nms"]]
    best = [*branch["span"], branch["score"]]
    if not windows or windows[0][:2] != best[:2]:
        windows = [best, *(window for window in windows if window[:2] != best[:2])][:MAP_WINDOWS]
    labels = row.get("saliency_labels")
    clip_length = labels["clip_length"] if labels else DEFAULT_CLIP_LENGTH
    duration, steps = row["duration"], row["num_steps"]
    clips = ClipSaliency(clip_length, (), ()).num_clips(duration)  # the labels' count of clips, labelled or not
    saliency = np.asarray(branch["saliency"], np.float64)
    qid = row["qid"]
    return {
        "qid": int(qid) if isinstance(qid, str) and qid.isdigit() else qid,
        "query": row["query"],
        "vid": row["video_id"],
        "pred_relevant_windows": windows,
        "pred_saliency_scores": saliency[clip_steps(clips, clip_length, steps, duration)].tolist()
        if len(saliency)
        else [],
    }


def write_qvhighlights(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """img-eval --export-qvhighlights: every row, or nothing (a temporary name, renamed; OutputWriteError)."""
    with writing(f"--export-qvhighlights {path}", path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, "".join(json.dumps(qvhighlights_row(row)) + "\n" for row in rows))
    log.info("wrote %d predictions in the QVHighlights layout to %s", len(rows), path)


# --- the layout -> img-eval's metrics ----------------------------------------------------------------------


def read_qvhighlights(path: Path) -> dict[str, dict[str, Any]]:
    """{qid as text: row} of a predictions file in the layout; a line that is not such a row is one UsageError
    naming the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--score-qvhighlights {path}: cannot read it ({error})") from None
    rows: dict[str, dict[str, Any]] = {}
    expected = f"an object with {', '.join(FIELDS)} (QVHighlights' layout)"
    for number, row in jsonl_objects(text, f"--score-qvhighlights {path}", expected):
        where = f"--score-qvhighlights {path} line {number}"
        if any(name not in row for name in FIELDS):
            raise UsageError(f"{where}: expected an object with {', '.join(FIELDS)} (QVHighlights' layout)")
        windows = row["pred_relevant_windows"]
        if not isinstance(windows, list) or not windows or not all(_is_window(window) for window in windows):
            raise UsageError(f"{where}: pred_relevant_windows must be a non-empty list of [start, end, score]")
        saliency = row.get("pred_saliency_scores", [])
        if not isinstance(saliency, list) or not all(_is_finite(value) for value in saliency):
            raise UsageError(f"{where}: pred_saliency_scores must be a list of numbers")
        qid = str(row["qid"])
        if qid in rows:
            raise UsageError(f"{where}: qid {qid} is predicted twice")
        rows[qid] = row
    if not rows:
        raise UsageError(f"--score-qvhighlights {path} holds no predictions")
    return rows


def _is_finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_window(window: object) -> bool:
    return (
        isinstance(window, list)
        and len(window) == 3
        and all(_is_finite(value) for value in window)
        and window[0] <= window[1]
    )


def imported_prediction(record: QueryRecord, row: dict[str, Any]) -> QueryPrediction:
    """The file's prediction of one query as img-eval's QueryPrediction of its fused branch: the first window is
    the answer, the windows by score (the first 10) the ranked list."""
    windows = np.asarray(row["pred_relevant_windows"], np.float64)
    ranked = windows[np.argsort(-windows[:, 2], kind="stable")][:MAP_WINDOWS]
    truth = (record.start, record.end)
    answer_iou = temporal_iou(windows[0, 0], windows[0, 1], *truth)
    ranked_ious = temporal_iou(ranked[:, 0], ranked[:, 1], *truth)
    branch = BranchPrediction(
        steps=(-1, -1),
        span=(float(windows[0, 0]), float(windows[0, 1])),
        score=float(windows[0, 2]),
        iou=float(answer_iou),
        top_steps=np.full((0, 2), -1),
        top_spans=np.zeros((0, 2)),
        top_scores=np.zeros(0),
        top_ious=np.zeros(0),
        nms_steps=np.zeros((len(ranked), 2), np.int64),  # seconds only: the file has no step grid
        nms_spans=ranked[:, :2],
        nms_scores=ranked[:, 2],
        nms_ious=np.asarray(ranked_ious, np.float64),
    )
    return QueryPrediction(
        qid=record.qid,
        video_id=record.video_id,
        duration=record.duration,
        num_steps=0,
        ground_truth=truth,
        has_audio=False,
        audio_importance=None,
        branches={EXPORTED_BRANCH: branch},
        query=record.sentence,
        split=record.split,
    )


def score_qvhighlights(
    path: Path, splits: dict[str, list[QueryRecord]], names: Sequence[str], **context: Any
) -> list[EvalReport]:
    """The report of each named split of the annotations (`splits`, DataSources' records) for the predictions in
    `path`; HL metrics where queries have clip-level saliency labels and the file their clip scores."""
    rows = read_qvhighlights(path)
    unknown = [name for name in names if name not in splits]
    if unknown:
        raise UsageError(f"--split {unknown[0]}: the annotations have the splits {', '.join(splits)}")
    reports, matched = [], set()
    for name in names:
        records = splits[name]
        missing = [record.qid for record in records if record.qid not in rows]
        if missing:
            raise UsageError(
                f"--score-qvhighlights {path}: {len(missing)} of the {len(records)} {name} queries have no "
                f"prediction: {listed(missing)}"
            )
        predictions = [imported_prediction(record, rows[record.qid]) for record in records]
        report = EvalReport.from_predictions(name, predictions, scored_file=str(path), **context)
        labelled = [
            scored for record in records if (scored := _clip_scores(record, rows[record.qid], path)) is not None
        ]
        if labelled:
            report.branches[EXPORTED_BRANCH] |= highlight_metrics(labelled)
            report.highlight_queries = len(labelled)
        reports.append(report)
        matched.update(record.qid for record in records)
    left_out = [qid for qid in rows if qid not in matched]
    if left_out:
        log.warning(
            "left out %d predictions whose qid is in no split scored (%s): %s",
            len(left_out),
            ", ".join(names),
            listed(left_out),
        )
    return reports


def _clip_scores(record: QueryRecord, row: dict[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(the file's score of each clip, the labels' scores (clips, annotators)) of a labelled query; None without
    labels or without clip scores."""
    scores = row.get("pred_saliency_scores") or []
    if record.saliency is None or not scores:
        return None
    truth = clip_truth(record.saliency, record.duration)
    if len(scores) < len(truth):
        raise UsageError(
            f"--score-qvhighlights {path}: qid {record.qid} has {len(scores)} pred_saliency_scores; its video "
            f"({record.duration:g} s) has {len(truth)} clips of {record.saliency.clip_length:g} s"
        )
    return np.asarray(scores[: len(truth)], np.float64), truth
