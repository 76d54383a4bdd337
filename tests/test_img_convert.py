"""Converting the authors' IMGNet checkpoints to our names and back, its errors, and `img-train convert-official`."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extract.text.store import TextBatch, TextStoreWriter
from extract.text.vocabulary import Vocabulary
from img_model.checkpoint import read_checkpoint
from img_model.cli.train import main
from img_model.network.config import IMGConfig
from img_model.network.convert import (
    CheckpointLayoutError,
    infer_config,
    load_official_checkpoint,
    mapping_table,
    official_to_ours,
    ours_to_official,
)
from img_model.network.model import IMG
from manifests.records import QueryRecord
from tests.golden import golden_tensors, load_npz
from tests.img_cli import run_img_eval, run_img_predict, run_img_train
from tests.test_img_golden import SMALL, golden_inputs, run_model

State = dict[str, torch.Tensor]
SLOTS = {"event_num": 3, "slot_iterations": 3}  # not in the weights: the golden README's values
GOLDEN_WORDS = tuple(f"word{k:02d}" for k in range(20))  # the small golden's 20 GloVe rows
GOLDEN_CHARS = ("<PAD>", "<UNK>", *"word012345")  # 12 character ids


def write_golden_text_store(path: Path, vectors: np.ndarray, records: list[QueryRecord] | None = None) -> Path:
    """A GloVe text store whose vocabulary has the small golden's sizes and the given vectors as its rows."""
    vocabulary = Vocabulary(("<PAD>", "<UNK>", *GOLDEN_WORDS), GOLDEN_CHARS)
    records = records or [QueryRecord("qid_0", "v0", 1.0, 3.0, 10.0, "word01 word02", "test")]
    tokens = [record.sentence.split() for record in records]
    recipe = {"kind": "glove", "vocabulary_sha256": vocabulary.sha256()}
    writer = TextStoreWriter(path, "glove", {"recipe": recipe, "software": {}, "runtime": {}}, resume=False)
    writer.todo(records)
    word_ids = [vocabulary.word_ids(t) for t in tokens]
    char_ids = [vocabulary.char_ids(t) for t in tokens]
    writer.commit(TextBatch(records, tokens, [False] * len(records), {"word_ids": word_ids}, char_ids=char_ids))
    writer.close({"words": vocabulary.words, "vectors": vectors, "chars": vocabulary.chars})
    return path


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
    assert infer_config(official, num_heads=4, slot_noise="never", **SLOTS) == SMALL
    charades = {k: torch.empty(v.shape) for k, v in golden_tensors("img/charades", 411).items()}
    assert infer_config(charades, **SLOTS) == IMGConfig(glove_words=50)


def test_gru_layers_are_read_from_the_keys(official: State) -> None:
    two_layers = {k: v for k, v in official.items() if not ("down_sample.rnn" in k and "_l2" in k)}
    config = infer_config(two_layers, num_heads=4, **SLOTS)
    assert config.fusion_gru_layers == 2
    IMG(config).load_state_dict(official_to_ours(two_layers, config), strict=True)


def test_a_checkpoint_without_slot_settings_is_refused_not_assumed(official: State, official_file: Path) -> None:
    with pytest.raises(CheckpointLayoutError, match="event_num and slot_iterations of this checkpoint are not in its"):
        infer_config(official, num_heads=4)
    with pytest.raises(CheckpointLayoutError, match=r"configs\.json"):
        load_official_checkpoint(official_file, num_heads=4)


def test_the_authors_configs_json_beside_the_checkpoint_gives_what_the_weights_do_not(
    official: State, tmp_path: Path
) -> None:
    torch.save(official, tmp_path / "IMG_77.t7")
    (tmp_path / "configs.json").write_text(
        json.dumps(
            {"event_num": 2, "slot_layers": 4, "num_heads": 4, "drop_rate": 0.3, "layers": 3, "task": "charades"}
        )
    )
    config = load_official_checkpoint(tmp_path / "IMG_77.t7").config
    assert (config.event_num, config.slot_iterations, config.num_heads, config.drop_rate) == (2, 4, 4, 0.3)


def test_loaded_official_checkpoint_reproduces_the_golden(official_file: Path) -> None:
    model = load_official_checkpoint(official_file, num_heads=4, slot_noise="never", **SLOTS)
    with torch.inference_mode():
        outputs = run_model(model, golden_inputs("small"))
    expected = load_npz("img/small", "expected.npz")["start_logits_av"]
    valid = expected > -1e29
    np.testing.assert_allclose(outputs.start_logits_av.numpy()[valid], expected[valid], rtol=1e-4, atol=1e-4)


CLI_SLOTS = ["--num-heads", "4", "--slots", "3", "--slot-iterations", "3"]


def test_cli_converts_an_official_checkpoint_with_its_vocabulary(
    official: State, official_file: Path, tmp_path: Path
) -> None:
    text = write_golden_text_store(tmp_path / "text.h5", official["word_embeddingv.word_emb.glove_vec"].numpy())
    target = tmp_path / "img.pt"
    result = CliRunner().invoke(
        main, ["convert-official", str(official_file), str(target), "--text", str(text), *CLI_SLOTS]
    )
    assert result.exit_code == 0, result.output
    assert "227,634 trainable parameters" in result.output and "3 slots x 3 iterations, 3 GRU layers" in result.output
    checkpoint = read_checkpoint(target)
    assert checkpoint.config == replace(SMALL, slot_noise="train")
    assert checkpoint.vocabulary["words"][2:] == list(GOLDEN_WORDS) and len(checkpoint.vocabulary["sha256"]) == 64
    assert checkpoint.provenance["text"]["kind"] == "glove" and checkpoint.source == "convert-official"
    assert len(checkpoint.origin["sha256"]) == 64
    model = checkpoint.model()
    reference = load_official_checkpoint(official_file, num_heads=4, **SLOTS)
    for key, tensor in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key


def test_cli_refuses_a_glove_checkpoint_without_its_vocabulary(official_file: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["convert-official", str(official_file), str(tmp_path / "o.pt"), *CLI_SLOTS])
    assert result.exit_code == 2 and "pass --text TEXT.h5" in result.output and result.output.count("\n") == 1


def test_cli_refuses_a_text_store_whose_vectors_are_not_the_checkpoints(
    official: State, official_file: Path, tmp_path: Path
) -> None:
    vectors = official["word_embeddingv.word_emb.glove_vec"].numpy().copy()
    vectors[[3, 7]] += 1.0
    text = write_golden_text_store(tmp_path / "text.h5", vectors)
    args = ["convert-official", str(official_file), str(tmp_path / "o.pt"), "--text", str(text), *CLI_SLOTS]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and f"2 of 20 GloVe rows of {official_file} differ" in result.output
    assert not (tmp_path / "o.pt").exists()


def test_cli_rejects_a_checkpoint_with_missing_keys_in_one_line(official: State, tmp_path: Path) -> None:
    source = tmp_path / "broken.t7"
    torch.save({k: v for k, v in official.items() if not k.startswith("saliency_proj_av")}, source)
    result = CliRunner().invoke(main, ["convert-official", str(source), str(tmp_path / "out.pt"), *CLI_SLOTS])
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
    assert result.output.count(str(source)) == 1  # it used to say "IN.t7: IN.t7 is not a readable ..."


class _RunsAShell:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("command", ["convert-official", "img-eval", "img-predict"])
def test_a_checkpoint_that_asks_for_os_system_is_refused_for_safety_naming_it_once(
    command: str, tmp_path: Path
) -> None:
    """It used to be "not a readable PyTorch file (another kind of file, or a damaged one)", as if it were damaged."""
    source = tmp_path / "evil.pt"
    torch.save({"config": {}, "state_dict": {"w": _RunsAShell()}}, source)
    if command == "convert-official":
        result = run_img_train("convert-official", source, tmp_path / "out.pt")
    elif command == "img-eval":
        result = run_img_eval(source)
    else:
        result = run_img_predict("--checkpoint", source, tmp_path / "video.mp4", "a query")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert re.search(
        rf"error: {re.escape(str(source))} was refused for safety: it asks for (posix|os)\.system, ", result.stderr
    ), result.stderr
    assert result.stderr.count(str(source)) == 1 and "not a readable" not in result.stderr
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_weights_of_a_feature_model_that_ask_for_os_system_are_refused_for_safety(tmp_path: Path) -> None:
    from extract.core.errors import MissingWeightsError
    from extract.models.weights import read_weights_file

    source = tmp_path / "rgb_imagenet.pt"
    torch.save({"w": _RunsAShell()}, source)
    with pytest.raises(MissingWeightsError, match=r"rgb_imagenet\.pt was refused for safety: it asks for (posix|os)"):
        read_weights_file(source)
