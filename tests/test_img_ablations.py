"""The ablation switches of issue 17 ([model] audio_weight, granularities, audio; img-eval --audio-weight) end to end:
each switch trains, is recorded in its checkpoint and rebuilt by img-eval; and on the synthetic "audio matters"
families (img_model/data/synthetic.py) the ablations lose what the learning check (tests/test_img_learning.py)
measures: --audio-weight 0 loses the audio family, a fixed weight ("w/o AIP") the importance advantage of
audio-marked queries, and "IMG w/o audio" scores the audio family near chance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract.core.errors import UsageError
from img_model.checkpoint import read_checkpoint
from img_model.cli.train import main as train_main
from img_model.data.synthetic import LEARNING_CHECK_CONFIG, SyntheticDataset
from img_model.network.config import IMGConfig, ObjectiveConfig
from img_model.network.convert import CheckpointLayoutError, ours_to_official
from img_model.network.losses import SpanLabels, img_loss
from img_model.network.model import IMG
from img_model.train.config import resolve
from tests.golden import golden_tensors
from tests.img_cli import TINY_CONFIG, LearningCheck, run_img_eval, run_img_train, tiny_dataset, train_args

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


# --- the model and the objective of each switch (small, in this process) ----------------------------------------

SMALL = {
    "dim": 16,
    "num_heads": 2,
    "char_dim": 4,
    "char_kernel_channels": (2, 2),
    "max_pos_len": 12,
    "glove_words": 20,
    "word_dim": 8,
    "video_feature_dim": 6,
    "audio_feature_dim": 5,
    "char_vocab_size": 10,
    "fusion_gru_layers": 1,
}


def small_inputs(seed: int = 0, audio_seed: int | None = None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(3, 10)
    mask[0, 7:] = 0
    audio = torch.randn(3, 10, 5, generator=torch.Generator().manual_seed(seed if audio_seed is None else audio_seed))
    return {
        "video": torch.randn(3, 10, 6, generator=generator),
        "audio": audio,
        "video_mask": mask,
        "query_mask": torch.ones(3, 4),
        "word_ids": torch.randint(1, 20, (3, 4), generator=generator),
        "char_ids": torch.randint(1, 10, (3, 4, 5), generator=generator),
    }


def small_labels() -> SpanLabels:
    return SpanLabels(
        torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]), torch.tensor([[1, 2]] * 3), torch.tensor([[0, 8]] * 3)
    )


def test_audio_weight_0_makes_the_fused_answer_blind_to_the_audio() -> None:
    torch.manual_seed(0)
    model = IMG(IMGConfig(**SMALL)).eval()
    with torch.no_grad():
        own = model(**small_inputs(audio_seed=1))
        model.force_audio_weight(0.0)
        forced = [model(**small_inputs(audio_seed=seed)) for seed in (1, 2)]
    assert torch.equal(forced[0].start_logits_av, forced[1].start_logits_av)  # other audio, same fused answer
    assert not torch.equal(forced[0].start_logits_av, own.start_logits_av)
    assert torch.equal(forced[0].aip_prob, own.aip_prob)  # the model's own prediction is still reported
    assert not torch.equal(forced[0].start_logits_a, forced[1].start_logits_a)  # the audio branch still hears it


def test_without_audio_the_model_reads_no_audio_and_its_fused_answer_is_the_visual_one() -> None:
    torch.manual_seed(0)
    model = IMG(IMGConfig(**SMALL, audio=False)).eval()
    with torch.no_grad():
        outputs = [model(**small_inputs(audio_seed=seed)) for seed in (1, 2)]
    assert torch.equal(outputs[0].start_logits_av, outputs[1].start_logits_av)
    assert outputs[0].start_logits_av is outputs[0].start_logits_v
    assert outputs[0].start_logits_a is None and outputs[0].aip_prob is None
    with pytest.raises(ValueError, match="no audio weight to force"):
        model.force_audio_weight(0.0)


@pytest.mark.parametrize("mode", ["add", "concat"])
def test_a_fusion_without_a_weight_has_none_to_force(mode: str) -> None:
    with pytest.raises(ValueError, match=f"no audio weight to force \\(audio_weight = '{mode}'\\)"):
        IMG(IMGConfig(**SMALL, audio_weight=mode)).force_audio_weight(0.0)


@pytest.mark.parametrize(
    ("switches", "absent"),
    [
        ({"audio_weight": 0.5}, ("audio_importance.",)),
        ({"audio_weight": "concat"}, ("audio_importance.",)),
        (
            {"granularities": ("event",)},
            ("local_fusion.", "global_fusion.", "multi_granularity_fusion.local_", "multi_granularity_fusion.event_"),
        ),
        (
            {"granularities": ("local", "global")},
            ("event_fusion.", "multi_granularity_fusion.local_event", "multi_granularity_fusion.event_"),
        ),
        ({"audio": False}, ("audio_", "fused_", "local_", "event_", "global_", "multi_granularity")),
    ],
)
def test_a_switch_removes_its_modules_and_the_defaults_keep_the_published_keys(
    switches: dict, absent: tuple[str, ...]
) -> None:
    published = set(IMG(IMGConfig(**SMALL)).state_dict())
    assert set(mapping_table_ours()) == published  # the default is the authors' model, key for key
    keys = set(IMG(IMGConfig(**SMALL, **switches)).state_dict())
    assert not any(key.startswith(absent) for key in keys)
    added = {key for key in keys - published}
    assert all(".mix.projection." in key for key in added), added  # only concat's maps are new
    assert len(added) == (6 if switches.get("audio_weight") == "concat" else 0)


def mapping_table_ours() -> list[str]:
    from img_model.network.convert import mapping_table

    return [rule.ours for rule in mapping_table(IMGConfig(**SMALL))]


@pytest.mark.parametrize("switches", [{"audio_weight": 0.5}, {"audio_weight": "similarity"}, {"audio": False}])
def test_the_objective_has_only_the_terms_that_exist(switches: dict) -> None:
    torch.manual_seed(0)
    config = IMGConfig(**SMALL, **switches)
    loss = img_loss(IMG(config)(**small_inputs(), p_warm=0.5), small_labels(), ObjectiveConfig(), 0.5, model=config)
    assert loss.term_pl.item() == 0 and loss.keep.tolist() == [1, 1, 1]  # no AIP: no pseudo-label, no gate
    if config.audio:
        assert loss.location_audio.item() > 0 and loss.term_kd.item() > 0
    else:
        assert loss.location_audio.item() == loss.location_fused.item() == loss.term_kd.item() == 0
        expected = loss.location_visual + 0.5 * loss.saliency_visual
        assert loss.total_loss.item() == pytest.approx(expected.item())
    loss.total_loss.backward()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return tiny_dataset(tmp_path_factory.mktemp("ablations") / "data")


def train_in_this_process(data: SyntheticDataset, config: Path, out: Path, one_epoch: bool = True) -> None:
    """What `img-train --config config --epochs 1` (or with the config's own epochs: one_epoch False) runs on
    `data`, in this process (torch's threads restored)."""
    from img_model.data.dataset import DataSources
    from img_model.train.run_data import model_inputs, prepare_data
    from img_model.train.trainer import Trainer

    options = {
        "data": {
            "dataset": str(data.annotations),
            "features": (str(data.features),),
            "visual": data.visual,
            "audio": data.audio,
            "text": str(data.text),
        },
        "train": {"epochs": 1, "evals_per_epoch": 1} if one_epoch else {},
        "runtime": {"progress": False},
    }
    sources = DataSources(resolve(config, options).data)
    run = resolve(config, options, model_inputs(sources))
    threads = torch.get_num_threads()
    try:
        Trainer(run, prepare_data(run, sources), out).fit()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_each_switch_trains_is_recorded_and_img_eval_rebuilds_it(
    switch: str, tiny: SyntheticDataset, tmp_path: Path
) -> None:
    lines, recorded = SWITCHES[switch]
    config = tmp_path / "switch.toml"
    config.write_text(with_model_lines(TINY_CONFIG, lines), encoding="utf-8")
    train_in_this_process(tiny, config, tmp_path / "run")  # img-train's code without its start-up (seconds each)
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
    if switch == "add":  # the table says there is none, not "nan"
        table = run_img_eval(tmp_path / "run" / "best.pt", "--threads", "1")
        assert table.returncode == 0, table.stderr
        assert "mean audio importance n/a (none predicted)" in table.stdout and " nan" not in table.stdout
    if switch == "concat":  # "add" alike (test_a_fusion_without_a_weight_has_none_to_force)
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
def test_a_bad_switch_is_one_line_when_the_config_is_read(lines: str, message: str, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(with_model_lines(TINY_CONFIG, lines), encoding="utf-8")
    with pytest.raises(UsageError, match=re.escape(message)) as error:
        resolve(config, {"data": {"dataset": "charades-sta"}})
    assert "\n" not in str(error.value) and str(config) in str(error.value)


def test_img_train_refuses_a_bad_switch_with_exit_2_before_training(tiny: SyntheticDataset, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(with_model_lines(TINY_CONFIG, 'granularities = ["local", "frame"]'), encoding="utf-8")
    args = train_args(tiny, tmp_path / "run")
    args[args.index("--config") + 1] = str(config)
    result = run_img_train(*args)
    assert result.returncode == 2, result.stderr
    assert "granularities must be a non-empty list of distinct" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
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
    """The learning check's data and model: trained as published (conftest.py's learning_check, shared with the
    files that read it), with a fixed audio weight 0.5 ("w/o AIP") and without audio (trained here, into folder);
    the test-split predictions of img-eval for each (and for the published one with --audio-weight 0), by name.

    The two ablations train and every evaluation runs in this process (img-train's trainer, img-eval's command
    through click): what these tests check is what the models learnt, and each start of a subprocess costs seconds
    of importing torch. The commands themselves run as subprocesses in the learning check (the tour) and in
    test_each_switch_trains_is_recorded_and_img_eval_rebuilds_it (img-eval --audio-weight there too)."""

    def __init__(self, folder: Path, published: LearningCheck) -> None:
        self.folder = folder
        self.data = published.data
        self.rows: dict[str, list[dict]] = {"published": published.rows()}
        self.reports: dict[str, dict] = {}

    def train(self, name: str, model_lines: str) -> Path:
        config = self.folder / f"{name}.toml"
        config.write_text(with_model_lines(LEARNING_CHECK_CONFIG, model_lines), encoding="utf-8")
        train_in_this_process(self.data, config, self.folder / name, one_epoch=False)
        return self.folder / name / "best.pt"

    def evaluate(self, name: str, checkpoint: Path, *extra: str) -> dict:
        from img_model.cli.evaluate import main as img_eval

        predictions = self.folder / f"{name}.jsonl"
        args = [str(checkpoint), "--predictions", str(predictions), "--threads", "1", "--json", *map(str, extra)]
        threads = torch.get_num_threads()
        try:
            evaluated = CliRunner().invoke(img_eval, args)
        finally:
            torch.set_num_threads(threads)
        assert evaluated.exit_code == 0, evaluated.output
        self.rows[name] = [json.loads(line) for line in predictions.read_text().splitlines()]
        return json.loads(evaluated.stdout)


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory, learning_check: LearningCheck) -> LearningRuns:
    runs = LearningRuns(tmp_path_factory.mktemp("learning"), learning_check)
    runs.reports["forced-0"] = runs.evaluate("forced-0", learning_check.checkpoint, "--audio-weight", "0")
    runs.evaluate("fixed-0.5", runs.train("fixed-0.5", "audio_weight = 0.5"))
    no_audio = runs.train("no-audio", "audio = false")
    runs.reports["no-audio"] = runs.evaluate("no-audio", no_audio, "--report", runs.folder / "no-audio.html")
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
    # What it keeps: half the weight on the audio still finds the audio-marked moments on this data (measured:
    # 1.0 on every family, as the published model), so the fused fusion with a fixed weight is a working model.
    fused = hit_rates(learned.rows["fixed-0.5"], learned.data, "fused")
    assert fused["audio"] >= 0.6, fused
    checkpoint = read_checkpoint(learned.folder / "fixed-0.5" / "best.pt")
    assert checkpoint.config.audio_weight == 0.5
    assert not any(key.startswith("audio_importance.") for key in checkpoint.state_dict)


@pytest.mark.slow
def test_without_audio_the_audio_family_is_near_chance(learned: LearningRuns) -> None:
    fused = hit_rates(learned.rows["no-audio"], learned.data, "fused")
    # chance for these moments is about 0.1; the visual-marked moments it can see, it learns (as the published
    # model's visual branch does)
    assert fused["audio"] <= 0.35, fused
    assert fused["audio"] + 0.25 <= (fused["visual"] + fused["both"]) / 2, fused
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
