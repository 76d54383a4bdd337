"""Every value of an img-train config (a TOML file, a flag, or the config a checkpoint carries) is checked before
anything runs: a value no model or run can have is one line, exit 2, and no run folder is created. They used to end
as "internal error" (exit 1), some after creating the run folder, one after trying to allocate 4 TB."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from img_model.cli.train import main as img_train
from img_model.data.synthetic import SyntheticDataset
from img_model.network.config import ACTIVITYNET, CHARADES_CLIP_SF, CHARADES_IV2, MAX_WEIGHTS, IMGConfig
from img_model.network.model import IMG
from tests.img_cli import TINY_CONFIG, run_img_eval, run_img_predict, run_img_train, tiny_dataset, train_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return tiny_dataset(tmp_path_factory.mktemp("tiny"))


def config_with(section: str, key: str, literal: str) -> str:
    """TINY_CONFIG with `key = literal` in [section] (replacing the key where the config sets it)."""
    lines = [line for line in TINY_CONFIG.splitlines() if not line.startswith(f"{key} =")]
    if f"[{section}]" not in lines:
        lines += ["", f"[{section}]"]
    lines.insert(lines.index(f"[{section}]") + 1, f"{key} = {literal}")
    return "\n".join(lines) + "\n"


HOSTILE = {
    "num_heads-0": ("model", "num_heads", "0", "num_heads must be a whole number from 1 to 256, not 0"),
    "max_pos_len-0": ("model", "max_pos_len", "0", "max_pos_len must be a whole number from 1 to 8,192, not 0"),
    "char_kernels-empty": ("model", "char_kernel_channels", "[]", "char_kernel_channels must be a list of 1 to 16"),
    "char_kernels-text": ("model", "char_kernel_channels", '"abc"', "char_kernel_channels must be a list of values"),
    "char_kernels-zero": ("model", "char_kernel_channels", "[2, 0]", "each of char_kernel_channels must be a whole"),
    "drop_rate-2": ("model", "drop_rate", "2.0", "drop_rate must be a finite number at least 0 and below 1, not 2.0"),
    "drop_rate-nan": ("model", "drop_rate", "nan", "drop_rate must be a finite number at least 0 and below 1, not nan"),
    "dim-million": ("model", "dim", "1000000", "dim must be a whole number from 2 to 8,192, not 1000000"),
    "dim-negative": ("model", "dim", "-5", "dim must be a whole number from 2 to 8,192, not -5"),
    "dim-heads": ("model", "dim", "18", "dim 18 must be even and divisible by num_heads 4"),
    "dim-bool": ("model", "dim", "true", "dim must be a whole number, not True"),
    "model-too-big": ("model", "dim", "4096", f"the bound is {MAX_WEIGHTS:,} (4 GB"),
    "even-kernel": ("model", "encoder_kernel", "4", "encoder_kernel must be odd"),
    "local-kernels-nested": ("model", "local_kernels", "[1, [3]]", "local_kernels must be a list of values"),
    "slots-0": ("model", "event_num", "0", "event_num must be a whole number from 1 to 256"),
    "gru-0": ("model", "fusion_gru_layers", "0", "fusion_gru_layers must be a whole number from 1 to 64"),
    "deep-array": ("model", "local_kernels", "[" * 10_000 + "]" * 10_000, "nests arrays or tables hundreds of levels"),
    "seed-2**70": ("train", "seed", str(2**70), f"seed must be a whole number from 0 to 4,294,967,295, not {2**70}"),
    "evals-billion": ("train", "evals_per_epoch", "1000000000", "evals_per_epoch must be a whole number from 1 to"),
    "lr-text": ("train", "learning_rate", '"fast"', "learning_rate must be a number, not 'fast'"),
    "epsilon": ("objective", "pseudo_label_threshold", "0.7", "pseudo_label_threshold must be a finite number at"),
    "temperature-0": ("objective", "distill_temperature", "0", "distill_temperature must be a finite number above 0"),
    "warmup-negative": ("objective", "distill_warmup_epochs", "-1", "distill_warmup_epochs must be a whole number"),
    "workers-100000": ("runtime", "workers", "100000", "workers must be a whole number from 0 to 256, not 100000"),
    "threads-negative": ("runtime", "threads", "-1", "threads must be a whole number from 0 to 1,024, not -1"),
    "device-list": ("runtime", "device", "[1]", "device must be a string"),
    "features-numbers": ("data", "features", "[1, 2]", "features must be a list of feature store paths"),
    "attention-map": ("train", "batch_size", "64", "batch_size 64 with max_pos_len 8192"),
}


@pytest.mark.parametrize(("section", "key", "literal", "message"), HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_config_value_is_one_line_before_any_run_folder(
    tiny: SyntheticDataset, tmp_path: Path, section: str, key: str, literal: str, message: str
) -> None:
    text = config_with(section, key, literal)
    if key == "dim" and literal == "18":
        text = config_with("model", "num_heads", "4").replace("dim = 16", "dim = 18")
    if key == "batch_size":  # a long sequence and a large batch: an 8192 x 8192 attention map per head and query
        text = text.replace("max_pos_len = 24", "max_pos_len = 8192")
    config = tmp_path / "hostile.toml"
    config.write_text(text)
    out = tmp_path / "runs" / "new"
    data = [] if section == "data" else tiny.cli_data_args()[2:4]  # --features given: the file's must be read
    args = [
        "--dataset",
        str(tiny.annotations),
        *data,
        "--visual",
        tiny.visual,
        "--audio",
        tiny.audio,
        "--text",
        str(tiny.text),
        "--config",
        str(config),
        "--out",
        str(out),
        "--no-progress",
    ]
    result = CliRunner().invoke(img_train, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("img-train: error: "), result.stderr
    assert message in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "option", [["--seed", str(2**70)], ["--workers", "100000"], ["--evals-per-epoch", "0"], ["--epochs", "10000000"]]
)
def test_hostile_flags_are_refused_when_parsed(tiny: SyntheticDataset, tmp_path: Path, option: list[str]) -> None:
    args = [*tiny.cli_data_args(), "--config", str(tiny.folder / "tiny.toml"), "--out", str(tmp_path / "run"), *option]
    result = CliRunner().invoke(img_train, args)
    assert result.exit_code == 2 and f"Invalid value for '{option[0]}'" in result.output
    assert not (tmp_path / "run").exists()


ODD = IMGConfig(
    dim=16,
    num_heads=2,
    encoder_conv_layers=0,
    predictor_conv_layers=3,
    fusion_gru_layers=1,
    local_kernels=(1,),
    char_kernel_channels=(3,),
    encoder_kernel=3,
    event_num=5,
    max_pos_len=7,
    positional_encoding="temporal",
)


@pytest.mark.parametrize(
    "config",
    [
        IMGConfig(),
        ACTIVITYNET,
        CHARADES_CLIP_SF,
        CHARADES_IV2,
        ODD,
        *(IMGConfig(audio_weight=mode) for mode in (0.5, "add", "concat", "similarity", "entropy")),
        IMGConfig(granularities=("event",), event_num=4, slot_iterations=2),
        IMGConfig(granularities=("local", "global")),
        IMGConfig(audio=False),
    ],
    ids=[
        "charades",
        "activitynet",
        "clip-slowfast",
        "internvideo2",
        "odd",
        *(f"audio-weight-{mode}" for mode in (0.5, "add", "concat", "similarity", "entropy")),
        "event-only",
        "local-global",
        "no-audio",
    ],
)
def test_the_size_bound_counts_every_weight_of_the_model(config: IMGConfig) -> None:
    model = IMG(config)
    assert config.weight_count() == sum(t.numel() for t in [*model.parameters(), *model.buffers()])


def test_a_checkpoint_whose_config_says_dim_minus_5_is_refused_naming_it_in_eval_predict_and_resume(
    tmp_path: Path,
) -> None:
    _, best = train_tiny_checkpoint(tmp_path)
    run = best.parent
    stored = torch.load(run / "last.pt", weights_only=True)
    stored["config"]["dim"] = -5
    torch.save(stored, run / "last.pt")
    expected = f"{run / 'last.pt'}: its model config is not valid (dim must be a whole number from 2 to 8,192, not -5)"
    for result in (
        run_img_eval(run / "last.pt"),
        run_img_predict("--checkpoint", run / "last.pt", tmp_path / "video.mp4", "a person opens a door"),
        run_img_train("--resume", run),
    ):
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert expected in result.stderr, result.stderr
    stored["config"]["dim"] = 16
    stored["run"]["train"]["seed"] = 2**70
    torch.save(stored, run / "last.pt")
    resumed = run_img_train("--resume", run)
    assert resumed.returncode == 2 and resumed.stderr.count("\n") == 1
    assert re.search(rf"{re.escape(str(run / 'last.pt'))}: \[train\] seed must be a whole number", resumed.stderr)


def test_a_checkpoints_config_of_unknown_fields_or_types_is_one_line(tmp_path: Path) -> None:
    from img_model.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
    from img_model.network.convert import CheckpointLayoutError

    config = IMGConfig(dim=16, num_heads=2, max_pos_len=8, glove_words=5)
    save_checkpoint(Checkpoint(config, IMG(config).state_dict()), tmp_path / "c.pt")
    stored = torch.load(tmp_path / "c.pt", weights_only=True)
    for change, message in (
        ({"dim": "16"}, "dim must be a whole number from 2 to 8,192, not '16'"),
        ({"char_kernel_channels": [[[[[[[[1]]]]]]]]}, "each of char_kernel_channels must be a whole number"),
        ({"heads": 4}, "its model config has unknown fields: heads"),
    ):
        torch.save({**stored, "config": {**stored["config"], **change}}, tmp_path / "edited.pt")
        with pytest.raises(CheckpointLayoutError, match=re.escape(message)) as error:
            read_checkpoint(tmp_path / "edited.pt")
        assert str(error.value).startswith(f"{tmp_path / 'edited.pt'}: ") and "\n" not in str(error.value)
    assert dataclasses.asdict(read_checkpoint(tmp_path / "c.pt").config) == dataclasses.asdict(config)
