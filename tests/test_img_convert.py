"""Converting the authors' IMGNet checkpoints to our names and back, its errors, and `img-train convert-official`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from img_model.cli import main
from img_model.config import IMGConfig
from img_model.convert import (
    CheckpointLayoutError,
    infer_config,
    load_checkpoint,
    load_official_checkpoint,
    mapping_table,
    official_to_ours,
    ours_to_official,
)
from img_model.model import IMG
from tests.golden import golden_tensors, load_npz
from tests.test_img_golden import SMALL, golden_inputs, run_model

State = dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def official() -> State:
    """The small golden's weights in the authors' layout (479 tensors, their state-dict order)."""
    return golden_tensors("img/small", 401)


@pytest.fixture(scope="module")
def official_file(official: State, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("official") / "IMG_1234.t7"
    torch.save(official, path)
    return path


def test_round_trip_reproduces_the_authors_state_dict_exactly(official: State) -> None:
    model = IMG(SMALL)
    model.load_state_dict(official_to_ours(official, SMALL), strict=True)
    back = ours_to_official(model.state_dict(), SMALL)
    assert list(back) == list(official)  # their state-dict order too
    for key, tensor in official.items():
        assert torch.equal(back[key], tensor), key


def test_mapping_table_covers_every_tensor_of_both_models_once() -> None:
    rules = mapping_table(SMALL)
    assert len({rule.official for rule in rules}) == len(rules) == 479
    assert sorted(rule.ours for rule in rules) == sorted(IMG(SMALL).state_dict())


def test_unknown_and_missing_keys_are_listed(official: State) -> None:
    broken = dict(official)
    del broken["PPmodule.pred_proj.bias"]
    broken["PPmodule.extra_head.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointLayoutError) as error:
        official_to_ours(broken, SMALL)
    assert error.value.missing == ["PPmodule.pred_proj.bias"]
    assert error.value.unexpected == ["PPmodule.extra_head.weight"]
    message = str(error.value)
    assert "unknown keys: PPmodule.extra_head.weight" in message and "missing keys: PPmodule.pred_proj.bias" in message
    assert "\n" not in message


def test_a_checkpoint_with_our_names_is_not_taken_for_the_authors(official: State) -> None:
    ours = official_to_ours(official, SMALL)
    with pytest.raises(CheckpointLayoutError, match=r"unknown keys: .* \(\+\d+ more\); missing keys"):
        official_to_ours(ours, SMALL)


def test_temporal_models_have_no_layout_in_the_authors_code(official: State) -> None:
    temporal = replace(SMALL, positional_encoding="temporal")
    model = IMG(temporal)
    model.load_state_dict(official_to_ours(official, temporal), strict=True)  # the batch-position tables are dropped
    with pytest.raises(CheckpointLayoutError, match="temporal"):
        ours_to_official(model.state_dict(), temporal)


def test_infer_config_reads_the_dimensions_from_the_shapes(official: State) -> None:
    assert infer_config(official, num_heads=4, slot_noise="never") == SMALL
    charades = {k: torch.empty(v.shape) for k, v in golden_tensors("img/charades", 411).items()}
    assert infer_config(charades) == IMGConfig(glove_words=50)


def test_loaded_official_checkpoint_reproduces_the_golden(official_file: Path) -> None:
    model = load_official_checkpoint(official_file, num_heads=4, slot_noise="never")
    with torch.inference_mode():
        outputs = run_model(model, golden_inputs("small"))
    expected = load_npz("img/small", "expected.npz")["start_logits_av"]
    valid = expected > -1e29
    np.testing.assert_allclose(outputs.start_logits_av.numpy()[valid], expected[valid], rtol=1e-4, atol=1e-4)


def test_cli_converts_an_official_checkpoint(official_file: Path, tmp_path: Path) -> None:
    target = tmp_path / "img.pt"
    result = CliRunner().invoke(main, ["convert-official", str(official_file), str(target), "--num-heads", "4"])
    assert result.exit_code == 0, result.output
    assert "227,634 trainable parameters" in result.output
    model = load_checkpoint(target)
    assert model.config == replace(SMALL, slot_noise="train")
    reference = load_official_checkpoint(official_file, num_heads=4)
    for key, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key


def test_cli_rejects_a_checkpoint_with_missing_keys_in_one_line(official: State, tmp_path: Path) -> None:
    source = tmp_path / "broken.t7"
    torch.save({k: v for k, v in official.items() if not k.startswith("saliency_proj_av")}, source)
    result = CliRunner().invoke(main, ["convert-official", str(source), str(tmp_path / "out.pt"), "--num-heads", "4"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert "missing keys: saliency_proj_av.weight, saliency_proj_av.bias" in result.output
    assert not (tmp_path / "out.pt").exists()


@pytest.mark.parametrize("content", [None, b"not a torch file", [1, 2, 3]], ids=["absent", "garbage", "a-list"])
def test_cli_rejects_unreadable_input_in_one_line(content: object, tmp_path: Path) -> None:
    source = tmp_path / "in.t7"
    if isinstance(content, bytes):
        source.write_bytes(content)
    elif content is not None:
        torch.save(content, source)
    result = CliRunner().invoke(main, ["convert-official", str(source), str(tmp_path / "out.pt")])
    assert result.exit_code == 2
    assert result.output.startswith("img-train: error: ") and result.output.count("\n") == 1
