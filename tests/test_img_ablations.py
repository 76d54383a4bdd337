"""The ablation switches of issue 17 ([model] audio_weight, granularities, audio; img-eval --audio-weight) end to end:
each switch trains through img-train, is recorded in its checkpoint and rebuilt by img-eval; and on the synthetic
"audio matters" families (img_model/data/synthetic.py) the ablations lose what the learning check
(tests/test_img_learning.py) measures: a fixed weight ("w/o AIP") and --audio-weight 0 lose the audio family's
advantage, "IMG w/o audio" scores the audio family near chance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from img_model.checkpoint import read_checkpoint
from img_model.cli.train import main as train_main
from img_model.data.synthetic import LEARNING_CHECK_CONFIG, SyntheticDataset, write_audio_matters
from img_model.network.config import IMGConfig
from img_model.network.convert import CheckpointLayoutError, ours_to_official
from img_model.network.model import IMG
from tests.golden import golden_tensors
from tests.img_cli import TINY_CONFIG, run_img_eval, run_img_train, tiny_dataset, train_args

# TOML lines added to [model], and what the checkpoint must record.
SWITCHES = {
    "add": ('audio_weight = "add"', {"audio_weight": "add"}),
    "concat": ('audio_weight = "concat"', {"audio_weight": "concat"}),
    "similarity": ('audio_weight = "similarity"', {"audio_weight": "similarity"}),
    "entropy": ('audio_weight = "entropy"', {"audio_weight": "entropy"}),
    "event-only": (
        'granularities = ["event"]\nevent_num = 2\nslot_iterations = 2',
        {"granularities": ("event",), "event_num": 2, "slot_iterations": 2},
    ),
    "global-local": ('granularities = ["global", "local"]', {"granularities": ("local", "global")}),
}


def with_model_lines(config: str, lines: str) -> str:
    """A config TOML with `lines` added to its [model] section (its first)."""
    assert config.startswith("[model]\n")
    return config.replace("[model]\n", f"[model]\n{lines}\n", 1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return tiny_dataset(tmp_path_factory.mktemp("ablations") / "data")


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_each_switch_trains_is_recorded_and_img_eval_rebuilds_it(
    switch: str, tiny: SyntheticDataset, tmp_path: Path
) -> None:
    lines, recorded = SWITCHES[switch]
    config = tmp_path / "switch.toml"
    config.write_text(with_model_lines(TINY_CONFIG, lines), encoding="utf-8")
    args = train_args(tiny, tmp_path / "run", "--epochs", "1")
    args[args.index("--config") + 1] = str(config)
    trained = run_img_train(*args)
    assert trained.returncode == 0, trained.stderr
    checkpoint = read_checkpoint(tmp_path / "run" / "best.pt")
    for name, value in recorded.items():
        assert getattr(checkpoint.config, name) == value
    evaluated = run_img_eval(tmp_path / "run" / "best.pt", "--json", "--threads", "1")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert set(report["branches"]) == {"fused", "visual", "audio"}
    importance = report["mean_audio_importance"]
    if switch in ("add", "concat"):  # no scalar audio weight: none reported
        assert importance is None or np.isnan(importance)
    else:
        assert 0 <= importance <= 1
    if switch in ("add", "concat"):
        forced = run_img_eval(tmp_path / "run" / "best.pt", "--audio-weight", "0", "--threads", "1")
        assert forced.returncode == 2 and "no audio weight to force" in forced.stderr
        assert len(forced.stderr.strip().splitlines()) == 1, forced.stderr


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('audio_weight = "mean"', "audio_weight must be a number from 0 to 1 or one of"),
        ("audio_weight = 1.5", "audio_weight must be a finite number at least 0 and at most 1"),
        ("audio_weight = true", "audio_weight must be a number from 0 to 1 or a mode's name"),
        ("granularities = []", "granularities must be a non-empty list"),
        ('granularities = ["local", "local"]', "granularities must be a non-empty list of distinct"),
        ('granularities = ["frame"]', "granularities must be a non-empty list of distinct"),
        ("audio = 0", "audio must be true or false"),
        ("audio = false\naudio_weight = 0.5", "audio = false is the visual branch alone"),
    ],
)
def test_a_bad_switch_is_one_line_at_parse_time(
    lines: str, message: str, tiny: SyntheticDataset, tmp_path: Path
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(with_model_lines(TINY_CONFIG, lines), encoding="utf-8")
    args = train_args(tiny, tmp_path / "run")
    args[args.index("--config") + 1] = str(config)
    result = run_img_train(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "run" / "best.pt").exists()


@pytest.mark.parametrize(
    ("removed", "module"),
    [
        ("PPmodule.", "audio importance predictor"),
        ("event_audio_fusion.", "event fusion level"),
        ("audio_affine.", "audio branch"),
    ],
)
def test_convert_official_refuses_an_ablated_authors_checkpoint_in_one_line(
    removed: str, module: str, tmp_path: Path
) -> None:
    official = golden_tensors("img/small", 401)  # the small golden's weights in the authors' layout
    source = tmp_path / "IMG_ablated.t7"
    torch.save({key: value for key, value in official.items() if not key.startswith(removed)}, source)
    slots = ["--num-heads", "4", "--slots", "3", "--slot-iterations", "3"]
    result = CliRunner().invoke(train_main, ["convert-official", str(source), str(tmp_path / "out.pt"), *slots])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1, result.output
    assert f"has no {module} ({removed}* keys)" in result.output and "cannot express" in result.output
    assert not (tmp_path / "out.pt").exists()


def test_an_ablated_model_has_no_authors_layout() -> None:
    for switched in (IMGConfig(audio_weight=0.5), IMGConfig(granularities=("event",)), IMGConfig(audio=False)):
        with pytest.raises(CheckpointLayoutError, match="has no layout in the authors' code"):
            ours_to_official(IMG(switched).state_dict(), switched)


# --- the learning checks of each switch on the synthetic families ---------------------------------------------


def hit_rates(rows: list[dict], data: SyntheticDataset, branch: str) -> dict[str, float]:
    """R1@0.5 of a branch per family."""
    families = {
        name: [row for row in rows if data.families[row["qid"]] == name] for name in ("audio", "visual", "both")
    }
    return {
        name: float(np.mean([r["branches"][branch]["iou"] >= 0.5 for r in members]))
        for name, members in families.items()
    }


def importance_by_family(rows: list[dict], data: SyntheticDataset) -> dict[str, float]:
    values: dict[str, list[float]] = {"audio": [], "visual": [], "both": []}
    for row in rows:
        values[data.families[row["qid"]]].append(row["audio_importance"])
    return {name: float(np.mean(v)) if None not in v else float("nan") for name, v in values.items()}


class LearningRuns:
    """The learning check's data and model, trained as published, with a fixed audio weight 0.5 ("w/o AIP") and
    without audio; the test-split predictions of img-eval for each (and for the published one with
    --audio-weight 0), by name."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.data = write_audio_matters(folder / "data")
        self.rows: dict[str, list[dict]] = {}
        self.reports: dict[str, dict] = {}

    def train(self, name: str, model_lines: str, *extra: str) -> Path:
        config = self.folder / f"{name}.toml"
        config.write_text(with_model_lines(LEARNING_CHECK_CONFIG, model_lines), encoding="utf-8")
        run = self.folder / name
        trained = run_img_train(*self.data.cli_data_args(), "--config", config, "--out", run, "--no-progress", *extra)
        assert trained.returncode == 0, trained.stderr
        return run / "best.pt"

    def evaluate(self, name: str, checkpoint: Path, *extra: str) -> dict:
        predictions = self.folder / f"{name}.jsonl"
        evaluated = run_img_eval(checkpoint, "--predictions", predictions, "--threads", "1", "--json", *extra)
        assert evaluated.returncode == 0, evaluated.stderr
        self.rows[name] = [json.loads(line) for line in predictions.read_text().splitlines()]
        return json.loads(evaluated.stdout)


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> LearningRuns:
    runs = LearningRuns(tmp_path_factory.mktemp("learning"))
    published = runs.train("published", "")
    runs.evaluate("published", published)
    runs.reports["forced-0"] = runs.evaluate("forced-0", published, "--audio-weight", "0")
    runs.evaluate("fixed-0.5", runs.train("fixed-0.5", "audio_weight = 0.5"))
    # Half the epochs: no amount of training lets a model without audio see the audio-marked moments.
    runs.reports["no-audio"] = runs.evaluate(
        "no-audio", runs.train("no-audio", "audio = false", "--epochs", "4"), "--report", runs.folder / "no-audio.html"
    )
    for name, rows in runs.rows.items():  # the numbers for the report
        print(
            f"{name}: fused R1@0.5 per family {hit_rates(rows, runs.data, 'fused')}, visual branch "
            f"{hit_rates(rows, runs.data, 'visual')}, mean audio importance {importance_by_family(rows, runs.data)}"
        )
    return runs


@pytest.mark.slow
def test_the_published_model_has_the_audio_family_advantage_the_ablations_lose(learned: LearningRuns) -> None:
    fused = hit_rates(learned.rows["published"], learned.data, "fused")
    visual = hit_rates(learned.rows["published"], learned.data, "visual")
    importance = importance_by_family(learned.rows["published"], learned.data)
    assert visual["audio"] <= 0.35 < fused["audio"], (fused, visual)  # as the learning check
    assert importance["audio"] > importance["visual"] + 0.1, importance


@pytest.mark.slow
def test_audio_weight_0_at_inference_loses_the_audio_family(learned: LearningRuns) -> None:
    published = hit_rates(learned.rows["published"], learned.data, "fused")
    forced = hit_rates(learned.rows["forced-0"], learned.data, "fused")
    assert forced["audio"] <= 0.35 < published["audio"], (forced, published)
    assert forced["visual"] >= 0.6, forced  # the visual stream still finds the visual family
    report = learned.reports["forced-0"]
    assert report["audio_weight"] == 0.0
    # the model's own predicted importance is still what is reported, beside the forced weight
    own = [row["audio_importance"] for row in learned.rows["published"]]
    assert [row["audio_importance"] for row in learned.rows["forced-0"]] == pytest.approx(own, abs=1e-6)


@pytest.mark.slow
def test_a_fixed_audio_weight_loses_the_importance_advantage(learned: LearningRuns) -> None:
    importance = importance_by_family(learned.rows["fixed-0.5"], learned.data)
    assert importance == {"audio": 0.5, "visual": 0.5, "both": 0.5}, importance  # no family gets more audio
    checkpoint = read_checkpoint(learned.folder / "fixed-0.5" / "best.pt")
    assert checkpoint.config.audio_weight == 0.5
    assert not any(key.startswith("audio_importance.") for key in checkpoint.state_dict)


@pytest.mark.slow
def test_without_audio_the_audio_family_is_near_chance(learned: LearningRuns) -> None:
    fused = hit_rates(learned.rows["no-audio"], learned.data, "fused")
    assert fused["audio"] <= 0.35 and fused["visual"] >= 0.6, fused  # chance for these moments is about 0.1
    report = learned.reports["no-audio"]
    assert set(report["branches"]) == {"fused", "visual"}  # no audio branch; the fused answer is the visual one
    assert report["branches"]["fused"] == report["branches"]["visual"]
    assert all(row["audio_importance"] is None for row in learned.rows["no-audio"])
    assert '"branches":["fused","visual"]' in (learned.folder / "no-audio.html").read_text()  # the HTML report too
    checkpoint = read_checkpoint(learned.folder / "no-audio" / "best.pt")
    assert checkpoint.config.audio is False
    assert not any(
        key.startswith(("audio_", "fused_", "local_", "event_", "global_", "multi_")) for key in checkpoint.state_dict
    )
