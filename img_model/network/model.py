"""IMG: importance-aware multi-granularity fusion of video, audio and a text query for moment retrieval.

The network of "Audio Does Matter: Importance-Aware Multi-Granularity Fusion for Video Moment Retrieval"
(ACM MM 2025) as the authors' code (HuiGuanLab/IMG, commit dab38b9) computes it, described in img_spec.md §3.
It reads top to bottom: building blocks, then the query / video / audio encoders, the audio importance predictor,
the three fusion granularities, the span predictors, and `IMG` itself. With `IMGConfig()` defaults and weights
converted by `img_model.network.convert`, it reproduces the published model to float32 rounding
(tests/test_img_golden.py); the quirks of §7 it keeps on purpose are marked, and the ones that change outputs
are options of `IMGConfig`.

Mixed precision: under autocast the linear layers, convolutions, GRUs and attention products run in half
precision; masking and every softmax (attention, pooling, context-query attention, slot attention), the
LayerNorms, the importance sigmoid and the returned logits and scores are float32, because the published
masking adds −1e30, which float16 cannot hold.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from img_model.network.config import IMGConfig

MASK_VALUE = -1e30  # added to masked logits, as the published code does
LAYER_NORM_EPS = 1e-6


def mask_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`logits + (1 − mask)·(−1e30)` in float32. A fully masked row stays finite and becomes uniform."""
    return logits.float() + (1.0 - mask.float()) * MASK_VALUE


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LAYER_NORM_EPS)


# ---------------------------------------------------------------------------------------------------------------
# Rows of a larger batch (distributed training)


@dataclass(frozen=True)
class BatchRows:
    """Rows start : start + n of a batch of `total` samples: the part of a training batch that one process of a
    distributed run computes (img_model/distributed.py). What depends on the whole batch is taken as the whole
    batch's: the batch-index encoding (§7.1) at the rows' own positions, and the dropout masks and slot noise
    drawn for `total` rows (every process draws the same, in the same order as one process) of which the rows
    keep theirs. So the processes together compute what one process computes on the whole batch."""

    start: int
    total: int


_batch_rows: BatchRows | None = None  # a plain global, not a ContextVar: torch.compile guards on it


@contextlib.contextmanager
def batch_rows(rows: BatchRows | None) -> Iterator[None]:
    """Forward passes inside compute these rows of a larger batch (None: the batch is whole)."""
    global _batch_rows
    previous, _batch_rows = _batch_rows, rows
    try:
        yield
    finally:
        _batch_rows = previous


def _row_offset() -> int:
    return _batch_rows.start if _batch_rows is not None else 0


def _whole_batch_like(x: torch.Tensor, total: int) -> torch.Tensor:
    """An uninitialised tensor of x's shape with `total` rows, laid out in memory as x is: the order in which a
    random fill visits the elements follows the layout."""
    order = sorted(range(x.dim()), key=x.stride, reverse=True)
    shape = [total if dim == 0 else x.shape[dim] for dim in order]
    return x.new_empty(shape).permute(*sorted(range(x.dim()), key=order.__getitem__))


class Dropout(nn.Dropout):
    """nn.Dropout; inside `batch_rows`, these rows of the mask drawn for the whole batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = _batch_rows
        if rows is None or not self.training or self.p == 0:
            return super().forward(x)
        # F.dropout of ones is the scaled mask itself, drawn by the same kernel as for the whole batch's input
        scaled_mask = F.dropout(_whole_batch_like(x, rows.total).fill_(1), self.p, training=True)
        return x * scaled_mask[rows.start : rows.start + x.shape[0]]


# ---------------------------------------------------------------------------------------------------------------
# Building blocks


class FeatureProjection(nn.Module):
    """Dropout on the input, then a per-position linear map (the input projections and every down-sampling)."""

    def __init__(self, in_dim: int, out_dim: int, drop_rate: float) -> None:
        super().__init__()
        self.dropout = Dropout(drop_rate)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x))


class WeightedPool(nn.Module):
    """Attention pooling over time: softmax over valid steps of x·w, then the weighted sum of x."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, 1))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        alpha = torch.softmax(mask_logits((x @ self.weight).squeeze(-1), mask), dim=1)  # (B, L)
        return torch.einsum("bl,bld->bd", alpha.to(x.dtype), x)


def multi_head_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, num_heads: int, dropout: nn.Module
) -> torch.Tensor:
    """Scaled dot-product attention over heads; `mask` (B, 1|Lq, Lk) is 1 where a query may attend a key."""
    batch, query_len, dim = query.shape
    head_dim = dim // num_heads

    def split_heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, x.shape[1], num_heads, head_dim).transpose(1, 2)

    scores = split_heads(query) @ split_heads(key).transpose(-1, -2) / math.sqrt(head_dim)
    probs = dropout(torch.softmax(mask_logits(scores, mask.unsqueeze(1)), dim=-1))
    context = probs.to(value.dtype) @ split_heads(value)
    return context.transpose(1, 2).reshape(batch, query_len, dim)


class SelfAttentionBlock(nn.Module):
    """Pre-LN multi-head self-attention with padded keys masked; the "feed-forward" is one linear layer (§7.5)."""

    def __init__(self, dim: int, num_heads: int, drop_rate: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.input_norm = layer_norm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.output_norm = layer_norm(dim)
        self.output = nn.Linear(dim, dim)
        self.dropout = Dropout(drop_rate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.dropout(self.input_norm(x))
        attended = multi_head_attention(
            self.query(h), self.key(h), self.value(h), mask.unsqueeze(1), self.num_heads, self.dropout
        )
        residual = self.dropout(attended) + x
        return self.dropout(self.output(self.dropout(self.output_norm(residual)))) + residual


class CrossAttentionBlock(nn.Module):
    """Pre-LN multi-head attention from a sequence to a context; padded queries attend uniformly to all keys."""

    def __init__(self, dim: int, num_heads: int, drop_rate: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.input_norm = layer_norm(dim)
        self.context_norm = layer_norm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.output_norm = layer_norm(dim)
        self.output = nn.Linear(dim, dim)
        self.dropout = Dropout(drop_rate)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        h = self.dropout(self.input_norm(x))
        c = self.dropout(self.context_norm(context))
        # The outer product of the two masks: a padded query row is all-masked, hence uniform.
        pair_mask = mask.unsqueeze(2) * context_mask.unsqueeze(1)
        attended = multi_head_attention(
            self.query(h), self.key(c), self.value(c), pair_mask, self.num_heads, self.dropout
        )
        residual = self.dropout(attended) + x
        return self.dropout(self.output(self.dropout(self.output_norm(residual)))) + residual


class DepthwiseSeparableConvLayer(nn.Module):
    """x + Dropout(ReLU(pointwise(depthwise(LN(x))))); padded steps are not masked (§7.12)."""

    def __init__(self, dim: int, kernel_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm = layer_norm(dim)
        self.depthwise = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
        self.pointwise = nn.Linear(dim, dim)
        self.dropout = Dropout(drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(self.norm(x).transpose(1, 2)).transpose(1, 2)
        return self.dropout(F.relu(self.pointwise(h))) + x


class ConvAttentionEncoder(nn.Module):
    """Position signal, a stack of depthwise-separable convolutions, then self-attention."""

    def __init__(self, config: IMGConfig, position: nn.Module, conv_layers: int) -> None:
        super().__init__()
        self.position = position
        self.conv_layers = nn.Sequential(
            *(
                DepthwiseSeparableConvLayer(config.dim, config.encoder_kernel, config.drop_rate)
                for _ in range(conv_layers)
            )
        )
        self.self_attention = SelfAttentionBlock(config.dim, config.num_heads, config.drop_rate)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.self_attention(self.conv_layers(self.position(x)), mask)


# ---------------------------------------------------------------------------------------------------------------
# Position signals


def batch_position_table(max_len: int, dim: int) -> torch.Tensor:
    """The published PositionalEncoding buffer (§7.1): sin / cos of p·10000^(j/d) (multiplied, not divided), in
    float32 exactly as the authors' code builds it; it matches their stored buffers to one float32 ulp."""
    positions = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    frequencies = torch.pow(10000.0, torch.arange(dim, dtype=torch.float32) / dim)
    angles = positions * frequencies
    return torch.where(torch.arange(dim) % 2 == 0, torch.sin(angles), torch.cos(angles))


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """The Transformer's encoding: sin / cos of t / 10000^(2i/d), computed in float64."""
    positions = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
    inverse_frequencies = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = positions * inverse_frequencies
    return torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).flatten(1).float()


class BatchIndexEncoding(nn.Module):
    """Published quirk (§7.1): sample b of the batch gets table[b] added at every step, so there is no temporal
    signal and outputs depend on the sample's position in its batch. The table is part of the checkpoint."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("table", batch_position_table(max_len, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = _row_offset()
        return x + self.table[first : first + x.shape[0]].unsqueeze(1)


class SinusoidalTimeEncoding(nn.Module):
    """The fix of §7.1: step t gets a sinusoidal encoding of t, whatever its batch position."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoidal_table(max_len, dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table[: x.shape[1]]


class LearnedPositionEmbedding(nn.Module):
    """A learned embedding of the step index 0..L−1 (the span predictors' encoders)."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(max_len, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.table.weight[: x.shape[1]]


def modality_position(config: IMGConfig) -> nn.Module:
    if config.positional_encoding == "official":
        return BatchIndexEncoding(config.max_pos_len, config.dim)
    return SinusoidalTimeEncoding(config.max_pos_len, config.dim)


# ---------------------------------------------------------------------------------------------------------------
# Query embedding


class CharacterCNN(nn.Module):
    """Character embeddings, convolutions of widths 1, 2, ... over each word's characters, ReLU, max over the
    characters. Padded characters are embedded like any other id (row 0) and take part in the max (§7.11)."""

    def __init__(self, config: IMGConfig) -> None:
        super().__init__()
        self.table = nn.Embedding(config.char_vocab_size, config.char_dim, padding_idx=0)
        self.dropout = Dropout(config.drop_rate)
        self.convs = nn.ModuleList(
            nn.Conv1d(config.char_dim, channels, kernel_size=width)
            for width, channels in enumerate(config.char_kernel_channels, start=1)
        )

    def forward(self, char_ids: torch.Tensor) -> torch.Tensor:
        widest = len(self.convs)
        if char_ids.shape[2] < widest:  # words shorter than the widest kernel: pad with PAD, as longer words are
            char_ids = F.pad(char_ids, (0, widest - char_ids.shape[2]))  # (the authors' code crashes here)
        batch, words, chars = char_ids.shape
        embedded = self.dropout(self.table(char_ids)).view(batch * words, chars, -1).transpose(1, 2)
        features = torch.cat([F.relu(conv(embedded)).amax(dim=2) for conv in self.convs], dim=1)
        return features.view(batch, words, -1)


class WordVectors(nn.Module):
    """Word lookup in [padding (zeros) ; unknown (learned) ; GloVe (frozen)]: id 0 = pad, 1 = unknown, k+2 = GloVe
    row k."""

    def __init__(self, config: IMGConfig) -> None:
        super().__init__()
        self.register_buffer("padding_vector", torch.zeros(1, config.word_dim))
        self.unknown_vector = nn.Parameter(torch.empty(1, config.word_dim))
        nn.init.xavier_uniform_(self.unknown_vector)
        self.register_buffer("glove_vectors", torch.zeros(config.glove_words, config.word_dim))
        self.dropout = Dropout(config.drop_rate)

    def forward(self, word_ids: torch.Tensor) -> torch.Tensor:
        table = torch.cat([self.padding_vector, self.unknown_vector, self.glove_vectors], dim=0)
        return self.dropout(F.embedding(word_ids, table, padding_idx=0))


class QueryEmbedding(nn.Module):
    """[word vector ; character CNN] projected to the model width."""

    def __init__(self, config: IMGConfig) -> None:
        super().__init__()
        self.words = WordVectors(config)
        self.characters = CharacterCNN(config)
        self.projection = nn.Linear(config.word_dim + config.char_feature_dim, config.dim)

    def forward(self, word_ids: torch.Tensor, char_ids: torch.Tensor) -> torch.Tensor:
        return self.projection(torch.cat([self.words(word_ids), self.characters(char_ids)], dim=2))


# ---------------------------------------------------------------------------------------------------------------
# Text-guided video / audio features


class ContextQueryAttention(nn.Module):
    """VSLNet's context-query attention: trilinear similarity, context-to-query and query-to-context attention,
    and a projection of [C ; A ; C⊙A ; C⊙B] back to the model width."""

    def __init__(self, dim: int, drop_rate: float) -> None:
        super().__init__()
        self.context_weight = nn.Parameter(torch.empty(dim, 1))
        self.query_weight = nn.Parameter(torch.empty(dim, 1))
        self.product_weight = nn.Parameter(torch.empty(1, 1, dim))
        for weight in (self.context_weight, self.query_weight, self.product_weight):
            nn.init.xavier_uniform_(weight)
        self.dropout = Dropout(drop_rate)
        self.projection = nn.Linear(4 * dim, dim)

    def forward(
        self, context: torch.Tensor, query: torch.Tensor, context_mask: torch.Tensor, query_mask: torch.Tensor
    ) -> torch.Tensor:
        c, q = self.dropout(context), self.dropout(query)  # dropout feeds the similarity only
        similarity = (c @ self.context_weight) + (q @ self.query_weight).transpose(1, 2)
        similarity = similarity + (c * self.product_weight) @ q.transpose(1, 2)  # (B, Lc, Lq)
        to_query = torch.softmax(mask_logits(similarity, query_mask.unsqueeze(1)), dim=2).to(context.dtype)
        to_context = torch.softmax(mask_logits(similarity, context_mask.unsqueeze(2)), dim=1).to(context.dtype)
        context_to_query = to_query @ query
        query_to_context = (to_query @ to_context.transpose(1, 2)) @ context
        fused = torch.cat([context, context_to_query, context * context_to_query, context * query_to_context], dim=2)
        return self.projection(fused)


class QueryConcatenation(nn.Module):
    """Appends the pooled query to every step and projects [x ; q̄] back to the model width."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pool = WeightedPool(dim)
        self.projection = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(query, query_mask).unsqueeze(1).expand_as(x)
        return self.projection(torch.cat([x, pooled], dim=2))


class TextGuidedEncoder(nn.Module):
    """One modality (video or audio) and its own copy of the query, up to the text-guided features (§3.2 steps
    1-5). The modality and its query share one encoder (§7.4)."""

    def __init__(self, config: IMGConfig, feature_dim: int) -> None:
        super().__init__()
        if config.query_features == "glove_char":
            self.query_embedding: nn.Module = QueryEmbedding(config)
        else:
            self.query_embedding = FeatureProjection(config.text_feature_dim, config.dim, config.drop_rate)
        self.feature_projection = FeatureProjection(feature_dim, config.dim, config.drop_rate)
        self.encoder = ConvAttentionEncoder(config, modality_position(config), config.encoder_conv_layers)
        self.self_attention = SelfAttentionBlock(config.dim, config.num_heads, config.drop_rate)
        self.query_attention = CrossAttentionBlock(config.dim, config.num_heads, config.drop_rate)
        self.context_query_attention = ContextQueryAttention(config.dim, config.drop_rate)
        self.query_concatenation = QueryConcatenation(config.dim)

    def forward(
        self,
        features: torch.Tensor,
        mask: torch.Tensor,
        query_inputs: tuple[torch.Tensor, ...],
        query_mask: torch.Tensor,
    ) -> torch.Tensor:
        x = self.encoder(self.feature_projection(features), mask)
        query = self.encoder(self.query_embedding(*query_inputs), query_mask)
        x = self.self_attention(x, mask)
        x = self.query_attention(x, query, mask, query_mask)
        x = self.context_query_attention(x, query, mask, query_mask)
        return self.query_concatenation(x, query, query_mask)


# ---------------------------------------------------------------------------------------------------------------
# Audio importance and the three fusion granularities


class AudioImportancePredictor(nn.Module):
    """p = sigmoid(Linear([pool(Â) ; pool(V̂)])): how much the audio helps for this video and query (the paper's
    AIP; its "MLP" is one linear layer, §7.5)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.audio_pool = WeightedPool(dim)
        self.video_pool = WeightedPool(dim)
        self.classifier = nn.Linear(2 * dim, 1)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([self.audio_pool(audio, mask), self.video_pool(video, mask)], dim=1)
        return torch.sigmoid(self.classifier(pooled).float()).squeeze(1)


class ImportanceWeightedSum(nn.Module):
    """(1 − w)·LN(video) + w·LN(audio), with the audio weight w of shape (B, 1, 1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.video_norm = layer_norm(dim)
        self.audio_norm = layer_norm(dim)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, audio_weight: torch.Tensor) -> torch.Tensor:
        return (1 - audio_weight) * self.video_norm(video) + audio_weight * self.audio_norm(audio)


class LocalFusion(nn.Module):
    """Local granularity: depthwise convolutions of widths 1, 3, 5 per stream, concatenated and projected."""

    def __init__(self, config: IMGConfig) -> None:
        super().__init__()

        def multi_width_convs() -> nn.ModuleList:
            return nn.ModuleList(
                nn.Conv1d(config.dim, config.dim, k, padding=k // 2, groups=config.dim) for k in config.local_kernels
            )

        width = len(config.local_kernels) * config.dim
        self.audio_convs = multi_width_convs()
        self.video_convs = multi_width_convs()
        self.audio_projection = FeatureProjection(width, config.dim, config.drop_rate)
        self.video_projection = FeatureProjection(width, config.dim, config.drop_rate)
        self.mix = ImportanceWeightedSum(config.dim)

    @staticmethod
    def _local_features(x: torch.Tensor, convs: nn.ModuleList, projection: nn.Module) -> torch.Tensor:
        channels_first = x.transpose(1, 2)
        return projection(torch.cat([F.relu(conv(channels_first)) for conv in convs], dim=1).transpose(1, 2))

    def forward(self, video: torch.Tensor, audio: torch.Tensor, audio_weight: torch.Tensor) -> torch.Tensor:
        local_video = self._local_features(video, self.video_convs, self.video_projection)
        local_audio = self._local_features(audio, self.audio_convs, self.audio_projection)
        return self.mix(local_video, local_audio, audio_weight)


class SlotAttention(nn.Module):
    """Event slots refined by iterative attention over the sequence, as the authors' variant computes it (§3.2
    step 9): the softmax runs over the input positions, not over the slots (§7.3), and the initial slots are
    mu + sigma·noise with noise as `IMGConfig.slot_noise` says (§7.2)."""

    def __init__(self, config: IMGConfig) -> None:
        super().__init__()
        dim = config.dim
        self.num_slots = config.event_num
        self.iterations = config.slot_iterations
        self.noise = config.slot_noise
        self.scale = dim**-0.5
        self.slot_mean = nn.Parameter(torch.randn(1, 1, dim))
        self.slot_log_std = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.xavier_uniform_(self.slot_log_std)
        self.input_norm = nn.LayerNorm(dim)
        self.slot_norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.update = nn.GRUCell(dim, dim)
        self.refine_norm = nn.LayerNorm(dim)
        self.refine = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))

    def initial_slots(self, batch: int) -> torch.Tensor:
        shape = (batch, self.num_slots, self.slot_mean.shape[-1])
        if self.noise == "always" or (self.noise == "train" and self.training):
            rows = _batch_rows
            drawn = shape if rows is None else (rows.total, *shape[1:])
            noise = torch.randn(drawn, device=self.slot_mean.device, dtype=self.slot_mean.dtype)
            if rows is not None:
                noise = noise[rows.start : rows.start + batch]
            return self.slot_mean + self.slot_log_std.exp() * noise
        return self.slot_mean.expand(shape)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, _, dim = x.shape
        inputs = self.input_norm(x)
        keys, values = self.key(inputs), self.value(inputs)
        slots = self.initial_slots(batch)
        for _ in range(self.iterations):  # a fixed, small number of refinement steps
            queries = self.query(self.slot_norm(slots))
            logits = mask_logits(queries @ keys.transpose(1, 2) * self.scale, mask.unsqueeze(1))
            updates = torch.softmax(logits, dim=-1).to(values.dtype) @ values
            slots = self.update(updates.reshape(-1, dim), slots.reshape(-1, dim)).view(batch, -1, dim)
            slots = slots + self.refine(self.refine_norm(slots))
        return slots


class EventFusion(nn.Module):
    """Event granularity: each stream attends to its own event slots, then the streams are mixed."""

    def __init__(self, config: IMGConfig) -> None:
        super().__init__()
        self.audio_slots = SlotAttention(config)
        self.video_slots = SlotAttention(config)
        self.audio_attention = CrossAttentionBlock(config.dim, config.num_heads, config.drop_rate)
        self.video_attention = CrossAttentionBlock(config.dim, config.num_heads, config.drop_rate)
        self.mix = ImportanceWeightedSum(config.dim)

    def forward(
        self, video: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor, audio_weight: torch.Tensor
    ) -> torch.Tensor:
        audio_slots = self.audio_slots(audio, mask)
        video_slots = self.video_slots(video, mask)
        slot_mask = mask.new_ones(mask.shape[0], audio_slots.shape[1])
        event_audio = self.audio_attention(audio, audio_slots, mask, slot_mask)
        event_video = self.video_attention(video, video_slots, mask, slot_mask)
        return self.mix(event_video, event_audio, audio_weight)


class GlobalFusion(nn.Module):
    """Global granularity: each step gets its stream's pooled summary, [summary ; x] is projected, then mixed."""

    def __init__(self, config: IMGConfig) -> None:
        super().__init__()
        self.audio_pool = WeightedPool(config.dim)
        self.video_pool = WeightedPool(config.dim)
        self.audio_projection = FeatureProjection(2 * config.dim, config.dim, config.drop_rate)
        self.video_projection = FeatureProjection(2 * config.dim, config.dim, config.drop_rate)
        self.mix = ImportanceWeightedSum(config.dim)

    @staticmethod
    def _with_summary(x: torch.Tensor, pool: WeightedPool, mask: torch.Tensor, projection: nn.Module) -> torch.Tensor:
        summary = pool(x, mask).unsqueeze(1).expand_as(x)
        return projection(torch.cat([summary, x], dim=2))

    def forward(
        self, video: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor, audio_weight: torch.Tensor
    ) -> torch.Tensor:
        global_audio = self._with_summary(audio, self.audio_pool, mask, self.audio_projection)
        global_video = self._with_summary(video, self.video_pool, mask, self.video_projection)
        return self.mix(global_video, global_audio, audio_weight)


class MultiGranularityFusion(nn.Module):
    """Bidirectional GRUs over each pair of granularities, a GRU over the three results, and a projection.
    The GRUs run on packed sequences, so their outputs at padded steps are 0."""

    def __init__(self, config: IMGConfig) -> None:
        super().__init__()
        dim = config.dim

        def pair_gru() -> nn.GRU:
            return nn.GRU(2 * dim, dim // 2, config.fusion_gru_layers, batch_first=True, bidirectional=True)

        self.local_event_gru = pair_gru()
        self.event_global_gru = pair_gru()
        self.local_global_gru = pair_gru()
        self.combined_gru = nn.GRU(3 * dim, dim, batch_first=True, bidirectional=True)
        self.projection = FeatureProjection(2 * dim, dim, config.drop_rate)

    @staticmethod
    def _run(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(gru(packed)[0], batch_first=True, total_length=x.shape[1])[0]

    def forward(
        self, local: torch.Tensor, event: torch.Tensor, global_: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        lengths = mask.sum(dim=1).long().cpu()
        local_event = self._run(self.local_event_gru, torch.cat([local, event], dim=2), lengths)
        event_global = self._run(self.event_global_gru, torch.cat([event, global_], dim=2), lengths)
        local_global = self._run(self.local_global_gru, torch.cat([local, global_], dim=2), lengths)
        combined = self._run(self.combined_gru, torch.cat([local_event, event_global, local_global], dim=2), lengths)
        return self.projection(combined)


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
    steps; raw saliency scores (B, Lv), unmasked and without sigmoid; the raw audio importance p (B,)."""

    start_logits_av: torch.Tensor
    end_logits_av: torch.Tensor
    start_logits_v: torch.Tensor
    end_logits_v: torch.Tensor
    start_logits_a: torch.Tensor
    end_logits_a: torch.Tensor
    v_score: torch.Tensor
    a_score: torch.Tensor
    av_score: torch.Tensor
    aip_prob: torch.Tensor


class IMG(nn.Module):
    """The IMG network (img_spec.md §3.2). Inputs: video (B, Lv, Dv) and audio (B, Lv, Da) features of equal
    length with their mask (B, Lv); the query as word_ids (B, Lq) + char_ids (B, Lq, Lc), or as precomputed
    query_features (B, Lq, Dt) when `config.query_features == "precomputed"`, with its mask (B, Lq).
    `p_warm` blends the audio weight from 0.5 (p_warm = 0) to the predicted importance (p_warm = 1, evaluation)."""

    def __init__(self, config: IMGConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or IMGConfig()
        self.video_branch = TextGuidedEncoder(config, config.video_feature_dim)
        self.audio_branch = TextGuidedEncoder(config, config.audio_feature_dim)
        self.audio_importance = AudioImportancePredictor(config.dim)
        self.local_fusion = LocalFusion(config)
        self.event_fusion = EventFusion(config)
        self.global_fusion = GlobalFusion(config)
        self.multi_granularity_fusion = MultiGranularityFusion(config)
        self.fused_span_predictor = SpanPredictor(config)
        self.video_span_predictor = SpanPredictor(config)
        self.audio_span_predictor = SpanPredictor(config)
        self.video_saliency = nn.Linear(config.dim, 1)
        self.audio_saliency = nn.Linear(config.dim, 1)
        self.fused_saliency = nn.Linear(config.dim, 1)
        self._init_weights()

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
        audio_text = self.audio_branch(audio, video_mask, query, query_mask)  # Â

        aip_prob = self.audio_importance(video_text, audio_text, video_mask)
        audio_weight = (0.5 * (1 - p_warm) + p_warm * aip_prob).view(-1, 1, 1)
        local = self.local_fusion(video_text, audio_text, audio_weight)
        event = self.event_fusion(video_text, audio_text, video_mask, audio_weight)
        global_ = self.global_fusion(video_text, audio_text, video_mask, audio_weight)
        fused = self.multi_granularity_fusion(local, event, global_, video_mask)

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
        batch = _batch_rows.total if _batch_rows is not None else video_mask.shape[0]
        if self.config.positional_encoding == "official" and batch > limit:
            raise ValueError(f"the batch-index encoding (§7.1) covers at most {limit} samples per batch")
        if self.config.positional_encoding == "temporal" and query_mask.shape[1] > limit:
            raise ValueError(f"{query_mask.shape[1]} query tokens exceed max_pos_len {limit}")

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
