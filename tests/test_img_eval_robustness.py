"""img-eval's robustness checks (Figure 4): noisy and missing audio on a seeded share of the queries, the sweep with
its table and plot, and the breakdowns by moment-to-video ratio, moment length and audio importance (Figure 5,
Moment-DETR buckets, Table 16), checked by hand-computed cases and through the real img-eval."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from img_model.data.audio_perturbation import AudioPerturbation, chosen_queries
from img_model.data.synthetic import SENTENCES
from img_model.evaluate.breakdowns import equal_count_bins, length_bucket_masks
from img_model.evaluate.evaluator import BranchPrediction, QueryPrediction, length_breakdown, ratio_breakdown
from tests.img_cli import LearningCheck, run_img_eval

FAMILY_OF = {sentence: family for family, sentences in SENTENCES.items() for sentence in sentences}


def _prediction(qid: str, truth: tuple[float, float], duration: float, iou: float = 1.0) -> QueryPrediction:
    branch = BranchPrediction(
        (0, 0), truth, 1.0, iou, np.zeros((1, 2), int), np.array([truth]), np.ones(1), np.array([iou])
    )
    return QueryPrediction(qid, "v", duration, 10, truth, True, 0.3, {b: branch for b in ("fused", "visual", "audio")})


# --- hand-computed cases ----------------------------------------------------------------------------------------


def test_equal_count_bins_cut_sorted_values_into_groups_of_equal_size() -> None:
    values = np.array([0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 1.0, 0.4, 0.6, 0.8])
    bins = equal_count_bins(values, 5)
    assert [sorted(values[b].tolist()) for b in bins] == [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8], [0.9, 1.0]]
    assert [len(b) for b in equal_count_bins(np.arange(7.0), 3)] == [3, 2, 2]
    assert len(equal_count_bins(np.arange(2.0), 5)) == 2  # never an empty bin
    assert equal_count_bins(np.array([]), 5) == []


def test_ratio_breakdown_gives_each_bin_its_extreme_ratios_and_metrics() -> None:
    # ratios 0.1, 0.2, 0.3, 0.4 (moments of 1-4 s in 10 s videos); the first two are right (IoU 1), the others not
    predictions = [_prediction(f"q{k}", (0.0, k), 10.0, iou=1.0 if k < 3 else 0.2) for k in (4, 1, 3, 2)]
    bins = ratio_breakdown(predictions, 2)
    assert [b["range"] for b in bins] == [[0.1, 0.2], [0.3, 0.4]]
    assert [b["label"] for b in bins] == ["0.100-0.200", "0.300-0.400"]
    assert [b["branches"]["fused"]["R1@0.5"] for b in bins] == [100.0, 0.0]
    assert [b["queries"] for b in bins] == [2, 2]


def test_length_buckets_are_moment_detrs_half_open_ranges() -> None:
    # Moment-DETR's standalone_eval keeps a window in (min, max]: exactly 10 s is short, exactly 30 s middle
    lengths = np.array([0.5, 10.0, 10.01, 30.0, 30.5, 120.0])
    masks = {name: mask.tolist() for name, _, _, mask in length_bucket_masks(lengths)}
    assert masks == {
        "short": [True, True, False, False, False, False],
        "middle": [False, False, True, True, False, False],
        "long": [False, False, False, False, True, True],
    }
    buckets = length_breakdown([_prediction(f"q{k}", (0.0, float(n)), 200.0) for k, n in enumerate(lengths)])
    assert [(b["bucket"], b["queries"]) for b in buckets] == [("short", 2), ("middle", 2), ("long", 2)]


def test_chosen_queries_depend_on_seed_and_qids_only_and_grow_with_the_fraction() -> None:
    qids = [f"qid_{k}" for k in range(50)]
    fifth = chosen_queries(qids, 0.2, seed=3, purpose="noise")
    assert fifth.sum() == 10
    reordered = chosen_queries(qids[::-1], 0.2, seed=3, purpose="noise")[::-1]
    assert (reordered == fifth).all()  # the same queries whatever their order
    assert (chosen_queries(qids, 0.6, seed=3, purpose="noise") >= fifth).all()  # nested
    assert (chosen_queries(qids, 0.2, seed=4, purpose="noise") != fifth).any()
    noise = AudioPerturbation(noise_fraction=1.0, noise_std=2.0, seed=3)
    audio = np.zeros((4, 8), np.float32)
    assert np.array_equal(noise.add_noise(audio, "qid_1"), noise.add_noise(audio, "qid_1"))
    assert not np.array_equal(noise.add_noise(audio, "qid_1"), noise.add_noise(audio, "qid_2"))


# --- through img-eval ----------------------------------------------------------------------------------------
# on the learning check's model (conftest.py's learning_check): its audio importance is high on audio-marked
# queries, so perturbing their audio shows


def _family_importance(rows: list[dict]) -> dict[str, float]:
    return {
        family: float(np.mean([r["audio_importance"] for r in rows if FAMILY_OF[r["query"]] == family]))
        for family in SENTENCES
    }


@pytest.mark.slow
def test_noise_on_every_query_lowers_the_importance_of_audio_marked_queries(
    learning_check: LearningCheck, tmp_path: Path
) -> None:
    checkpoint = learning_check.checkpoint
    noisy = run_img_eval(
        checkpoint,
        *("--threads", "1", "--json", "--predictions", tmp_path / "noisy.jsonl"),
        *("--audio-noise-fraction", "1", "--audio-noise-std", "10", "--noise-seed", "0"),
    )
    assert noisy.returncode == 0, noisy.stderr
    before = _family_importance(learning_check.rows())  # img-eval's clean run: the same options without the noise
    after = _family_importance([json.loads(line) for line in (tmp_path / "noisy.jsonl").read_text().splitlines()])
    summary = json.loads(noisy.stdout)["audio_perturbation"]
    print("mean importance per family, clean", before, "noisy (std 10)", after, summary)  # for the report
    assert after["audio"] < before["audio"] - 0.2, (before, after)
    # every query with audio is noisy; the silent videos' queries stay clean
    assert summary["noisy_queries"] + summary["clean_queries"] == json.loads(noisy.stdout)["queries"]
    assert summary["clean_queries"] == sum(not json.loads(r)["has_audio"] for r in (tmp_path / "noisy.jsonl").open())


@pytest.mark.slow
def test_missing_audio_on_every_query_is_drop_audio_and_a_share_is_reported(
    learning_check: LearningCheck, tmp_path: Path
) -> None:
    checkpoint = learning_check.checkpoint
    dropped = run_img_eval(checkpoint, "--threads", "1", "--json", "--drop-audio")
    missing = run_img_eval(checkpoint, "--threads", "1", "--json", "--audio-missing-fraction", "1")
    assert dropped.returncode == 0 and missing.returncode == 0, dropped.stderr + missing.stderr
    assert json.loads(missing.stdout)["branches"] == json.loads(dropped.stdout)["branches"]
    report = tmp_path / "report.html"
    share = run_img_eval(
        checkpoint,
        *("--threads", "1", "--audio-missing-fraction", "0.5", "--noise-seed", "7", "--ratio-bins", "3"),
        *("--report", report),
    )
    assert share.returncode == 0, share.stderr
    assert "audio missing on 16 queries" in share.stdout  # 18 of the 36 chosen (seed 7), 2 of them without audio
    assert "by moment-to-video ratio (3 equal-count bins)" in share.stdout
    assert "short 0-10 s" in share.stdout and "by predicted audio importance" in share.stdout
    page = report.read_text()
    data = json.loads(page.split('id="report-data">')[1].split("</script>")[0])
    breakdowns = data["overall"]["breakdowns"]
    assert len(breakdowns["ratio"]) == 3 and [b["bucket"] for b in breakdowns["length"]] == ["short", "middle", "long"]
    assert "audio missing on 16 queries" in " ".join(data["context"]["notes"]) and 'id="breakdown-table"' in page


@pytest.mark.slow
def test_sweep_writes_one_table_and_one_plot_for_two_checkpoints(learning_check: LearningCheck, tmp_path: Path) -> None:
    checkpoint = learning_check.checkpoint
    twin = tmp_path / "twin" / "best.pt"
    twin.parent.mkdir()
    twin.write_bytes(checkpoint.read_bytes())
    out = tmp_path / "sweep"
    result = run_img_eval(
        checkpoint,
        *("--compare", twin, "--threads", "1", "--audio-noise-std", "10"),
        *("--sweep", "audio-noise-fraction=0,0.5,1", "--sweep-out", out),
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["sweep.csv", "sweep.json", "sweep.md", "sweep.png", "sweep.svg"]
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["checkpoint"], float(r["audio-noise-fraction"])) for r in rows] == [
        (name, value) for name in ("run", "twin") for value in (0.0, 0.5, 1.0)
    ]
    importance = [float(r["mean_importance"]) for r in rows]
    assert importance[:3] == importance[3:]  # the same queries, the same noise, for both checkpoints
    assert rows[0]["mean_importance_perturbed"] == "" and rows[1]["mean_importance_perturbed"] != ""
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG" and b"<svg" in (out / "sweep.svg").read_bytes()
    assert "| audio-noise-fraction |" in result.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--audio-noise-fraction", "nan"), "is not a finite number from 0 to 1"),
        (("--audio-noise-std", "inf"), "is not a finite number from 0"),
        (("--audio-weight", "nan"), "is not a finite number from 0 to 1"),
        (("--nms-threshold", "nan"), "is not a finite number from 0 to 1"),
        (("--sweep", "audio-noise-fraction=0,2"), "'2' is not a finite number from 0 to 1"),
        (("--compare", "other.pt"), "--compare without --sweep puts a second column in the report"),
        (("--sweep-out", "out"), "--sweep-out goes with --sweep"),
    ],
)
def test_bad_robustness_options_are_one_line_usage_errors(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    """img-eval's click command in this process (a usage error through the installed script: test_img_eval.py's
    test_an_error_is_one_line_whatever_its_message_holds); refused before the checkpoint is read."""
    from img_model.cli.evaluate import main as img_eval

    result = CliRunner().invoke(img_eval, [str(tmp_path / "best.pt"), *args])
    assert result.exit_code == 2, result.output
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
