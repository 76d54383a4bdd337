"""Numbers as they are: how probabilities print, and the warnings about a run whose audio importance collapsed,
whose selection metric never moved from 0, or whose loss spiked."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from extract.core.console import format_probability
from img_model.checkpoint import read_checkpoint, save_checkpoint
from img_model.evaluate.health import TrainingHealth, collapsed_importance, loss_spikes, stuck_selection
from tests.img_cli import LearningCheck, run_img_eval, train_tiny_checkpoint


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "n/a"),
        (math.nan, "n/a"),
        (0.0, "0"),
        (1e-17, "< 0.001"),  # the collapsed head of issue 18, which "0.000" hid
        (0.000999, "< 0.001"),
        (0.001, "0.001"),
        (0.41, "0.410"),
        (1.0, "1.000"),
    ],
)
def test_a_probability_below_a_thousandth_prints_as_below_and_never_as_zero(value: float | None, shown: str) -> None:
    assert format_probability(value) == shown


def test_the_threshold_follows_the_digits() -> None:
    assert format_probability(0.00005, digits=4) == "< 0.0001"
    assert format_probability(0.0005, digits=4) == "0.0005"


def test_img_pipelines_experiment_table_prints_a_collapsed_importance_as_below() -> None:
    from pipelines.experiment_table import _shown

    assert _shown(1e-17, 2e-18, probability=True) == "< 0.001 ± < 0.001"
    assert _shown(0.41, 0.02, probability=True) == "0.410 ± 0.020"
    assert _shown(41.0, 2.0) == "41.00 ± 2.00"  # percentages as before


# --- the checks, on numbers --------------------------------------------------------------------------------------


def test_importance_below_a_thousandth_on_every_query_with_audio_is_collapsed() -> None:
    warning = collapsed_importance([1e-17, 4e-4, 0.9, None], [True, True, False, True], "test")
    assert warning is not None
    # the silent query's 0.9 and the query without a prediction do not count: 2 queries judged, highest 4e-4
    assert "on all 2 test queries with audio (max 0.0004)" in warning


def test_one_importance_at_a_thousandth_is_not_a_collapse() -> None:
    assert collapsed_importance([1e-17, 1e-3], [True, True], "test") is None
    assert collapsed_importance([None, None], [True, True], "test") is None  # a model without the AIP
    assert collapsed_importance([1e-9], [False], "test") is None  # no query has audio: nothing to judge


def test_a_selection_metric_at_zero_on_every_evaluation_is_stuck() -> None:
    warning = stuck_selection([0.0, 0.0, 0.0], "fused R1@0.7")
    assert warning is not None and "stayed 0 at all 3 evaluations" in warning
    assert stuck_selection([0.0, 12.5, 0.0], "fused R1@0.7") is None
    assert stuck_selection([], "fused R1@0.7") is None  # a refit run selects nothing


def test_a_loss_above_three_times_its_running_mean_is_a_spike() -> None:
    # 30 steps at 10: the bias-corrected exponential mean is 10 exactly; 31 > 3 x 10 at step 31, 29 not at 32
    spikes = loss_spikes([10.0] * 30 + [31.0, 10.0])
    assert (spikes.spikes, spikes.first) == (1, (31, 31.0, pytest.approx(10.0)))
    warning = spikes.warning()
    assert warning is not None and "at 1 step (worst step 31: 31 vs 10)" in warning
    assert loss_spikes([10.0] * 30 + [29.0]).warning() is None


def test_the_first_twenty_steps_are_not_checked() -> None:
    # the loss falls fastest at the start: step 20's 100 is not judged, step 21's is (against a mean pulled up by it)
    assert loss_spikes([10.0] * 19 + [100.0]).spikes == 0
    assert loss_spikes([10.0] * 20 + [100.0]).spikes == 1


def test_the_running_mean_continues_across_a_resume() -> None:
    losses = [10.0 + (step % 7) for step in range(40)] + [60.0, 11.0, 70.0]
    whole = loss_spikes(losses)
    first = loss_spikes(losses[:25])
    resumed = TrainingHealth.from_dict(TrainingHealth("fused R1@0.7", first).as_dict()).loss
    for step, loss in enumerate(losses[25:], 26):
        resumed.update(step, loss)
    assert resumed == whole and whole.spikes == 2


# --- through img-train and img-eval ------------------------------------------------------------------------------


def test_a_healthy_run_warns_about_nothing(learning_check: LearningCheck) -> None:
    run = learning_check.checkpoint.parent
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["kind"] == "final" and final["warnings"] == []
    assert "warning" not in (run / "summary.txt").read_text()
    # img-eval's JSON of the same checkpoint says "warnings": [] (tests/test_qvhighlights.py's round trip)


def test_img_train_records_what_the_warnings_need_in_the_checkpoint(learning_check: LearningCheck) -> None:
    checkpoint = read_checkpoint(learning_check.checkpoint)
    assert checkpoint.training is not None
    health = checkpoint.training["health"]
    lines = [json.loads(line) for line in (learning_check.checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
    scores = [line["branches"]["fused"]["R1@0.7"] for line in lines if line["kind"] == "eval"]
    assert health["metric"] == "fused R1@0.7"
    assert health["selection_scores"] == scores[: len(health["selection_scores"])] and health["selection_scores"]
    assert health["loss"]["steps"] == checkpoint.training["step"]


def test_img_trains_summary_warns_about_a_selection_metric_that_never_moved(tmp_path: Path) -> None:
    # the tiny checkpoint's run: one epoch, one evaluation, whose fused R1@0.7 is 0 (measured)
    _, checkpoint = train_tiny_checkpoint(tmp_path)
    run = checkpoint.parent
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    stuck = "fused R1@0.7 (selection) stayed 0 at its one evaluation: best.pt chose nothing"
    assert len(final["warnings"]) == 1 and final["warnings"][0].startswith(stuck)
    assert f"\n\nwarning: {stuck}" in (run / "summary.txt").read_text()


@pytest.fixture(scope="module")
def broken(learning_check: LearningCheck, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The learning check's best.pt with its audio importance head set to output sigmoid(-40) ~ 4e-18 (the
    collapse of issue 18), and a training record whose selection metric stayed 0 and whose loss spiked twice."""
    checkpoint = read_checkpoint(learning_check.checkpoint)
    assert checkpoint.training is not None
    weights = dict(checkpoint.state_dict)
    weights["audio_importance.classifier.weight"] = torch.zeros_like(weights["audio_importance.classifier.weight"])
    weights["audio_importance.classifier.bias"] = torch.full_like(weights["audio_importance.classifier.bias"], -40.0)
    loss = {"steps": 48, "mean": 20.0, "spikes": 2, "first": [30, 95.0, 21.0], "worst": [31, 120.0, 25.0]}
    health = {"metric": "fused R1@0.7", "loss": loss, "selection_scores": [0.0, 0.0, 0.0]}
    path = tmp_path_factory.mktemp("broken") / "broken.pt"
    save_checkpoint(replace(checkpoint, state_dict=weights, training={**checkpoint.training, "health": health}), path)
    return path


def test_img_eval_warns_about_a_collapsed_importance_a_stuck_metric_and_a_spike_in_one_line_each(broken: Path) -> None:
    evaluated = run_img_eval(broken, "--threads", "1")
    assert evaluated.returncode == 0, evaluated.stderr
    warnings = [line for line in evaluated.stdout.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 3 and max(map(len, warnings)) <= 120  # one terminal line each
    assert "stayed 0 at all 3 evaluations" in warnings[0] and "(training to step" in warnings[0]
    assert "worst step 31: 120 vs 25; first 30" in warnings[1]
    assert "audio importance collapsed: p < 0.001 on all 34 test queries" in warnings[2]
    assert "mean audio importance < 0.001" in evaluated.stdout and "0.000" not in evaluated.stdout


def test_img_eval_json_lists_the_warnings(broken: Path) -> None:
    evaluated = run_img_eval(broken, "--threads", "1", "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert len(report["warnings"]) == 3 and report["warnings"][2].startswith("audio importance collapsed")
    assert report["mean_audio_importance"] < 1e-3
