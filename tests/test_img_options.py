"""Each IMG option changes what it should and nothing else: positional encoding, slot noise, precomputed query
features, the overflow-free pseudo-label formula, and mixed precision."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from img_model.network.config import IMGConfig, ObjectiveConfig, exp_up
from img_model.network.losses import SpanLabels, img_loss, pseudo_labels
from img_model.network.model import IMG, IMGOutput
from tests.test_img_golden import SMALL

TINY = replace(SMALL, drop_rate=0.0, slot_noise="train")  # the golden's small config, trainable
LENGTHS = (11, 7, 9)
QUERY_LENGTHS = (5, 3, 4)
FUSED = ("start_logits_av", "end_logits_av", "av_score")
UNFUSED = ("start_logits_v", "end_logits_v", "start_logits_a", "end_logits_a", "v_score", "a_score", "aip_prob")


def make_model(config: IMGConfig, seed: int = 0) -> IMG:
    torch.manual_seed(seed)
    return IMG(config)


def random_batch(config: IMGConfig, seed: int = 1) -> dict[str, torch.Tensor]:
    """A padded batch like the data loader's: zero features and ids past each sample's length."""
    generator = torch.Generator().manual_seed(seed)
    batch, steps, words = len(LENGTHS), max(LENGTHS), max(QUERY_LENGTHS)
    video_mask = (torch.arange(steps) < torch.tensor(LENGTHS).unsqueeze(1)).float()
    query_mask = (torch.arange(words) < torch.tensor(QUERY_LENGTHS).unsqueeze(1)).float()
    inputs = {
        "video": torch.randn(batch, steps, config.video_feature_dim, generator=generator) * video_mask.unsqueeze(2),
        "audio": torch.randn(batch, steps, config.audio_feature_dim, generator=generator) * video_mask.unsqueeze(2),
        "video_mask": video_mask,
        "query_mask": query_mask,
    }
    if config.query_features == "precomputed":
        features = torch.randn(batch, words, config.text_feature_dim, generator=generator)
        return inputs | {"query_features": features * query_mask.unsqueeze(2)}
    word_ids = torch.randint(1, config.glove_words + 2, (batch, words), generator=generator) * query_mask.long()
    char_ids = torch.randint(1, config.char_vocab_size, (batch, words, 6), generator=generator)
    return inputs | {"word_ids": word_ids, "char_ids": char_ids * query_mask.long().unsqueeze(2)}


def permuted(inputs: dict[str, torch.Tensor], order: list[int]) -> dict[str, torch.Tensor]:
    return {key: value[order] for key, value in inputs.items()}


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a − b| over the entries that are not masked logits."""
    valid = b > -1e29
    return (a[valid] - b[valid]).abs().max().item()


def run(model: IMG, inputs: dict[str, torch.Tensor]) -> IMGOutput:
    with torch.no_grad():
        return model(**inputs)


# --- positional encoding (§7.1) ----------------------------------------------------------------------------------


def test_temporal_encoding_makes_outputs_independent_of_batch_position() -> None:
    model = make_model(replace(TINY, positional_encoding="temporal")).eval()
    inputs, order = random_batch(TINY), [2, 0, 1]
    outputs, shuffled = run(model, inputs), run(model, permuted(inputs, order))
    for name in IMGOutput._fields:
        assert max_diff(getattr(shuffled, name), getattr(outputs, name)[order]) < 1e-5, name


def test_official_encoding_depends_on_batch_position() -> None:
    model = make_model(TINY).eval()
    inputs, order = random_batch(TINY), [2, 0, 1]
    outputs, shuffled = run(model, inputs), run(model, permuted(inputs, order))
    assert max_diff(shuffled.start_logits_v, outputs.start_logits_v[order]) > 1e-3


def test_positional_encoding_option_changes_only_the_modality_position_tables() -> None:
    official = make_model(TINY).state_dict()
    temporal = make_model(replace(TINY, positional_encoding="temporal"))
    assert set(official) - set(temporal.state_dict()) == {
        "video_branch.encoder.position.table",
        "audio_branch.encoder.position.table",
    }
    assert set(temporal.state_dict()) <= set(official)
    temporal.load_state_dict({k: v for k, v in official.items() if k in temporal.state_dict()}, strict=True)
    assert temporal.trainable_parameters() == make_model(TINY).trainable_parameters()


# --- slot noise (§7.2) -------------------------------------------------------------------------------------------


def test_default_slot_noise_is_sampled_in_training_and_off_in_evaluation() -> None:
    model, inputs = make_model(TINY), random_batch(TINY)
    model.train()
    first, second = run(model, inputs), run(model, inputs)
    assert max_diff(first.start_logits_av, second.start_logits_av) > 1e-4
    model.eval()
    evaluated = run(model, inputs)
    assert torch.equal(evaluated.start_logits_av, run(model, inputs).start_logits_av)
    never = make_model(replace(TINY, slot_noise="never")).eval()
    assert torch.equal(run(never, inputs).start_logits_av, evaluated.start_logits_av)


def test_slot_noise_always_changes_only_the_fused_branch_in_evaluation() -> None:
    model, inputs = make_model(replace(TINY, slot_noise="always")).eval(), random_batch(TINY)
    first, second = run(model, inputs), run(model, inputs)
    for name in FUSED:
        assert max_diff(getattr(first, name), getattr(second, name)) > 1e-5, name
    for name in UNFUSED:
        assert torch.equal(getattr(first, name), getattr(second, name)), name


def test_slot_noise_never_makes_training_deterministic() -> None:
    model, inputs = make_model(replace(TINY, slot_noise="never")).train(), random_batch(TINY)
    first, second = run(model, inputs), run(model, inputs)
    for name in IMGOutput._fields:
        assert torch.equal(getattr(first, name), getattr(second, name)), name


# --- precomputed query features (§3.5) ---------------------------------------------------------------------------


def test_precomputed_query_features_replace_only_the_query_embeddings() -> None:
    precomputed = replace(TINY, query_features="precomputed", text_feature_dim=40)
    glove_keys = set(make_model(TINY).state_dict())
    feature_keys = set(make_model(precomputed).state_dict())
    assert {k.split(".query_embedding.")[0] for k in glove_keys ^ feature_keys} == {"video_branch", "audio_branch"}
    assert all(".query_embedding." in k for k in glove_keys ^ feature_keys)
    assert {k for k in feature_keys if ".query_embedding." in k} == {
        f"{branch}_branch.query_embedding.linear.{p}" for branch in ("video", "audio") for p in ("weight", "bias")
    }
    outputs = run(make_model(precomputed).eval(), random_batch(precomputed))
    assert outputs.start_logits_av.shape == (len(LENGTHS), max(LENGTHS))
    assert all(torch.isfinite(getattr(outputs, name)).all() for name in UNFUSED)


def test_query_inputs_must_match_the_configured_query_features() -> None:
    inputs = random_batch(TINY)
    with pytest.raises(ValueError, match="word_ids and char_ids"):
        make_model(TINY)(**{k: v for k, v in inputs.items() if k != "char_ids"})
    precomputed = replace(TINY, query_features="precomputed")
    with pytest.raises(ValueError, match="query_features"):
        make_model(precomputed)(**inputs)


# --- pseudo-labels (§4.4, §7.13) ---------------------------------------------------------------------------------


def test_pseudo_labels_equal_the_published_exp_formula() -> None:
    loss_v = torch.tensor([6.0, 1.0, 3.0, 4.0])
    loss_a = torch.tensor([1.0, 9.0, 3.0, 5.5])
    label, keep = pseudo_labels(loss_v, loss_a, threshold=0.2, temperature=3.0)
    y = torch.exp(loss_v / 3) / (torch.exp(loss_a / 3) + torch.exp(loss_v / 3))
    expected = torch.where(y * (y > 0.2) > 0.8, torch.ones_like(y), y * (y > 0.2))
    torch.testing.assert_close(label, expected)
    assert keep.tolist() == (y > 0.2).long().tolist() == [1, 0, 1, 1]


def test_pseudo_labels_stay_finite_where_the_exp_formula_overflows() -> None:
    loss_v, loss_a = torch.tensor([400.0, 300.0]), torch.tensor([300.0, 400.0])  # exp(400/3) is inf in float32
    assert not torch.isfinite(torch.exp(loss_v / 3)).all()
    label, keep = pseudo_labels(loss_v, loss_a, threshold=0.2, temperature=3.0)
    assert label.tolist() == [1.0, 0.0] and keep.tolist() == [1, 0]


def test_exp_up_warmup_follows_the_published_schedule() -> None:
    values = [exp_up(epoch, 10) for epoch in range(12)]
    expected = [0, 0.0123, 0.0489, 0.109, 0.191, 0.293, 0.412, 0.546, 0.691, 0.844, 1, 1]
    assert values == pytest.approx(expected, abs=1e-3)
    assert exp_up(10, 20) == pytest.approx(1 - math.cos(math.pi / 4))


# --- mixed precision ---------------------------------------------------------------------------------------------


def training_loss(model: IMG, inputs: dict[str, torch.Tensor], device: str, dtype: torch.dtype) -> torch.Tensor:
    labels = SpanLabels(
        torch.tensor([2, 1, 0], device=device),
        torch.tensor([5, 3, 8], device=device),
        torch.tensor([[2, 4], [1, 2], [3, 3]], device=device),
        torch.tensor([[0, 9], [5, 6], [0, 0]], device=device),
    )
    with torch.autocast(device, dtype=dtype):
        outputs = model(**inputs, p_warm=0.5)
        loss = img_loss(outputs, labels, ObjectiveConfig(), kd_warm=0.3)
    for name in IMGOutput._fields:  # float32, and finite: masked logits are −1e30, not −inf
        assert getattr(outputs, name).dtype == torch.float32, name
        assert torch.isfinite(getattr(outputs, name)).all(), name
    return loss.total_loss


def assert_finite_step(model: IMG, inputs: dict[str, torch.Tensor], device: str, dtype: torch.dtype) -> None:
    total = training_loss(model, inputs, device, dtype)
    total.backward()
    assert torch.isfinite(total)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bfloat16_autocast_training_step_is_finite_on_cpu() -> None:
    model = make_model(replace(TINY, drop_rate=0.2)).train()
    assert_finite_step(model, random_batch(TINY), "cpu", torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_autocast_training_step_is_finite_on_cuda(dtype: torch.dtype) -> None:
    model = make_model(IMGConfig()).cuda().train()
    batch = random_batch(replace(IMGConfig(), glove_words=TINY.glove_words, char_vocab_size=TINY.char_vocab_size))
    assert_finite_step(model, {k: v.cuda() for k, v in batch.items()}, "cuda", dtype)


def test_inputs_beyond_the_position_tables_are_rejected_in_one_line() -> None:
    model, inputs = make_model(replace(TINY, max_pos_len=8)), random_batch(TINY)
    with pytest.raises(ValueError, match="11 video steps exceed max_pos_len 8"):
        model(**inputs)


def test_queries_of_short_words_are_padded_to_the_widest_character_kernel() -> None:
    model = make_model(TINY).eval()
    inputs = random_batch(TINY)
    short = inputs | {"char_ids": inputs["char_ids"][:, :, :2]}  # every word 2 characters: "he is on it"
    padded = inputs | {"char_ids": torch.nn.functional.pad(short["char_ids"], (0, 2))}  # to width 4
    for name, value in run(model, short)._asdict().items():
        assert torch.equal(value, run(model, padded)._asdict()[name]), name
