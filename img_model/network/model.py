"""IMG: importance-aware multi-granularity fusion of video, audio and a text query for moment retrieval.

The network of "Audio Does Matter: Importance-Aware Multi-Granularity Fusion for Video Moment Retrieval"
(ACM MM 2025) as the authors' code (HuiGuanLab/IMG, commit dab38b9) computes it, described in img_spec.md §3.
It reads top to bottom across three files: the building blocks and the query / video / audio encoders
(img_model/network/layers.py), the audio importance predictor and the three fusion granularities
(img_model/network/fusion.py), then here the span predictors and `IMG` itself. With `IMGConfig()` defaults and weights
converted by `img_model.network.convert`, it reproduces the published model to float32 rounding
(tests/test_img_golden.py); the quirks of §7 it keeps on purpose are marked, and the ones that change outputs
are options of `IMGConfig` (all defaulting to the published behaviour but the slot noise at evaluation, §7.2, which
is off by default: see img_model/network/config.py).

Mixed precision: under autocast the linear layers, convolutions, GRUs and attention products run in half
precision; masking and every softmax (attention, pooling, context-query attention, slot attention), the
LayerNorms, the importance sigmoid and the returned logits and scores are float32, because the published
masking adds −1e30, which float16 cannot hold.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from img_model.network.config import IMGConfig
from img_model.network.fusion import (
    AudioImportancePredictor,
    EntropyAudioWeight,
    EventFusion,
    GlobalFusion,
    LocalFusion,
    MultiGranularityFusion,
    SimilarityAudioWeight,
)
from img_model.network.layers import (
    ConvAttentionEncoder,
    LearnedPositionEmbedding,
    TextGuidedEncoder,
    current_batch_rows,
    layer_norm,
    mask_logits,
)

# ---------------------------------------------------------------------------------------------------------------
# Span prediction


class SpanPredictor(nn.Module):
    """Start / end logits over the steps. One encoder is applied twice: once for the start features and once more,
    on those, for the end features; each head sees [LN(features) ; input]."""

    def __init__(self, config: IMGConfig) -> None:
        super().__init__()
        dim = config.dim
        position = LearnedPositionEmbedding(config.max_pos_len, dim)
        self.encoder = ConvAttentionEncoder(config, position, config.predictor_conv_layers)
        self.start_norm = layer_norm(dim)
        self.end_norm = layer_norm(dim)
        self.start_head = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))
        self.end_head = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start_features = self.encoder(x, mask)
        end_features = self.encoder(start_features, mask)
        start = self.start_head(torch.cat([self.start_norm(start_features), x], dim=2)).squeeze(2)
        end = self.end_head(torch.cat([self.end_norm(end_features), x], dim=2)).squeeze(2)
        return mask_logits(start, mask), mask_logits(end, mask)


# ---------------------------------------------------------------------------------------------------------------
# The network


class IMGOutput(NamedTuple):
    """Start / end logits (B, Lv) of the fused (av), visual (v) and audio (a) branches, with −1e30 added at padded
    steps; raw saliency scores (B, Lv), unmasked and without sigmoid; the raw audio importance p (B,).

    Ablated models (docs/model.md, "Ablations"): without audio (`audio = false`) the audio outputs are None and
    the fused ones are the visual branch's; `aip_prob` is the AIP's p with the predicted weight, else the audio
    weight the model itself gives each query (a fixed number, the similarity or entropy weight), and None where
    its fusion has no scalar audio weight (add, concat) or there is no audio."""

    start_logits_av: torch.Tensor
    end_logits_av: torch.Tensor
    start_logits_v: torch.Tensor
    end_logits_v: torch.Tensor
    start_logits_a: torch.Tensor | None
    end_logits_a: torch.Tensor | None
    v_score: torch.Tensor
    a_score: torch.Tensor | None
    av_score: torch.Tensor
    aip_prob: torch.Tensor | None


class IMG(nn.Module):
    """The IMG network (img_spec.md §3.2). Inputs: video (B, Lv, Dv) and audio (B, Lv, Da) features of equal
    length with their mask (B, Lv); the query as word_ids (B, Lq) + char_ids (B, Lq, Lc), or as precomputed
    query_features (B, Lq, Dt) when `config.query_features == "precomputed"`, with its mask (B, Lq).
    `p_warm` blends the audio weight from 0.5 (p_warm = 0) to the predicted importance (p_warm = 1, evaluation).

    The ablation switches of IMGConfig (audio_weight, granularities, audio) leave out the modules they remove;
    with their defaults the model and its state dict are the published ones. `force_audio_weight(p)` fixes the
    audio weight of the fusion at inference (img-eval --audio-weight, Table 17)."""

    def __init__(self, config: IMGConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or IMGConfig()
        self.forced_audio_weight: float | None = None
        self.video_branch = TextGuidedEncoder(config, config.video_feature_dim)
        if config.audio:
            self.audio_branch = TextGuidedEncoder(config, config.audio_feature_dim)
            if config.audio_weight == "predicted":
                self.audio_importance = AudioImportancePredictor(config.dim)
            elif config.audio_weight == "similarity":
                self.stream_audio_weight: nn.Module = SimilarityAudioWeight()
            elif config.audio_weight == "entropy":
                self.stream_audio_weight = EntropyAudioWeight(config.dim)
            levels = {"local": LocalFusion, "event": EventFusion, "global": GlobalFusion}
            for level in config.granularities:
                self.add_module(f"{level}_fusion", levels[level](config))
            self.multi_granularity_fusion = MultiGranularityFusion(config)
            self.fused_span_predictor = SpanPredictor(config)
        self.video_span_predictor = SpanPredictor(config)
        if config.audio:
            self.audio_span_predictor = SpanPredictor(config)
        self.video_saliency = nn.Linear(config.dim, 1)
        if config.audio:
            self.audio_saliency = nn.Linear(config.dim, 1)
            self.fused_saliency = nn.Linear(config.dim, 1)
        self._init_weights()

    def force_audio_weight(self, weight: float | None) -> None:
        """Fuse with this audio weight in [0, 1] instead of the model's own (None: the model's own again); the
        output `aip_prob` still reports the model's own. ValueError for a model whose fusion has no audio weight."""
        if weight is not None:
            if not self.config.audio or self.config.audio_weight in ("add", "concat"):
                what = "no audio" if not self.config.audio else f"audio_weight = {self.config.audio_weight!r}"
                raise ValueError(f"this model's fusion has no audio weight to force ({what})")
            if not 0.0 <= weight <= 1.0:
                raise ValueError(f"the forced audio weight must be from 0 to 1, not {weight}")
        self.forced_audio_weight = weight

    def _init_weights(self) -> None:
        """§3.3: xavier-uniform weights and zero biases for every linear map and convolution; the GRUs keep
        PyTorch's default; the slot GRUCell too (the authors' type check misses it)."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Conv1d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(
        self,
        video: torch.Tensor,
        audio: torch.Tensor,
        video_mask: torch.Tensor,
        query_mask: torch.Tensor,
        word_ids: torch.Tensor | None = None,
        char_ids: torch.Tensor | None = None,
        query_features: torch.Tensor | None = None,
        p_warm: float = 1.0,
    ) -> IMGOutput:
        query = self._query_inputs(word_ids, char_ids, query_features)
        self._check_sizes(video_mask, query_mask)
        video_mask, query_mask = video_mask.float(), query_mask.float()
        video_text = self.video_branch(video, video_mask, query, query_mask)  # V̂
        if not self.config.audio:  # "IMG w/o audio": the visual branch is the model's answer
            start_v, end_v = self.video_span_predictor(video_text, video_mask)
            v_score = self.video_saliency(video_text).squeeze(2).float()
            return IMGOutput(start_v, end_v, start_v, end_v, None, None, v_score, None, v_score, None)
        audio_text = self.audio_branch(audio, video_mask, query, query_mask)  # Â

        aip_prob, audio_weight = self._audio_weight(video_text, audio_text, video_mask, p_warm)
        levels = {}
        if "local" in self.config.granularities:
            levels["local"] = self.local_fusion(video_text, audio_text, audio_weight)
        if "event" in self.config.granularities:
            levels["event"] = self.event_fusion(video_text, audio_text, video_mask, audio_weight)
        if "global" in self.config.granularities:
            levels["global"] = self.global_fusion(video_text, audio_text, video_mask, audio_weight)
        fused = self.multi_granularity_fusion(levels, video_mask)

        start_av, end_av = self.fused_span_predictor(fused, video_mask)
        start_v, end_v = self.video_span_predictor(video_text, video_mask)
        start_a, end_a = self.audio_span_predictor(audio_text, video_mask)
        return IMGOutput(
            start_av,
            end_av,
            start_v,
            end_v,
            start_a,
            end_a,
            self.video_saliency(video_text).squeeze(2).float(),
            self.audio_saliency(audio_text).squeeze(2).float(),
            self.fused_saliency(fused).squeeze(2).float(),
            aip_prob,
        )

    def _audio_weight(
        self, video_text: torch.Tensor, audio_text: torch.Tensor, video_mask: torch.Tensor, p_warm: float
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(the model's own audio weight per query (B,) or None, the weight the fusion applies (B, 1, 1) or None)."""
        mode = self.config.audio_weight
        if mode in ("add", "concat"):
            return None, None
        if mode == "predicted":
            aip_prob = self.audio_importance(video_text, audio_text, video_mask)
            applied = 0.5 * (1 - p_warm) + p_warm * aip_prob
        elif mode in ("similarity", "entropy"):
            aip_prob = applied = self.stream_audio_weight(video_text, audio_text, video_mask)
        else:
            aip_prob = applied = video_mask.new_full(video_mask.shape[:1], float(mode), dtype=torch.float32)
        if self.forced_audio_weight is not None:
            applied = torch.full_like(aip_prob, self.forced_audio_weight)
        return aip_prob, applied.view(-1, 1, 1)

    def _query_inputs(
        self, word_ids: torch.Tensor | None, char_ids: torch.Tensor | None, query_features: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        if self.config.query_features == "glove_char":
            if word_ids is None or char_ids is None or query_features is not None:
                raise ValueError("this IMG embeds GloVe words: pass word_ids and char_ids, not query_features")
            return word_ids, char_ids
        if query_features is None or word_ids is not None or char_ids is not None:
            raise ValueError("this IMG takes precomputed text features: pass query_features, not word/char ids")
        return (query_features,)

    def _check_sizes(self, video_mask: torch.Tensor, query_mask: torch.Tensor) -> None:
        limit = self.config.max_pos_len
        if video_mask.shape[1] > limit:
            raise ValueError(f"{video_mask.shape[1]} video steps exceed max_pos_len {limit}; resample the features")
        rows = current_batch_rows()
        batch = rows.total if rows is not None else video_mask.shape[0]
        if self.config.positional_encoding == "official" and batch > limit:
            raise ValueError(f"the batch-index encoding (§7.1) covers at most {limit} samples per batch")
        if self.config.positional_encoding == "temporal" and query_mask.shape[1] > limit:
            raise ValueError(f"{query_mask.shape[1]} query tokens exceed max_pos_len {limit}")

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
