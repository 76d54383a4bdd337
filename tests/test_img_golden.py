"""IMG against the authors' code (tests/data/golden/img): eval forward on `small` and `charades`, with the inner-module
outputs and decoded spans, and one training step on `small_train_loss` (every loss term and the gradient norms).

The goldens were made with the slot noise switched off (initial slots = mu), hence slot_noise="never" here.
Tolerances are those the golden README suggests.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch

from img_model.network.config import ACTIVITYNET, CHARADES_CLIP_SF, CHARADES_IV2, IMGConfig, ObjectiveConfig
from img_model.network.convert import mapping_table, official_to_ours
from img_model.network.decoding import best_span
from img_model.network.losses import IMGLoss, SpanLabels, img_loss
from img_model.network.model import IMG, IMGOutput
from tests.golden import golden_tensors, load_npz

OUTPUT_NAMES = list(IMGOutput._fields)
BRANCHES = ("av", "v", "a")

# The golden README's configurations.
SMALL = IMGConfig(
    dim=32,
    num_heads=4,
    word_dim=16,
    char_dim=8,
    glove_words=20,
    char_vocab_size=12,
    video_feature_dim=24,
    audio_feature_dim=20,
    max_pos_len=32,
    slot_noise="never",
)
CHARADES = IMGConfig(glove_words=50, slot_noise="never")
GOLDENS = {"small": (SMALL, 401), "charades": (CHARADES, 411)}

# Inner modules whose outputs the goldens store under debug/<name>.
DEBUG_MODULES = {
    "video_affine": ("video_branch.feature_projection", 0),
    "audio_affine": ("audio_branch.feature_projection", 0),
    "word_embeddingv": ("video_branch.query_embedding", 0),
    "word_embeddinga": ("audio_branch.query_embedding", 0),
    "feature_encoderv#0": ("video_branch.encoder", 0),
    "feature_encoderv#1": ("video_branch.encoder", 1),
    "feature_encodera#0": ("audio_branch.encoder", 0),
    "feature_encodera#1": ("audio_branch.encoder", 1),
    "transformerv": ("video_branch.self_attention", 0),
    "transformera": ("audio_branch.self_attention", 0),
    "cross_transformerv[0]": ("video_branch.query_attention", 0),
    "cross_transformera[0]": ("audio_branch.query_attention", 0),
    "cq_attentionv": ("video_branch.context_query_attention", 0),
    "cq_attentiona": ("audio_branch.context_query_attention", 0),
    "cq_concatv": ("video_branch", 0),
    "cq_concata": ("audio_branch", 0),
    "local_audio_fusion": ("local_fusion", 0),
    "event_audio_fusion.slot_attentiona": ("event_fusion.audio_slots", 0),
    "event_audio_fusion.slot_attentionv": ("event_fusion.video_slots", 0),
    "event_audio_fusion": ("event_fusion", 0),
    "global_audio_fusion": ("global_fusion", 0),
    "down_sample": ("multi_granularity_fusion", 0),
}


def golden_model(folder: str, config: IMGConfig, seed: int) -> IMG:
    """IMG holding the golden weights (published layout, converted), in eval mode."""
    model = IMG(config)
    model.load_state_dict(official_to_ours(golden_tensors(f"img/{folder}", seed), config), strict=True)
    return model.eval()


def golden_inputs(folder: str) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(value) for key, value in load_npz(f"img/{folder}", "inputs.npz").items()}


def run_model(model: IMG, inputs: dict[str, torch.Tensor]) -> IMGOutput:
    return model(
        inputs["video_features"],
        inputs["audio_features"],
        inputs["va_mask"],
        inputs["q_mask"],
        word_ids=inputs["word_ids"],
        char_ids=inputs["char_ids"],
        p_warm=float(inputs["p_warm"]),
    )


def assert_close_where_valid(actual: np.ndarray, expected: np.ndarray, name: str) -> None:
    """atol 1e-4 + rtol 1e-4 where the reference is a real value; masked logits (≈ −1e30) must stay ≤ −1e29."""
    valid = expected > -1e29
    np.testing.assert_allclose(actual[valid], expected[valid], rtol=1e-4, atol=1e-4, err_msg=name)
    assert (actual[~valid] <= -1e29).all(), f"{name}: a padded step is not masked"


def max_abs_diff(actual: np.ndarray, expected: np.ndarray) -> float:
    valid = expected > -1e29
    return float(np.abs(actual[valid].astype(np.float64) - expected[valid]).max())


@pytest.fixture(scope="module", params=list(GOLDENS))
def eval_run(request: pytest.FixtureRequest) -> Iterator[tuple[str, IMGOutput, dict[str, list[torch.Tensor]]]]:
    """(golden name, our outputs, inner-module outputs by module path) of one eval forward."""
    folder = request.param
    config, seed = GOLDENS[folder]
    model = golden_model(folder, config, seed)
    captured: dict[str, list[torch.Tensor]] = {}
    modules = dict(model.named_modules())
    hooks = [
        modules[path].register_forward_hook(lambda _m, _i, out, path=path: captured.setdefault(path, []).append(out))
        for path in {path for path, _ in DEBUG_MODULES.values()}
    ]
    with torch.inference_mode():
        outputs = run_model(model, golden_inputs(folder))
    for hook in hooks:
        hook.remove()
    yield folder, outputs, captured


def test_eval_forward_matches_reference_outputs(eval_run: tuple[str, IMGOutput, dict]) -> None:
    folder, outputs, _ = eval_run
    expected = load_npz(f"img/{folder}", "expected.npz")
    for name in OUTPUT_NAMES:
        assert_close_where_valid(getattr(outputs, name).numpy(), expected[name], f"{folder}/{name}")


def test_inner_modules_match_reference_debug_outputs(eval_run: tuple[str, IMGOutput, dict]) -> None:
    folder, outputs, captured = eval_run
    expected = load_npz(f"img/{folder}", "expected.npz")
    for key, (path, call) in DEBUG_MODULES.items():
        assert_close_where_valid(captured[path][call].numpy(), expected[f"debug/{key}"], f"{folder}/debug/{key}")
    # p_warm = 1: the fusion weight ap equals the raw importance p.
    for key in ("debug/PPmodule[0]", "debug/PPmodule[1]"):
        assert_close_where_valid(outputs.aip_prob.numpy(), expected[key].reshape(-1), key)


def test_decoded_spans_match_reference(eval_run: tuple[str, IMGOutput, dict]) -> None:
    folder, outputs, _ = eval_run
    expected = load_npz(f"img/{folder}", "expected.npz")
    for branch in BRANCHES:
        spans = best_span(getattr(outputs, f"start_logits_{branch}"), getattr(outputs, f"end_logits_{branch}"))
        np.testing.assert_array_equal(spans.start.numpy(), expected[f"pred_start_{branch}"], err_msg=branch)
        np.testing.assert_array_equal(spans.end.numpy(), expected[f"pred_end_{branch}"], err_msg=branch)


@pytest.mark.parametrize(
    ("config", "count"),
    [
        (CHARADES, 3_774_314),
        (SMALL, 227_634),
        (ACTIVITYNET, 3_530_454),
        (CHARADES_CLIP_SF, 3_997_962),
        (CHARADES_IV2, 4_628_746),
    ],
    ids=["charades", "small", "activitynet", "clip-sf", "internvideo2"],
)
def test_trainable_parameter_count_matches_published_model(config: IMGConfig, count: int) -> None:
    assert IMG(config).trainable_parameters() == count


# --- one training step -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_step() -> tuple[IMGOutput, IMGLoss, IMG]:
    """small_train_loss: drop_rate 0 (train mode is deterministic), p_warm 0.5, KD warm-up 0.3, Charades ε and γ."""
    config = replace(SMALL, drop_rate=0.0)
    # `small_train_loss` uses the weights of `small` (same spec, fixed arrays and seed).
    model = golden_model("small", config, 401).train()
    inputs = golden_inputs("small_train_loss")
    outputs = run_model(model, inputs)
    objective = ObjectiveConfig(
        pseudo_label_threshold=float(inputs["pl_threshold"]), pseudo_label_temperature=float(inputs["pl_temperature"])
    )
    labels = SpanLabels(inputs["s_ind"], inputs["e_ind"], inputs["pos_indices"], inputs["neg_indices"])
    loss = img_loss(outputs, labels, objective, kd_warm=float(inputs["kd_warm"]))
    loss.total_loss.backward()
    return outputs, loss, model


def test_training_forward_matches_reference(training_step: tuple[IMGOutput, IMGLoss, IMG]) -> None:
    outputs, _, _ = training_step
    expected = load_npz("img/small_train_loss", "expected.npz")
    for name in OUTPUT_NAMES:
        assert_close_where_valid(getattr(outputs, name).detach().numpy(), expected[f"out/{name}"], name)


def test_every_loss_term_matches_reference(training_step: tuple[IMGOutput, IMGLoss, IMG]) -> None:
    _, loss, _ = training_step
    expected = load_npz("img/small_train_loss", "expected.npz")
    for name in (name for name in IMGLoss._fields if name in expected):  # the authors' terms
        if name in ("keep", "n_keep"):
            np.testing.assert_array_equal(getattr(loss, name).numpy(), expected[name], err_msg=name)
        else:
            actual = getattr(loss, name).detach().numpy()
            np.testing.assert_allclose(actual, expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert loss.total_loss.item() == pytest.approx(31.418, abs=1e-3)
    # each batch term as it enters the total: the weighted terms are their sums, in the authors' order
    assert torch.equal(loss.location_fused + loss.location_visual + loss.location_audio, loss.term_loc)
    saliency = loss.saliency_audio + loss.saliency_fused + loss.saliency_visual
    assert torch.equal(ObjectiveConfig().saliency_weight * saliency, loss.term_sal)
    kept = loss.keep.float()
    torch.testing.assert_close(loss.location_audio, (kept * loss.loc_a).sum() / (loss.n_keep + 1e-6))
    torch.testing.assert_close(loss.distill_visual, loss.kd_v.mean())


def test_gradient_norms_match_reference(training_step: tuple[IMGOutput, IMGLoss, IMG]) -> None:
    _, _, model = training_step
    expected = load_npz("img/small_train_loss", "expected.npz")
    official_name = {rule.ours: rule.official for rule in mapping_table(model.config)}
    norms = {
        official_name[name]: 0.0 if p.grad is None else p.grad.double().norm().item()
        for name, p in model.named_parameters()
    }
    assert set(norms) == set(expected["grad_param_names"])
    ours = np.array([norms[name] for name in expected["grad_param_names"]])
    reference = expected["grad_norm_per_param"]
    assert (np.abs(ours - reference) <= 1e-3 + 1e-3 * np.abs(reference)).all()
    total = float(np.sqrt((ours**2).sum()))
    assert total == pytest.approx(float(expected["grad_norm_total"]), rel=1e-4)
