"""The QVHighlights / Moment-DETR prediction layout: img-eval's predictions exported to it, files in it scored with
img-eval's metrics (numbers computed by hand), and an export scored back to img-eval's own numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extract.core.errors import UsageError
from img_model.data.dataset import dataset_splits
from img_model.evaluate.qvhighlights import qvhighlights_row, score_qvhighlights
from tests.img_cli import LearningCheck, run_img_eval


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _span(start: float, end: float, score: float) -> dict:
    return {"span": [start, end], "steps": [0, 0], "score": score, "iou": 0.0}


def test_an_img_eval_row_becomes_windows_best_first_and_a_score_per_two_second_clip() -> None:
    row = {
        "qid": "12",
        "video_id": "v1",
        "query": "a dog barks",
        "duration": 10.0,
        "num_steps": 4,  # steps of 2.5 s
        "branches": {
            "fused": {
                **_span(2.5, 7.5, 0.5),
                "top_nms": [_span(5.0, 7.5, 0.6), _span(2.5, 7.5, 0.5), _span(0.0, 2.5, 0.1)],
                "saliency": [0.1, 0.2, 0.3, 0.4],
            }
        },
    }
    exported = qvhighlights_row(row)
    # the authors' decoding (R1) first where NMS ranked another span first; then the kept spans, each once
    assert exported["pred_relevant_windows"] == [[2.5, 7.5, 0.5], [5.0, 7.5, 0.6], [0.0, 2.5, 0.1]]
    # clips [0,2) [2,4) [4,6) [6,8) [8,10): middles 1, 3, 5, 7, 9 s fall in steps 0, 1, 2, 2, 3
    assert exported["pred_saliency_scores"] == [0.1, 0.2, 0.3, 0.3, 0.4]
    assert (exported["qid"], exported["vid"], exported["query"]) == (12, "v1", "a dog barks")


ANNOTATIONS = [
    {
        "qid": "a",
        "video_id": "v1",
        "start": 2,
        "end": 6,
        "duration": 10,
        "query": "a dog barks",
        "relevant_clip_ids": [1, 2],
        "saliency_scores": [[4], [2]],
    },
    {"qid": "b", "video_id": "v2", "start": 0, "end": 4, "duration": 8, "query": "a door slams"},
]
PREDICTIONS = [
    {
        "qid": "a",
        "query": "a dog barks",
        "vid": "v1",
        "pred_relevant_windows": [[2, 6, 0.9], [0, 10, 0.5]],
        "pred_saliency_scores": [0.1, 0.3, 0.9, 0.2, 0.0],
    },
    # not sorted: the first window is the answer (IoU 0, touching); by score [1,3] (IoU 0.5), [0,4] (1), [4,8] (0)
    {"qid": "b", "vid": "v2", "pred_relevant_windows": [[4, 8, 0.2], [1, 3, 0.7], [0, 4, 0.4]]},
    {"qid": "z", "vid": "v9", "pred_relevant_windows": [[0, 1, 1.0]]},  # in no annotation: left out, said
]


def test_a_file_in_their_layout_is_scored_with_img_evals_metrics(tmp_path: Path) -> None:
    annotations = _jsonl(tmp_path / "queries.jsonl", ANNOTATIONS)
    predictions = _jsonl(tmp_path / "theirs.jsonl", PREDICTIONS)
    scored = run_img_eval("--score-qvhighlights", predictions, "--dataset", annotations, "--json")
    assert scored.returncode == 0, scored.stderr
    assert "left out 1 predictions whose qid is in no split scored (test): z" in scored.stderr
    report = json.loads(scored.stdout)
    assert report["queries"] == 2 and report["highlight_queries"] == 1
    metrics = report["branches"]["fused"]
    # R1 and mIoU: a's first window is its truth (IoU 1), b's touches it (IoU 0)
    assert [metrics[name] for name in ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")] == [50.0, 50.0, 50.0, 50.0]
    # by score, b's [0, 4] is in its top 5: every R5 holds for both
    assert [metrics[f"R5-NMS@{t}"] for t in (0.3, 0.5, 0.7)] == [100.0, 100.0, 100.0]
    # a: AP 1 at every threshold. b: [1, 3] (IoU 0.5) is a hit at 0.5 (AP 1); above 0.5 the hit is [0, 4] at rank
    # 2 (AP 1/2): mAP@0.5 = 100, mAP@0.75 = (1 + 0.5) / 2, mAP@[0.5:0.95] = (1 + (1 + 9 * 0.5) / 10) / 2
    assert metrics["mAP@0.5"] == 100.0 and metrics["mAP@0.75"] == 75.0
    assert metrics["mAP@[0.5:0.95]"] == pytest.approx(77.5)
    assert not any(name.startswith("R5-noNMS") for name in metrics)  # the layout holds no spans before NMS
    # a's clips score [0, 4, 2, 0, 0]: clip 1 alone is "very good"; the file ranks clip 2 first, clip 1 second
    assert (metrics["HL-HIT@1"], metrics["HL-mAP"]) == (0.0, 50.0)


def test_a_query_without_a_prediction_is_refused_naming_it(tmp_path: Path) -> None:
    predictions = _jsonl(tmp_path / "theirs.jsonl", PREDICTIONS[1:])
    splits = dataset_splits(str(_jsonl(tmp_path / "queries.jsonl", ANNOTATIONS)), None)
    with pytest.raises(UsageError) as refused:
        score_qvhighlights(predictions, splits, ["test"])
    assert str(refused.value) == f"--score-qvhighlights {predictions}: 1 of the 2 test queries have no prediction: a"


def test_an_export_scored_back_gives_img_evals_own_numbers(learning_check: LearningCheck, tmp_path: Path) -> None:
    exported = tmp_path / "img.jsonl"
    evaluated = run_img_eval(learning_check.checkpoint, "--threads", "1", "--json", "--export-qvhighlights", exported)
    assert evaluated.returncode == 0, evaluated.stderr
    own = json.loads(evaluated.stdout)
    assert own["warnings"] == []  # a healthy run (tests/test_health.py has the broken ones)
    rows = [json.loads(line) for line in exported.read_text().splitlines()]
    assert len(rows) == own["queries"] and all(len(row["pred_relevant_windows"]) <= 10 for row in rows)
    scored = run_img_eval("--score-qvhighlights", exported, "--dataset", learning_check.data.annotations, "--json")
    assert scored.returncode == 0, scored.stderr
    theirs = json.loads(scored.stdout)["branches"]["fused"]
    mine = own["branches"]["fused"]
    shown = [name for name in mine if not name.startswith("R5-noNMS")]
    assert set(theirs) == set(shown)
    assert {name: theirs[name] for name in shown} == pytest.approx({name: mine[name] for name in shown}, abs=1e-4)
