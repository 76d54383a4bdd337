"""The audio importance predictor and the three fusion granularities of IMG (img_spec.md §3.3, §3.4): local
(convolutions), event (slot attention) and global (pooling), mixed by the predicted importance, and their
multi-granularity fusion by GRUs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from img_model.network.config import IMGConfig
from img_model.network.layers import (
    CrossAttentionBlock,
    FeatureProjection,
    WeightedPool,
    current_batch_rows,
    layer_norm,
    mask_logits,
)

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


class SimilarityAudioWeight(nn.Module):
    """Table 1's "cosine-Sim weight" (a reconstruction, docs/model.md): w = (1 + cos(mean(V̂), mean(Â))) / 2 over
    the valid steps, per query: the more the text-guided audio agrees with the video, the more it counts. No
    weights of its own."""

    def forward(self, video: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = (mask / mask.sum(dim=1, keepdim=True).clamp(min=1)).unsqueeze(2)
        pooled_video, pooled_audio = (video.float() * weights).sum(dim=1), (audio.float() * weights).sum(dim=1)
        return (1 + F.cosine_similarity(pooled_video, pooled_audio, dim=1)) / 2


class EntropyAudioWeight(nn.Module):
    """Table 1's "attention-entropy weight" (a reconstruction, docs/model.md): each stream's attention pooling over
    time has an entropy H, normalised by log(steps) to [0, 1]; the more focused stream counts more:
    w = exp(−H_a) / (exp(−H_a) + exp(−H_v)) = sigmoid(H_v − H_a)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.audio_pool = WeightedPool(dim)
        self.video_pool = WeightedPool(dim)

    @staticmethod
    def _entropy(attention: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        steps = mask.sum(dim=1)
        entropy = -(attention * torch.log(attention.clamp(min=1e-12)) * mask).sum(dim=1)
        return torch.where(steps > 1, entropy / torch.log(steps.clamp(min=2)), torch.zeros_like(entropy))

    def forward(self, video: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.float()
        audio_entropy = self._entropy(self.audio_pool.attention(audio, mask), mask)
        video_entropy = self._entropy(self.video_pool.attention(video, mask), mask)
        return torch.sigmoid(video_entropy - audio_entropy)


class ImportanceWeightedSum(nn.Module):
    """(1 − w)·LN(video) + w·LN(audio), with the audio weight w of shape (B, 1, 1); with no weight (None),
    LN(video) + LN(audio) (Table 1's "add"); with `concat`, Linear([LN(video) ; LN(audio)]) (Table 1's "concat")."""

    def __init__(self, dim: int, concat: bool = False) -> None:
        super().__init__()
        self.video_norm = layer_norm(dim)
        self.audio_norm = layer_norm(dim)
        if concat:
            self.projection = nn.Linear(2 * dim, dim)

    def forward(self, video: torch.Tensor, audio: torch.Tensor, audio_weight: torch.Tensor | None) -> torch.Tensor:
        if hasattr(self, "projection"):
            return self.projection(torch.cat([self.video_norm(video), self.audio_norm(audio)], dim=2))
        if audio_weight is None:
            return self.video_norm(video) + self.audio_norm(audio)
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
        self.mix = ImportanceWeightedSum(config.dim, config.audio_weight == "concat")

    @staticmethod
    def _local_features(x: torch.Tensor, convs: nn.ModuleList, projection: nn.Module) -> torch.Tensor:
        channels_first = x.transpose(1, 2)
        return projection(torch.cat([F.relu(conv(channels_first)) for conv in convs], dim=1).transpose(1, 2))

    def forward(self, video: torch.Tensor, audio: torch.Tensor, audio_weight: torch.Tensor | None) -> torch.Tensor:
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
            rows = current_batch_rows()
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
        self.mix = ImportanceWeightedSum(config.dim, config.audio_weight == "concat")

    def forward(
        self, video: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor, audio_weight: torch.Tensor | None
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
        self.mix = ImportanceWeightedSum(config.dim, config.audio_weight == "concat")

    @staticmethod
    def _with_summary(x: torch.Tensor, pool: WeightedPool, mask: torch.Tensor, projection: nn.Module) -> torch.Tensor:
        summary = pool(x, mask).unsqueeze(1).expand_as(x)
        return projection(torch.cat([summary, x], dim=2))

    def forward(
        self, video: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor, audio_weight: torch.Tensor | None
    ) -> torch.Tensor:
        global_audio = self._with_summary(audio, self.audio_pool, mask, self.audio_projection)
        global_video = self._with_summary(video, self.video_pool, mask, self.video_projection)
        return self.mix(global_video, global_audio, audio_weight)


class MultiGranularityFusion(nn.Module):
    """Bidirectional GRUs over each pair of granularities, a GRU over the pairs' results, and a projection.
    The GRUs compute what they compute on packed sequences (the authors' code packs them): a row's outputs at
    its valid steps depend on its valid steps only, and its outputs at padded steps are 0 (`_run`).

    With fewer granularities (`IMGConfig.granularities`, Tables 2 and 9) the same stack runs over the levels kept:
    a pair GRU for each pair of kept levels, the combined GRU over their outputs; a single level goes into the
    combined GRU directly (docs/model.md, "Ablations")."""

    PAIRS = (("local", "event"), ("event", "global"), ("local", "global"))  # the authors' order (rnn1, rnn2, rnn3)

    def __init__(self, config: IMGConfig) -> None:
        super().__init__()
        dim = config.dim
        self.pairs = [pair for pair in self.PAIRS if set(pair) <= set(config.granularities)]
        for first, second in self.pairs:
            gru = nn.GRU(2 * dim, dim // 2, config.fusion_gru_layers, batch_first=True, bidirectional=True)
            self.add_module(f"{first}_{second}_gru", gru)
        self.combined_gru = nn.GRU(max(len(self.pairs), 1) * dim, dim, batch_first=True, bidirectional=True)
        self.projection = FeatureProjection(2 * dim, dim, config.drop_rate)

    @staticmethod
    def _run(gru: nn.GRU, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`gru` over each row's first `lengths` steps, 0 at the steps after them.

        On the CPU the GRU runs on the padded batch instead of a packed one: a padded GRU projects the inputs of
        all steps in one matrix product and steps every row together, where a packed one projects step by step
        over a shrinking batch and sorts and unsorts the rows (1.1-1.2x on the fusion GRUs, forward + backward).
        Padding changes nothing a valid step sees: forward in time, a row's padded steps come after its valid
        ones; backward in time, each layer runs the reverse direction's weights over each row reversed within
        its own length (`_reversed_rows`), so its valid steps again come first. The results are the packed
        GRU's up to float rounding (tests/test_img_cpu_step.py)."""
        steps = x.shape[1]
        if bool((lengths == steps).all()):  # nothing padded: the padded GRU is the packed one
            return gru(x)[0]
        if x.device.type != "cpu" or gru.dropout:  # (the fusion GRUs have no dropout between layers)
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            return pad_packed_sequence(gru(packed)[0], batch_first=True, total_length=steps)[0]
        valid = torch.arange(steps) < lengths.unsqueeze(1)
        order = _reversed_rows(lengths, steps)
        initial = x.new_zeros(1, x.shape[0], gru.hidden_size)
        forward, backward = x, _take_steps(x, order)  # each row in time order / reversed within its length
        weights = gru._flat_weights  # per layer: 4 tensors (w_ih, w_hh, b_ih, b_hh) forward, then 4 reverse
        per_direction = len(weights) // (2 * gru.num_layers)
        for layer in range(gru.num_layers):
            first = 2 * per_direction * layer
            forward_weights = weights[first : first + per_direction]
            reverse_weights = weights[first + per_direction : first + 2 * per_direction]
            ahead = torch._VF.gru(forward, initial, forward_weights, gru.bias, 1, 0.0, gru.training, False, True)[0]
            behind = torch._VF.gru(backward, initial, reverse_weights, gru.bias, 1, 0.0, gru.training, False, True)[0]
            forward = torch.cat([ahead, _take_steps(behind, order)], dim=2)
            if layer + 1 < gru.num_layers:
                backward = torch.cat([_take_steps(ahead, order), behind], dim=2)
        return forward.masked_fill(~valid.unsqueeze(2), 0)

    def forward(self, levels: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """`levels`: the fused features (B, Lv, d) of each kept granularity, by name."""
        lengths = mask.sum(dim=1).long().cpu()
        stage = [
            self._run(getattr(self, f"{a}_{b}_gru"), torch.cat([levels[a], levels[b]], dim=2), lengths)
            for a, b in self.pairs
        ] or list(levels.values())
        return self.projection(self._run(self.combined_gru, torch.cat(stage, dim=2), lengths))


def _reversed_rows(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """Flat indices into (B·steps) rows that reverse each row of a batch within its length: step t of row b is
    step lengths[b] − 1 − t for t < lengths[b], and stays where it is after. The permutation is its own inverse."""
    positions = torch.arange(steps)
    within = positions < lengths.unsqueeze(1)
    taken = torch.where(within, lengths.unsqueeze(1) - 1 - positions, positions)
    return (taken + torch.arange(len(lengths)).unsqueeze(1) * steps).reshape(-1)


def _take_steps(x: torch.Tensor, flat_order: torch.Tensor) -> torch.Tensor:
    """x (B, L, D) with its steps rearranged by `_reversed_rows`."""
    batch, steps, _ = x.shape
    return x.reshape(batch * steps, -1).index_select(0, flat_order.to(x.device)).view(batch, steps, -1)
