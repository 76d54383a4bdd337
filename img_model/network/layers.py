"""The building blocks of IMG (img_spec.md §3): masking, batch-row bookkeeping, projections and pooling, attention
blocks and the convolution + attention encoders, position encodings, the query embedding (GloVe words + a character
CNN, or precomputed token features) and the text-guided modality encoder. img_model/network/model.py puts them
together; mixed precision is described there.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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


def current_batch_rows() -> BatchRows | None:
    """The rows the forward pass running now computes (batch_rows), None for a whole batch."""
    return _batch_rows


def _row_offset() -> int:
    return _batch_rows.start if _batch_rows is not None else 0


def _whole_batch_like(x: torch.Tensor, total: int) -> torch.Tensor:
    """An uninitialised tensor of x's shape with `total` rows, laid out in memory as x is: the order in which a
    random fill visits the elements follows the layout."""
    order = sorted(range(x.dim()), key=x.stride, reverse=True)
    shape = [total if dim == 0 else x.shape[dim] for dim in order]
    return x.new_empty(shape).permute(*sorted(range(x.dim()), key=order.__getitem__))


def _scaled_dropout_mask(buffer: torch.Tensor, p: float) -> torch.Tensor:
    """The scaled dropout mask (0 or 1/(1 − p)) for a tensor laid out as `buffer`, written into `buffer`.

    On the CPU in float32/float64 the mask is `uniform >= p`: torch's CPU `bernoulli_` (what F.dropout draws with)
    is the slower kernel (measured 1.15x on this project's CPUs), and the mask keeps a value with the same
    probability 1 − p. It draws a different random stream than F.dropout, so a training run is not bit-identical
    to one made before this change (docs/training.md, "Reproducibility"). Elsewhere (CUDA's fused dropout,
    half precision) F.dropout's own mask, drawn from ones."""
    if buffer.device.type == "cpu" and buffer.dtype in (torch.float32, torch.float64):
        return buffer.uniform_().ge_(p).div_(1 - p)
    return F.dropout(buffer.fill_(1), p, training=True)


class Dropout(nn.Dropout):
    """nn.Dropout with the mask of `_scaled_dropout_mask`; inside `batch_rows`, these rows of the mask drawn for
    the whole batch (the same draw, in the same memory order, as one process makes for the whole batch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0 < self.p < 1:
            return super().forward(x)
        rows = _batch_rows
        if rows is None:
            return x * _scaled_dropout_mask(torch.empty_like(x), self.p)
        scaled_mask = _scaled_dropout_mask(_whole_batch_like(x, rows.total), self.p)
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

    def attention(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The pooling weights (B, L): a distribution over the valid steps."""
        return torch.softmax(mask_logits((x @ self.weight).squeeze(-1), mask), dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bl,bld->bd", self.attention(x, mask).to(x.dtype), x)


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
