"""Checkpoints of the authors' code (`*.t7`, a plain state dict of IMGNet / IMGNet4VLM) <-> our `IMG` names.

The mapping table below is the only place where the authors' module names appear. Each row maps one of their
modules onto ours with a layout that says which tensors it holds and how they are reshaped: their `Conv1D`
wrapper is a kernel-1 convolution (`.conv1d.weight` of shape (out, in, 1)) where we use `nn.Linear` (out, in);
their character convolutions are `Conv2d` with (1, k) kernels where we use `Conv1d`; their batch-position table
has shape (max_len, 1, d) where ours is (max_len, d). Everything else is a rename.

Our checkpoint file is img_model/checkpoint.py's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from extract.core.errors import listed
from extract.core.torch_files import check_fits, read_state_dict
from img_model.network.config import IMGConfig
from img_model.network.model import IMG


class CheckpointLayoutError(ValueError):
    """A state dict does not have the keys or shapes of the layout it is converted from."""

    def __init__(self, message: str, missing: Sequence[str] = (), unexpected: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)


class Layout(Enum):
    """What a mapped module holds: tensor names and how the authors' shapes become ours."""

    POINTWISE = "pointwise"  # their Conv1D wrapper (kernel 1): conv1d.weight (o, i, 1), conv1d.bias -> Linear
    KERNEL1_CONV = "kernel1_conv"  # a plain nn.Conv1d of kernel 1: weight (o, i, 1), bias -> Linear
    AFFINE = "affine"  # Linear / LayerNorm / Conv1d with bias: weight, bias
    CONV_NO_BIAS = "conv_no_bias"  # weight
    CHAR_CONV = "char_conv"  # Conv2d (o, i, 1, k) -> Conv1d (o, i, k), bias
    EMBEDDING = "embedding"  # weight
    GRU_CELL = "gru_cell"  # weight_ih, weight_hh, bias_ih, bias_hh
    TENSOR = "tensor"  # a single parameter or buffer
    POSITION_TABLE = "position_table"  # their (max_len, 1, d) buffer -> our (max_len, d)


@dataclass(frozen=True)
class TensorRule:
    official: str
    ours: str
    squeeze_dim: int | None = None  # the official tensor has an extra size-1 dim here


def _expand(official: str, ours: str, layout: Layout) -> list[TensorRule]:
    if layout is Layout.POINTWISE:
        return [
            TensorRule(f"{official}.conv1d.weight", f"{ours}.weight", 2),
            TensorRule(f"{official}.conv1d.bias", f"{ours}.bias"),
        ]
    if layout in (Layout.KERNEL1_CONV, Layout.CHAR_CONV):
        return [TensorRule(f"{official}.weight", f"{ours}.weight", 2), TensorRule(f"{official}.bias", f"{ours}.bias")]
    if layout is Layout.AFFINE:
        return [TensorRule(f"{official}.weight", f"{ours}.weight"), TensorRule(f"{official}.bias", f"{ours}.bias")]
    if layout in (Layout.CONV_NO_BIAS, Layout.EMBEDDING):
        return [TensorRule(f"{official}.weight", f"{ours}.weight")]
    if layout is Layout.GRU_CELL:
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return [TensorRule(f"{official}.{n}", f"{ours}.{n}") for n in names]
    if layout is Layout.POSITION_TABLE:
        return [TensorRule(official, ours, 1)]
    return [TensorRule(official, ours)]


def _gru(official: str, ours: str, layers: int) -> list[TensorRule]:
    """nn.GRU keeps its own tensor names (bidirectional)."""
    names = [
        f"{kind}_{part}_l{layer}{direction}"
        for layer in range(layers)
        for direction in ("", "_reverse")
        for kind, part in (("weight", "ih"), ("weight", "hh"), ("bias", "ih"), ("bias", "hh"))
    ]
    return [TensorRule(f"{official}.{name}", f"{ours}.{name}") for name in names]


# --- the mapping table: (their module, our module, layout), grouped by the blocks that repeat -------------------


def _self_attention(official: str, ours: str) -> list[tuple[str, str, Layout]]:
    return [
        (f"{official}.query", f"{ours}.query", Layout.POINTWISE),
        (f"{official}.key", f"{ours}.key", Layout.POINTWISE),
        (f"{official}.value", f"{ours}.value", Layout.POINTWISE),
        (f"{official}.layer_norm1", f"{ours}.input_norm", Layout.AFFINE),
        (f"{official}.layer_norm2", f"{ours}.output_norm", Layout.AFFINE),
        (f"{official}.out_layer", f"{ours}.output", Layout.POINTWISE),
    ]


def _cross_attention(official: str, ours: str) -> list[tuple[str, str, Layout]]:
    return [
        (f"{official}.query", f"{ours}.query", Layout.POINTWISE),
        (f"{official}.key", f"{ours}.key", Layout.POINTWISE),
        (f"{official}.value", f"{ours}.value", Layout.POINTWISE),
        (f"{official}.layer_norm1", f"{ours}.input_norm", Layout.AFFINE),
        (f"{official}.layer_norm2", f"{ours}.context_norm", Layout.AFFINE),
        (f"{official}.layer_norm3", f"{ours}.output_norm", Layout.AFFINE),
        (f"{official}.out_layer", f"{ours}.output", Layout.POINTWISE),
    ]


def _conv_encoder(official: str, ours: str, conv_layers: int) -> list[tuple[str, str, Layout]]:
    convs = f"{official}.conv_block.depthwise_separable_conv"
    return [
        *(
            row
            for i in range(conv_layers)
            for row in (
                (f"{convs}.{i}.0", f"{ours}.conv_layers.{i}.depthwise", Layout.CONV_NO_BIAS),
                (f"{convs}.{i}.1", f"{ours}.conv_layers.{i}.pointwise", Layout.KERNEL1_CONV),
            )
        ),
        *(
            (f"{official}.conv_block.layer_norms.{i}", f"{ours}.conv_layers.{i}.norm", Layout.AFFINE)
            for i in range(conv_layers)
        ),
        *_self_attention(f"{official}.attention_block", f"{ours}.self_attention"),
    ]


def _query_embedding(stream: str, modality: str, config: IMGConfig) -> list[tuple[str, str, Layout]]:
    """Their `word_embedding{v,a}` (GloVe + char CNN) or `text_affine{v,a}` (precomputed text features)."""
    ours = f"{modality}_branch.query_embedding"
    if config.query_features == "precomputed":
        return [(f"text_affine{stream}.linear", f"{ours}.linear", Layout.POINTWISE)]
    official = f"word_embedding{stream}"
    return [
        (f"{official}.word_emb.pad_vec", f"{ours}.words.padding_vector", Layout.TENSOR),
        (f"{official}.word_emb.unk_vec", f"{ours}.words.unknown_vector", Layout.TENSOR),
        (f"{official}.word_emb.glove_vec", f"{ours}.words.glove_vectors", Layout.TENSOR),
        (f"{official}.char_emb.char_emb", f"{ours}.characters.table", Layout.EMBEDDING),
        *(
            (f"{official}.char_emb.char_convs.{i}.0", f"{ours}.characters.convs.{i}", Layout.CHAR_CONV)
            for i in range(len(config.char_kernel_channels))
        ),
        (f"{official}.linear", f"{ours}.projection", Layout.POINTWISE),
    ]


def _modality_encoders(stream: str, modality: str, config: IMGConfig) -> list[tuple[str, str, Layout]]:
    """The encoder a modality shares with its query, the extra self-attention and the attention to the query."""
    ours = f"{modality}_branch"
    encoder = _conv_encoder(f"feature_encoder{stream}", f"{ours}.encoder", config.encoder_conv_layers)
    if config.positional_encoding == "official":
        encoder.insert(0, (f"feature_encoder{stream}.pe.pe", f"{ours}.encoder.position.table", Layout.POSITION_TABLE))
    return [
        *encoder,
        *_self_attention(f"transformer{stream}", f"{ours}.self_attention"),
        *_cross_attention(f"cross_transformer{stream}", f"{ours}.query_attention"),
    ]


def _text_guidance(stream: str, modality: str) -> list[tuple[str, str, Layout]]:
    ours = f"{modality}_branch"
    return [
        (f"cq_attention{stream}.w4C", f"{ours}.context_query_attention.context_weight", Layout.TENSOR),
        (f"cq_attention{stream}.w4Q", f"{ours}.context_query_attention.query_weight", Layout.TENSOR),
        (f"cq_attention{stream}.w4mlu", f"{ours}.context_query_attention.product_weight", Layout.TENSOR),
        (f"cq_attention{stream}.cqa_linear", f"{ours}.context_query_attention.projection", Layout.POINTWISE),
        (f"cq_concat{stream}.weighted_pool.weight", f"{ours}.query_concatenation.pool.weight", Layout.TENSOR),
        (f"cq_concat{stream}.conv1d", f"{ours}.query_concatenation.projection", Layout.POINTWISE),
    ]


def _slot_attention(official: str, ours: str) -> list[tuple[str, str, Layout]]:
    return [
        (f"{official}.slots_mu", f"{ours}.slot_mean", Layout.TENSOR),
        (f"{official}.slots_logsigma", f"{ours}.slot_log_std", Layout.TENSOR),
        (f"{official}.to_q", f"{ours}.query", Layout.POINTWISE),
        (f"{official}.to_k", f"{ours}.key", Layout.POINTWISE),
        (f"{official}.to_v", f"{ours}.value", Layout.POINTWISE),
        (f"{official}.gru", f"{ours}.update", Layout.GRU_CELL),
        (f"{official}.mlp.0", f"{ours}.refine.0", Layout.POINTWISE),
        (f"{official}.mlp.2", f"{ours}.refine.2", Layout.POINTWISE),
        (f"{official}.norm_input", f"{ours}.input_norm", Layout.AFFINE),
        (f"{official}.norm_slots", f"{ours}.slot_norm", Layout.AFFINE),
        (f"{official}.norm_pre_ff", f"{ours}.refine_norm", Layout.AFFINE),
    ]


def _importance_mix(official: str, ours: str) -> list[tuple[str, str, Layout]]:
    return [
        (f"{official}.layer_norm1", f"{ours}.video_norm", Layout.AFFINE),
        (f"{official}.layer_norm2", f"{ours}.audio_norm", Layout.AFFINE),
    ]


def _span_predictor(official: str, ours: str, config: IMGConfig) -> list[tuple[str, str, Layout]]:
    return [
        (f"{official}.encoder.pos_embedding.position_embeddings", f"{ours}.encoder.position.table", Layout.EMBEDDING),
        *_conv_encoder(f"{official}.encoder", f"{ours}.encoder", config.predictor_conv_layers),
        (f"{official}.start_layer_norm", f"{ours}.start_norm", Layout.AFFINE),
        (f"{official}.end_layer_norm", f"{ours}.end_norm", Layout.AFFINE),
        (f"{official}.start_block.0", f"{ours}.start_head.0", Layout.POINTWISE),
        (f"{official}.start_block.2", f"{ours}.start_head.2", Layout.POINTWISE),
        (f"{official}.end_block.0", f"{ours}.end_head.0", Layout.POINTWISE),
        (f"{official}.end_block.2", f"{ours}.end_head.2", Layout.POINTWISE),
    ]


def mapping_table(config: IMGConfig | None = None) -> list[TensorRule]:
    """Every tensor of the authors' checkpoint for this configuration, with its name in our `IMG`."""
    config = config or IMGConfig()
    modules = [
        *_query_embedding("v", "video", config),
        *_query_embedding("a", "audio", config),
        ("video_affine.linear", "video_branch.feature_projection.linear", Layout.POINTWISE),
        ("audio_affine.linear", "audio_branch.feature_projection.linear", Layout.POINTWISE),
        *_span_predictor("predictor_av", "fused_span_predictor", config),
        *_span_predictor("predictor_v", "video_span_predictor", config),
        *_span_predictor("predictor_a", "audio_span_predictor", config),
        *_modality_encoders("v", "video", config),
        *_modality_encoders("a", "audio", config),
        *_text_guidance("v", "video"),
        *_text_guidance("a", "audio"),
        ("PPmodule.pred_proj", "audio_importance.classifier", Layout.AFFINE),
        ("PPmodule.weighted_poolv.weight", "audio_importance.video_pool.weight", Layout.TENSOR),
        ("PPmodule.weighted_poola.weight", "audio_importance.audio_pool.weight", Layout.TENSOR),
        *(
            (f"local_audio_fusion.conv_block{s}.{i}", f"local_fusion.{m}_convs.{i}", Layout.AFFINE)
            for s, m in (("a", "audio"), ("v", "video"))
            for i in range(len(config.local_kernels))
        ),
        ("local_audio_fusion.downsamplea.conv", "local_fusion.audio_projection.linear", Layout.POINTWISE),
        ("local_audio_fusion.downsamplev.conv", "local_fusion.video_projection.linear", Layout.POINTWISE),
        *_importance_mix("local_audio_fusion.fusion", "local_fusion.mix"),
        *_slot_attention("event_audio_fusion.slot_attentiona", "event_fusion.audio_slots"),
        *_slot_attention("event_audio_fusion.slot_attentionv", "event_fusion.video_slots"),
        *_cross_attention("event_audio_fusion.cross_transformer_a", "event_fusion.audio_attention"),
        *_cross_attention("event_audio_fusion.cross_transformer_v", "event_fusion.video_attention"),
        *_importance_mix("event_audio_fusion.fusion", "event_fusion.mix"),
        ("global_audio_fusion.global_audio.weight", "global_fusion.audio_pool.weight", Layout.TENSOR),
        ("global_audio_fusion.global_video.weight", "global_fusion.video_pool.weight", Layout.TENSOR),
        ("global_audio_fusion.downsamplea.conv", "global_fusion.audio_projection.linear", Layout.POINTWISE),
        ("global_audio_fusion.downsamplev.conv", "global_fusion.video_projection.linear", Layout.POINTWISE),
        *_importance_mix("global_audio_fusion.fusion", "global_fusion.mix"),
        ("saliency_proj_v", "video_saliency", Layout.AFFINE),
        ("saliency_proj_a", "audio_saliency", Layout.AFFINE),
        ("saliency_proj_av", "fused_saliency", Layout.AFFINE),
    ]
    multi_granularity = [
        *_gru("down_sample.rnn1", "multi_granularity_fusion.local_event_gru", config.fusion_gru_layers),
        *_gru("down_sample.rnn2", "multi_granularity_fusion.event_global_gru", config.fusion_gru_layers),
        *_gru("down_sample.rnn3", "multi_granularity_fusion.local_global_gru", config.fusion_gru_layers),
        *_gru("down_sample.rnn123", "multi_granularity_fusion.combined_gru", 1),
        *_expand("down_sample.fusion.conv", "multi_granularity_fusion.projection.linear", Layout.POINTWISE),
    ]
    return [rule for row in modules for rule in _expand(*row)] + multi_granularity


# --- conversion --------------------------------------------------------------------------------------------------


def _check_keys(state_dict: object, expected: list[str], layout: str) -> Mapping[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise CheckpointLayoutError(f"expected a state dict in the {layout} layout, got a {type(state_dict).__name__}")
    expected_set = set(expected)
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected_set]
    if missing or unexpected:
        problems = [
            f"{label} keys: {listed(keys)}" for label, keys in (("unknown", unexpected), ("missing", missing)) if keys
        ]
        raise CheckpointLayoutError(
            f"not a state dict in the {layout} layout; " + "; ".join(problems), missing, unexpected
        )
    not_tensors = [key for key in expected if not isinstance(state_dict[key], torch.Tensor)]
    if not_tensors:
        raise CheckpointLayoutError(f"entries that are not tensors: {listed(not_tensors)}")
    return state_dict


# The modules of the authors' IMGNet that an ablation switch of IMGConfig removes (docs/model.md, "Ablations").
# The authors released no ablated model, so how theirs would be laid out is unknown: the converter refuses one.
ABLATED_MODULES = {
    "PPmodule.": ("audio importance predictor", "a model without AIP (a fixed or Table 1 audio weight)"),
    "local_audio_fusion.": ("local fusion level", "a granularity ablation"),
    "event_audio_fusion.": ("event fusion level", "a granularity ablation"),
    "global_audio_fusion.": ("global fusion level", "a granularity ablation"),
    "audio_affine.": ("audio branch", "IMG w/o audio"),
}


def check_published_switches(config: IMGConfig, state_dict: Mapping[str, object] | None = None) -> None:
    """CheckpointLayoutError (one line) for an ablated model: a config whose switches are not the published ones,
    or an authors' state dict without a module a switch removes; the authors' layout has only the published
    model."""
    default = IMGConfig()
    switched = [
        f"{name} = {getattr(config, name)!r}"
        for name in ("audio_weight", "granularities", "audio")
        if getattr(config, name) != getattr(default, name)
    ]
    if switched:
        raise CheckpointLayoutError(
            f"an ablated model ({', '.join(switched)}) has no layout in the authors' code; only the published "
            "IMGNet converts"
        )
    for prefix, (module, ablation) in ABLATED_MODULES.items() if state_dict is not None else ():
        if not any(str(key).startswith(prefix) for key in state_dict):  # type: ignore[union-attr]
            raise CheckpointLayoutError(
                f"this checkpoint has no {module} ({prefix}* keys): {ablation}, a switch convert-official cannot "
                "express (the authors released no ablated model); only the published IMGNet converts"
            )


def official_to_ours(state_dict: object, config: IMGConfig | None = None) -> dict[str, torch.Tensor]:
    """Rename and reshape the authors' state dict into one that `IMG(config).load_state_dict` accepts.

    Raises `CheckpointLayoutError` listing unknown and missing keys. With `positional_encoding="temporal"` the
    authors' batch-position tables are not expected (the temporal encoding is computed, not stored)."""
    config = config or IMGConfig()
    check_published_switches(config)  # the modules an ablation removes: infer_config names them (one line)
    rules = mapping_table(config)
    expected = [rule.official for rule in rules]
    if config.positional_encoding == "temporal" and isinstance(state_dict, Mapping):
        state_dict = {k: v for k, v in state_dict.items() if not k.endswith(".pe.pe")}
    state_dict = _check_keys(state_dict, expected, "authors' (IMGNet)")
    return {rule.ours: _squeezed(state_dict[rule.official], rule) for rule in rules}


def ours_to_official(state_dict: object, config: IMGConfig | None = None) -> dict[str, torch.Tensor]:
    """The inverse of `official_to_ours`: a state dict the authors' code loads with `strict=True`."""
    config = config or IMGConfig()
    check_published_switches(config)
    if config.positional_encoding != "official":
        raise CheckpointLayoutError("a model with positional_encoding='temporal' has no layout in the authors' code")
    rules = mapping_table(config)
    state_dict = _check_keys(state_dict, [rule.ours for rule in rules], "img_model (IMG)")
    return {rule.official: _unsqueezed(state_dict[rule.ours], rule) for rule in rules}


def _squeezed(tensor: torch.Tensor, rule: TensorRule) -> torch.Tensor:
    if rule.squeeze_dim is None:
        return tensor
    if tensor.dim() <= rule.squeeze_dim or tensor.shape[rule.squeeze_dim] != 1:
        raise CheckpointLayoutError(
            f"{rule.official} has shape {tuple(tensor.shape)}; expected size 1 in dim {rule.squeeze_dim}"
        )
    return tensor.squeeze(rule.squeeze_dim)


def _unsqueezed(tensor: torch.Tensor, rule: TensorRule) -> torch.Tensor:
    return tensor if rule.squeeze_dim is None else tensor.unsqueeze(rule.squeeze_dim)


# What the authors' configs.json (saved beside their .t7 files, §4.7) calls the settings the weights do not show.
OFFICIAL_CONFIG_FIELDS = {
    "event_num": "event_num",
    "slot_layers": "slot_iterations",
    "num_heads": "num_heads",
    "drop_rate": "drop_rate",
}
NOT_IN_WEIGHTS = ("event_num", "slot_iterations")  # slot count and iterations: no tensor's shape depends on them


def read_official_configs(path: str | Path) -> dict[str, object]:
    """The IMGConfig fields stored in an authors' configs.json (their argparse namespace, §4.7) that the weights
    do not show: event_num, slot_layers, num_heads, drop_rate."""
    import json

    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointLayoutError(f"{path} is not a readable configs.json ({error})") from None
    if not isinstance(raw, Mapping):
        raise CheckpointLayoutError(f"{path} is not the authors' configs.json (not a JSON object)")
    return {ours: raw[theirs] for theirs, ours in OFFICIAL_CONFIG_FIELDS.items() if raw.get(theirs) is not None}


def _gru_layers(official_state_dict: Mapping[str, torch.Tensor]) -> int:
    layers = 0
    while f"down_sample.rnn1.weight_ih_l{layers}" in official_state_dict:
        layers += 1
    if not layers:
        raise CheckpointLayoutError(
            "not an IMGNet checkpoint: missing keys: down_sample.rnn1.weight_ih_l0",
            missing=["down_sample.rnn1.weight_ih_l0"],
        )
    return layers


def infer_config(official_state_dict: Mapping[str, torch.Tensor], **overrides: object) -> IMGConfig:
    """The `IMGConfig` an authors' checkpoint was trained with. Sizes and the GRU depth come from the weights'
    shapes and keys; the slot count and slot iterations are not in the weights and must be given (from their
    configs.json or by the user): without them the checkpoint is refused rather than assumed 3/3. Attention heads
    and dropout are not visible either; they keep the published values (8, 0.2) unless given."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in official_state_dict:
            raise CheckpointLayoutError(f"not an IMGNet checkpoint: missing keys: {key}", missing=[key])
        return tuple(official_state_dict[key].shape)

    missing = [name for name in NOT_IN_WEIGHTS if overrides.get(name) is None]
    if missing:
        raise CheckpointLayoutError(
            f"the {' and '.join(missing)} of this checkpoint are not in its weights; put the authors' configs.json "
            "beside it (or pass --configs FILE), or give --slots N and --slot-iterations N"
        )
    dim, video_dim, _ = shape("video_affine.linear.conv1d.weight")  # first: is it an IMGNet at all?
    check_published_switches(IMGConfig(), official_state_dict)
    fields: dict[str, object] = {
        "dim": dim,
        "video_feature_dim": video_dim,
        "audio_feature_dim": shape("audio_affine.linear.conv1d.weight")[1],
        "max_pos_len": shape("predictor_av.encoder.pos_embedding.position_embeddings.weight")[0],
        "fusion_gru_layers": _gru_layers(official_state_dict),
    }
    if "text_affinev.linear.conv1d.weight" in official_state_dict:
        fields |= {"query_features": "precomputed", "text_feature_dim": shape("text_affinev.linear.conv1d.weight")[1]}
    else:
        glove_words, word_dim = shape("word_embeddingv.word_emb.glove_vec")
        char_vocab_size, char_dim = shape("word_embeddingv.char_emb.char_emb.weight")
        fields |= {
            "word_dim": word_dim,
            "glove_words": glove_words,
            "char_vocab_size": char_vocab_size,
            "char_dim": char_dim,
        }
    return IMGConfig(**{**fields, **{k: v for k, v in overrides.items() if v is not None}})  # type: ignore[arg-type]


def load_official_checkpoint(path: str | Path, configs: str | Path | None = None, **overrides: object) -> IMG:
    """An `IMG` (eval mode) holding the weights of an authors' `*.t7` file. What the weights do not show comes
    from `overrides` (e.g. event_num, slot_iterations, num_heads), else from the authors' configs.json (`configs`,
    by default the one beside the file when there is one). Every error names the file once."""
    path = Path(path)
    state_dict = read_state_file(path, "an authors' checkpoint (a plain IMGNet state dict, e.g. IMG_9.t7)")
    settings = {}
    configs = Path(configs) if configs is not None else path.with_name("configs.json")
    if configs.is_file():
        settings = read_official_configs(configs)
    elif configs != path.with_name("configs.json"):
        raise CheckpointLayoutError(f"{configs} does not exist")
    try:
        config = infer_config(state_dict, **{**settings, **{k: v for k, v in overrides.items() if v is not None}})
        model = IMG(config)
        load_into(model, official_to_ours(state_dict, config))
    except (CheckpointLayoutError, ValueError) as error:  # ValueError: a config the shapes contradict
        raise CheckpointLayoutError(f"{path}: {error}") from None
    return model.eval()


def load_into(model: IMG, state_dict: Mapping[str, torch.Tensor]) -> None:
    """`load_state_dict(strict=True)` after extract/core/torch_files.py's check: one line listing the missing,
    unexpected and mis-shaped keys (CheckpointLayoutError)."""
    check_fits(model, state_dict, "the checkpoint's state dict", CheckpointLayoutError)
    model.load_state_dict(state_dict, strict=True)


def read_state_file(path: str | Path, expected: str) -> Mapping[str, torch.Tensor]:
    """The mapping a PyTorch file holds (extract/core/torch_files.py); CheckpointLayoutError (one line saying what
    the file looks like and what was `expected`) for anything else."""
    return read_state_dict(path, expected, CheckpointLayoutError)
