"""Metrics comparable with the literature, on cases computed by hand: R@5 after NMS (2D-TAN / MMN), Moment-DETR's
moment-retrieval mAP and highlight mAP / HIT@1, clip-level saliency labels in a custom JSONL, and img-eval printing
them and exporting the saliency scores per step."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from img_model.data.synthetic import SyntheticDataset
from img_model.evaluate.evaluator import BRANCHES, METRIC_NAMES
from img_model.network.decoding import clip_steps, nms_spans, top_spans
from img_model.network.metrics import (
    average_precision,
    highlight_average_precision,
    highlight_metrics,
    moment_map,
    retrieval_metrics,
    temporal_iou,
)
from manifests.custom import read_custom
from manifests.errors import ManifestError
from manifests.records import ClipSaliency
from tests.img_cli import run_img_eval, train_tiny_checkpoint

TINY = 1e-6


def _logits(probabilities: list[float]) -> torch.Tensor:
    return torch.tensor([probabilities]).log()


# Six steps. P_start: 0.6 at step 0, 0.4 at step 3, T = 1e-6 elsewhere; P_end: 0.55 at step 1, 0.45 at step 4, and
# T, 2T, 2.5T, 4T at steps 0, 2, 3, 5. The spans (i, j) by P_start(i)·P_end(j): (0,1) 0.33, (0,4) 0.27, (3,4) 0.18,
# then (0,5) 2.4T, (3,5) 1.6T, (0,3) 1.5T, (0,2) 1.2T, (3,3) 1.0T, (0,0) 0.6T, (1,1) 0.55T, ..., then the T² spans.
START = _logits([0.6, TINY, TINY, 0.4, TINY, TINY])
END = _logits([TINY, 0.55, 2 * TINY, 2.5 * TINY, 0.45, 4 * TINY])


def _pairs(spans) -> list[tuple[int, int]]:
    return [(int(i), int(j)) for i, j in zip(spans.start[0], spans.end[0], strict=True) if i >= 0]


def test_nms_keeps_spans_whose_iou_with_every_kept_span_is_at_most_the_threshold() -> None:
    # Greedy NMS at 0.5, on the step grid ((i, j) covers [i, j + 1)):
    #   (0,1) [0,2) kept first;
    #   (0,4) [0,5): IoU 2/5 with [0,2) -> kept;   (3,4) [3,5): IoU 0 and 2/5 -> kept;
    #   (0,5) [0,6): 5/6 with [0,5), (3,5) [3,6): 2/3 with [3,5), (0,3) [0,4): 4/5 with [0,5), (0,2) [0,3): 2/3 with
    #   [0,2) -> suppressed;
    #   (3,3) [3,4): IoU 1/2 with [3,5): not above 0.5 -> kept (2D-TAN and MMN suppress IoU > threshold only);
    #   (0,0) [0,1): IoU 1/2 with [0,2), 1/5 with [0,5), 0 with the others -> kept, the fifth.
    kept = nms_spans(START, END, 5, 0.5)
    assert _pairs(kept) == [(0, 1), (0, 4), (3, 4), (3, 3), (0, 0)]
    assert kept.score[0, :3].tolist() == pytest.approx([0.33, 0.27, 0.18], rel=1e-4)
    # Without NMS the five most probable distinct spans are variations of the first three.
    assert _pairs(top_spans(START, END, 5)) == [(0, 1), (0, 4), (3, 4), (0, 5), (3, 5)]
    assert _pairs(nms_spans(START, END, 5, 1.0)) == _pairs(top_spans(START, END, 5))  # 1 suppresses nothing
    # At 0 nothing may overlap: (0,1), (3,4), then every T-level span overlaps one of them; of the T² spans only
    # (5,5) (4T²) and (2,2) (2T²) do not.
    assert _pairs(nms_spans(START, END, 5, 0.0)) == [(0, 1), (3, 4), (5, 5), (2, 2)]


def test_nms_pads_with_minus_one_and_never_ranks_masked_steps() -> None:
    start, end = START.clone(), END.clone()
    start[0, 3:] = end[0, 3:] = -1e30  # a 3-step video padded to 6
    kept = nms_spans(start, end, 10, 0.5)
    # (0,1) [0,2); (0,2) [0,3): IoU 2/3 -> suppressed; (0,0) [0,1): 1/2 -> kept; (1,1) [1,2): 1/2 -> kept; the
    # 2T² tie (1,2), (2,2) in row-major order: (1,2) [1,3): 1/3, 0, 1/2 -> kept; (2,2) [2,3): 1/2 with [1,3) -> kept.
    assert _pairs(kept) == [(0, 1), (0, 0), (1, 1), (1, 2), (2, 2)]
    assert kept.start[0, 5:].tolist() == [-1] * 5 and kept.score[0, 5:].tolist() == [0.0] * 5


def test_r5_after_nms_finds_the_moment_that_the_five_most_probable_spans_miss() -> None:
    # The true moment is step 3, [3, 4): (3,3) is fourth after NMS; without NMS the best is (3,4) with IoU 1/2.
    truth = (np.array([3.0]), np.array([4.0]))
    kept, top = nms_spans(START, END, 10, 0.5), top_spans(START, END, 5)
    kept_iou = temporal_iou(kept.start.numpy(), kept.end.numpy() + 1, *truth)
    top_iou = temporal_iou(top.start.numpy(), top.end.numpy() + 1, *truth)
    metrics = retrieval_metrics(top_iou[:, 0], top_iou, kept_iou)
    assert metrics["R5-NMS@0.7"] == 100.0 and metrics["R5-noNMS@0.7"] == 0.0
    assert metrics["R5-noNMS@0.5"] == 100.0  # (3,4) has IoU exactly 1/2: IoU >= threshold counts


def test_moment_map_is_moment_detrs_mean_over_queries_and_ten_thresholds() -> None:
    # Query 1 ranks windows with IoU 0, 0.8, 1.0 against its one true window: at μ ≤ 0.8 (0.5 … 0.8, seven
    # thresholds) the first hit is rank 2, precision 1/2 at recall 1: AP 1/2; at 0.85, 0.9, 0.95 it is rank 3: AP
    # 1/3. Mean over thresholds (7/2 + 3/3) / 10 = 0.45. Query 2 ranks its true window first: AP 1 everywhere.
    ranked = np.array([[0.0, 0.8, 1.0], [1.0, np.nan, np.nan]])
    metrics = moment_map(ranked)
    assert metrics["mAP@0.5"] == pytest.approx(100 * (0.5 + 1) / 2)
    assert metrics["mAP@0.75"] == pytest.approx(100 * (0.5 + 1) / 2)
    assert metrics["mAP@[0.5:0.95]"] == pytest.approx(100 * (0.45 + 1) / 2)
    assert moment_map(np.array([[0.2] * 10 + [1.0]]))["mAP@0.5"] == 0.0  # only the first ten windows count


def test_moment_map_of_one_ground_truth_is_the_mean_of_average_precision() -> None:
    rng = np.random.default_rng(0)
    ranked = np.round(rng.random((50, 10)), 1)  # IoUs on a 0.1 grid: many ties with the thresholds
    ranked[::7, 4:] = np.nan  # queries with fewer windows
    expected = np.mean([average_precision(row[~np.isnan(row)][:, None]) for row in ranked], axis=0)
    metrics = moment_map(ranked)
    assert metrics["mAP@[0.5:0.95]"] == pytest.approx(100 * expected.mean())
    assert metrics["mAP@0.5"] == pytest.approx(100 * expected[0]) and metrics["mAP@0.75"] == pytest.approx(
        100 * expected[5]
    )


def test_average_precision_matches_each_ground_truth_once_and_interpolates_as_voc() -> None:
    # Two true windows; ranked windows: a copy of the first (IoU 1), a near copy of it (IoU 0.9), the second.
    # At 0.5: TP, FP (its truth is taken), TP: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1. Precision made
    # non-increasing from the right: 1, 2/3, 2/3; AP = 1/2 · 1 + 1/2 · 2/3 = 5/6.
    ious = np.array([[1.0, 0.0], [0.9, 0.0], [0.0, 1.0]])
    assert average_precision(ious, (0.5,)).tolist() == pytest.approx([5 / 6])
    # The second truth never found at 0.5: recall stops at 1/2, the rest adds at precision 0: AP 1/2.
    assert average_precision(ious[:2], (0.5,)).tolist() == pytest.approx([0.5])
    assert average_precision(np.zeros((0, 1)), (0.5, 0.7)).tolist() == [0.0, 0.0]


def test_highlight_average_precision_is_moment_detrs_get_ap() -> None:
    # Clips by score: 0.9 (positive), 0.8, 0.5, 0.3 (positive): precision 1 at recall 1/2, then 1/2 at recall 1:
    # AP = mean(1, 1/2) = 0.75.
    assert highlight_average_precision(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.5])) == 0.75
    # Tied scores enter together: 0.9 (positive) then the three at 0.5 (two positives, one negative) are one step
    # from recall 1/3 to 1 at precision 3/4: mean(1, 3/4) = 0.875 (sklearn's average_precision_score: 0.8333).
    assert highlight_average_precision(np.array([1, 1, 1, 0]), np.array([0.9, 0.5, 0.5, 0.5])) == 0.875
    assert highlight_average_precision(np.array([0, 0]), np.array([0.1, 0.2])) == 0.0
    assert highlight_average_precision(np.array([1, 1]), np.array([0.1, 0.2])) == 1.0


def test_highlight_map_and_hit1_at_very_good() -> None:
    # Query A, two annotators. Positive (score >= 4): annotator 1 clips 0 and 2, annotator 2 clips 1 and 2.
    # Annotator 1: AP 0.75 (above). Annotator 2, by score: clip 0 (negative), 1 (positive), 3, 2 (positive):
    # precision 1/2 at recall 1/2, 2/4 at recall 1: AP 1/2. Query A: (0.75 + 0.5) / 2 = 0.625; its best clip, 0,
    # is positive for annotator 1: a hit.
    query_a = (np.array([0.9, 0.8, 0.3, 0.5]), np.array([[4, 2], [0, 4], [4, 4], [1, 0]]))
    # Query B: clip 1 (scores 3 and 2, not very good) ranks above clip 0 (4 and 4): AP 1/2 for both annotators,
    # and no hit.
    query_b = (np.array([0.1, 0.7]), np.array([[4, 4], [3, 2]]))
    assert highlight_metrics([query_a, query_b]) == pytest.approx({"HL-mAP": 56.25, "HL-HIT@1": 50.0})


def test_clips_meet_steps_at_their_middle() -> None:
    # 10 s in 5 steps of 2 s, 1-s clips: clip k's middle k + 0.5 lies in step (k + 0.5) // 2.
    assert clip_steps(10, 1.0, 5, 10.0).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # 7 s, 2-s clips: four clips, the last [6, 7) with its middle at 6.5 s; 7 steps of 1 s.
    labels = ClipSaliency(2.0, (3,), ((4.0,),))
    assert labels.num_clips(7.0) == 4 and labels.num_clips(150.0) == 75
    assert clip_steps(4, 2.0, 7, 7.0).tolist() == [1, 3, 5, 6]


def _write(path: Path, *rows: dict) -> Path:
    base = {"video_id": "v", "start": 1.0, "end": 3.0, "query": "a dog barks", "duration": 10.0}
    path.write_text("".join(json.dumps(base | row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_custom_jsonl_reads_qvhighlights_saliency_labels(tmp_path: Path) -> None:
    labelled = {"relevant_clip_ids": [1, 2], "saliency_scores": [[4, 3, 2], [1, 0, 4]]}
    path = _write(
        tmp_path / "q.jsonl",
        labelled,
        {"qid": "plain"},
        {"relevant_clip_ids": [9], "saliency_scores": [3], "clip_length": 1},
    )
    first, plain, one = read_custom(path)[0]
    assert first.saliency == ClipSaliency(2.0, (1, 2), ((4.0, 3.0, 2.0), (1.0, 0.0, 4.0)))
    assert plain.saliency is None
    assert one.saliency == ClipSaliency(1.0, (9,), ((3.0,),))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"relevant_clip_ids": [1]}, "line 1: relevant_clip_ids without saliency_scores: give both"),
        ({"relevant_clip_ids": [1], "saliency_scores": [5]}, "saliency_scores must be in [0, 4]"),
        ({"relevant_clip_ids": [1, 2], "saliency_scores": [4]}, "one entry per relevant clip id"),
        ({"relevant_clip_ids": [1, 1], "saliency_scores": [4, 4]}, "lists a clip twice"),
        ({"relevant_clip_ids": [-1], "saliency_scores": [4]}, "clip numbers (integers from 0)"),
        ({"relevant_clip_ids": [1, 2], "saliency_scores": [[4, 4], [4]]}, "the same number of annotators"),
        ({"relevant_clip_ids": [1], "saliency_scores": [4], "clip_length": 0}, "clip_length 0 must be a positive"),
        ({"relevant_clip_ids": [5], "saliency_scores": [4]}, "relevant clip 5 starts at 10 s, not before the end"),
        ({"clip_length": 2}, "clip_length without relevant_clip_ids and saliency_scores"),
    ],
)
def test_bad_saliency_labels_are_one_line_errors(tmp_path: Path, row: dict, message: str) -> None:
    with pytest.raises(ManifestError) as error:
        read_custom(_write(tmp_path / "q.jsonl", row))
    assert message in str(error.value) and "\n" not in str(error.value)


# --- img-eval, as users run it ---------------------------------------------------------------------------------


def in_process_img_eval(*args: str) -> Result:
    """img-eval's click command in this process (torch's thread count restored afterwards): its tables and its
    refusals without another process start; the JSON run below is the installed script."""
    from img_model.cli.evaluate import main as img_eval

    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(img_eval, list(args))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[SyntheticDataset, Path, Path]:
    """The tiny checkpoint, and its dataset's annotations with QVHighlights-style labels on half the test queries:
    the 2-s clips inside the moment, scored [4, 3] and [2, 4] alternately by two annotators."""
    folder = tmp_path_factory.mktemp("literature")
    data, checkpoint = train_tiny_checkpoint(folder)
    rows = [json.loads(line) for line in data.annotations.read_text().splitlines()]
    for number, row in enumerate(r for r in rows if r["split"] == "test"):
        if number % 2 == 0:
            clips = list(range(int(row["start"] // 2), math.ceil(row["end"] / 2)))
            row["relevant_clip_ids"] = clips
            row["saliency_scores"] = [[4, 3] if k % 2 == 0 else [2, 4] for k in range(len(clips))]
    path = folder / "labelled.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return data, checkpoint, path


def test_img_eval_reports_the_literature_metrics_and_exports_saliency_per_step(
    labelled: tuple[SyntheticDataset, Path, Path], tmp_path: Path
) -> None:
    _, checkpoint, annotations = labelled
    predictions = tmp_path / "p.jsonl"
    evaluated = run_img_eval(
        checkpoint, "--dataset", annotations, "--json", "--threads", "1", "--nms-threshold", "0.3",
        "--predictions", predictions,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    labelled_rows = [row for row in rows if "saliency_labels" in row]
    assert report["nms_threshold"] == 0.3 and report["highlight_queries"] == len(labelled_rows) > 0
    assert len(labelled_rows) < len(rows)
    for branch in BRANCHES:
        metrics = report["branches"][branch]
        assert list(metrics) == [name for name in METRIC_NAMES if name in metrics]
        assert set(metrics) == set(METRIC_NAMES)  # R1, mIoU, R5 with and without NMS, mAPs, HL-mAP, HL-HIT@1
        queries = []
        for row in rows:
            predicted = row["branches"][branch]
            assert len(predicted["saliency"]) == row["num_steps"]  # masked to the video's steps
            kept = predicted["top_nms"]
            assert [k["score"] for k in kept] == sorted((k["score"] for k in kept), reverse=True)
            for first in range(len(kept)):  # NMS at 0.3: no two kept spans overlap by more
                for second in range(first):
                    a, b = kept[first]["steps"], kept[second]["steps"]
                    assert temporal_iou(a[0], a[1] + 1, b[0], b[1] + 1) <= 0.3
            if "saliency_labels" in row:
                labels = row["saliency_labels"]
                clips = math.ceil(row["duration"] / labels["clip_length"])
                truth = np.zeros((clips, 2))
                truth[labels["relevant_clip_ids"]] = labels["saliency_scores"]
                middles = (np.arange(clips) * 2.0 + np.minimum(np.arange(clips) * 2.0 + 2.0, row["duration"])) / 2
                steps = np.floor(middles * row["num_steps"] / row["duration"]).astype(int)
                queries.append((np.array(predicted["saliency"])[steps], truth))
        assert highlight_metrics(queries) == pytest.approx({k: metrics[k] for k in ("HL-mAP", "HL-HIT@1")})
    tables = in_process_img_eval(str(checkpoint), "--dataset", str(annotations), "--threads", "1")  # its tables
    assert tables.exit_code == 0, tables.output
    for name in ("R1@0.7", "R5-NMS@0.5", "R5-noNMS@0.5", "mAP@[0.5:0.95]", "HL-HIT@1"):
        assert name in tables.stdout
    assert "a span is right when its IoU >= the threshold" in tables.stdout and "IoU > 0.5 suppressed" in tables.stdout
    assert f"on the {report['highlight_queries']} queries with clip labels" in tables.stdout
    assert max(len(line) for line in tables.stdout.splitlines()) <= 120


def test_img_eval_refuses_an_nms_threshold_outside_0_1_and_bad_labels_in_one_line(
    labelled: tuple[SyntheticDataset, Path, Path], tmp_path: Path
) -> None:
    _, checkpoint, annotations = labelled
    refused = in_process_img_eval(str(checkpoint), "--nms-threshold", "1.5")
    assert refused.exit_code == 2 and "--nms-threshold" in refused.stderr
    rows = annotations.read_text().splitlines()
    broken = json.loads(rows[-1]) | {"relevant_clip_ids": [0], "saliency_scores": [7]}
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([*rows[:-1], json.dumps(broken)]) + "\n", encoding="utf-8")
    refused = in_process_img_eval(str(checkpoint), "--dataset", str(bad), "--threads", "1")
    assert refused.exit_code == 2 and refused.stderr.count("error:") == 1
    assert f"line {len(rows)}: saliency_scores must be in [0, 4]" in refused.stderr
