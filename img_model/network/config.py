"""Configurations of the IMG network and of its training objective, with the published recipe as defaults.

`IMGConfig()` is the Charades-STA I3D + PANNs + GloVe model of the paper (img_spec.md §3, 3,774,314 trainable
parameters); `ObjectiveConfig()` is its Charades loss recipe (§4). The other published settings are presets below.
The quirks of the authors' code that change outputs are options with the published behaviour as the default
(§7.1's batch-index encoding), except one: slot noise at evaluation (§7.2) is off by default (`slot_noise =
"train"`: deterministic evaluation); `slot_noise = "always"`, `img-eval --slot-noise always` and `img-train
--selection-noise fresh` reproduce it.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Literal

from extract.core.errors import UsageError

PositionalEncoding = Literal["official", "temporal"]
SlotNoise = Literal["train", "always", "never"]
QueryFeatures = Literal["glove_char", "precomputed"]

# Ablation switches (docs/model.md, "Ablations"). The audio weight of the fusion: "predicted" (the AIP, published);
# a number in [0, 1] (a fixed weight; 0.5 is the paper's "w/o AIP"); or one of Table 1's alternatives, which
# are reconstructions: "add" (V + A), "concat" (a linear map of [V ; A]), "similarity" (from the cosine similarity
# of the pooled streams), "entropy" (from the entropies of the streams' pooling attention).
AUDIO_WEIGHT_MODES = ("predicted", "add", "concat", "similarity", "entropy")
SCALAR_AUDIO_WEIGHTS = ("predicted", "similarity", "entropy")  # and fixed numbers: a weight w of (1 − w)·V + w·A
GRANULARITIES = ("local", "event", "global")

# Every size of the architecture, bounded (inclusive): far above the published settings (dim 128, 8 heads, 128
# steps, 3 slots) and below what no accelerator holds. The input sizes are the data's (feature and text widths,
# vocabularies). The model as a whole is bounded too: MAX_WEIGHTS.
SIZE_BOUNDS: dict[str, tuple[int, int]] = {
    "dim": (2, 8192),
    "num_heads": (1, 256),
    "video_feature_dim": (1, 65536),
    "audio_feature_dim": (1, 65536),
    "max_pos_len": (1, 8192),
    "word_dim": (1, 65536),
    "glove_words": (1, 10_000_000),
    "char_vocab_size": (2, 1_114_112),  # PAD and UNK, up to every Unicode code point
    "char_dim": (1, 4096),
    "text_feature_dim": (1, 65536),
    "encoder_kernel": (1, 255),
    "encoder_conv_layers": (0, 64),
    "predictor_conv_layers": (0, 64),
    "event_num": (1, 256),
    "slot_iterations": (1, 64),
    "fusion_gru_layers": (1, 64),
}
KERNEL_LIST_LENGTH = (1, 16)  # entries of char_kernel_channels and local_kernels
CHAR_CHANNELS = (1, 4096)  # each entry of char_kernel_channels
# Weights (parameters and buffers, GloVe rows included) of the whole model: 4 GB in fp32, to which training adds
# as much for the gradients and twice as much for AdamW's moments. The published model has 4.6 million.
MAX_WEIGHTS = 1_000_000_000
# One activation tensor of a forward pass (an attention map: batch x heads x steps x steps values) at most: 8 GiB
# in fp32. The published setting needs 2 million.
MAX_ACTIVATION = 2**31


def check_whole_number(name: str, value: object, low: int, high: int) -> None:
    """ValueError (one line) unless `value` is an int (not a bool) from low to high."""
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low:,} to {high:,}, not {reprlib.repr(value)}")


def check_number(
    name: str, value: object, low: float, high: float = math.inf, *, above_low: bool = False, below_high: bool = False
) -> None:
    """ValueError (one line) unless `value` is a finite int or float (not a bool) within [low, high] (open ends
    where said)."""
    ok = type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]
    if ok:
        number = float(value)  # type: ignore[arg-type]
        ok = (number > low if above_low else number >= low) and (number < high if below_high else number <= high)
    if not ok:
        lower = f"{'above' if above_low else 'at least'} {low:g}"
        upper = "" if math.isinf(high) else f" and {'below' if below_high else 'at most'} {high:g}"
        raise ValueError(f"{name} must be a finite number {lower}{upper}, not {reprlib.repr(value)}")


@dataclass(frozen=True)
class IMGConfig:
    """Architecture of IMG (img_spec.md §3). Defaults: Charades-STA with I3D video and PANNs audio features."""

    dim: int = 128
    num_heads: int = 8
    drop_rate: float = 0.2
    video_feature_dim: int = 1024
    audio_feature_dim: int = 2048
    max_pos_len: int = 128  # longest video (in feature steps) the learned position tables cover
    # Query input: GloVe words + a character CNN, or precomputed per-token text features (§3.5: CLIP text, LLaMA).
    query_features: QueryFeatures = "glove_char"
    word_dim: int = 300
    glove_words: int = 1298  # rows of the frozen GloVe matrix; set from the vocabulary (§1.3)
    char_vocab_size: int = 36  # including PAD (0) and UNK (1)
    char_dim: int = 50
    char_kernel_channels: tuple[int, ...] = (10, 20, 30, 40)  # output channels of the char convs, kernel 1, 2, ...
    text_feature_dim: int = 512  # only for query_features="precomputed"
    encoder_kernel: int = 7
    encoder_conv_layers: int = 2  # the shared modality/query encoders
    predictor_conv_layers: int = 4  # the encoder inside each span predictor
    local_kernels: tuple[int, ...] = (1, 3, 5)
    event_num: int = 3  # slots of the event-level fusion
    slot_iterations: int = 3
    fusion_gru_layers: int = 3
    # §7.1: "official" adds the encoding of the sample's *batch index* at every step (the published behaviour);
    # "temporal" adds a sinusoidal encoding of the time step / token position instead.
    positional_encoding: PositionalEncoding = "official"
    # §7.2: initial slots = mu + sigma * noise. "train": noise only in training, mu in eval (deterministic);
    # "always": noise in eval too (the authors' code); "never": always mu (the golden vectors).
    slot_noise: SlotNoise = "train"
    # Ablation switches; the defaults are the published model (docs/model.md, "Ablations").
    audio_weight: str | float = "predicted"  # AUDIO_WEIGHT_MODES or a fixed weight in [0, 1]
    granularities: tuple[str, ...] = GRANULARITIES  # any non-empty subset, fused by the GRU stack over those kept
    audio: bool = True  # False: "IMG w/o audio", the visual branch alone (no audio encoder, AIP or fusion)

    def __post_init__(self) -> None:
        """ValueError (one line) for any field no model can have; types too (the values come from TOML files
        and checkpoints)."""
        for name, (low, high) in SIZE_BOUNDS.items():
            check_whole_number(name, getattr(self, name), low, high)
        if self.dim % 2 or self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} must be even and divisible by num_heads {self.num_heads}")
        if self.encoder_kernel % 2 == 0:
            raise ValueError(f"encoder_kernel must be odd (a centred convolution), not {self.encoder_kernel}")
        for name, entry_bounds, odd in (
            ("char_kernel_channels", CHAR_CHANNELS, False),
            ("local_kernels", SIZE_BOUNDS["encoder_kernel"], True),
        ):
            entries = getattr(self, name)
            if type(entries) is not tuple or not KERNEL_LIST_LENGTH[0] <= len(entries) <= KERNEL_LIST_LENGTH[1]:
                raise ValueError(
                    f"{name} must be a list of {KERNEL_LIST_LENGTH[0]} to {KERNEL_LIST_LENGTH[1]} whole numbers, "
                    f"not {reprlib.repr(list(entries) if isinstance(entries, tuple) else entries)}"
                )
            for entry in entries:
                check_whole_number(f"each of {name}", entry, *entry_bounds)
                if odd and entry % 2 == 0:
                    raise ValueError(f"{name} must be odd widths (centred convolutions), not {list(entries)}")
        check_number("drop_rate", self.drop_rate, 0.0, 1.0, below_high=True)
        if self.positional_encoding not in ("official", "temporal"):
            raise ValueError(f"positional_encoding must be 'official' or 'temporal', not {self.positional_encoding!r}")
        if self.slot_noise not in ("train", "always", "never"):
            raise ValueError(f"slot_noise must be 'train', 'always' or 'never', not {self.slot_noise!r}")
        if self.query_features not in ("glove_char", "precomputed"):
            raise ValueError(f"query_features must be 'glove_char' or 'precomputed', not {self.query_features!r}")
        self._check_switches()
        weights = self.weight_count()
        if weights > MAX_WEIGHTS:
            raise ValueError(
                f"this model would hold {weights:,} weights ({weights * 4 / 1e9:,.1f} GB in fp32); the bound is "
                f"{MAX_WEIGHTS:,} (4 GB, and training needs 4 times that): lower dim, max_pos_len or the layer counts"
            )

    def _check_switches(self) -> None:
        """The ablation switches: one-line ValueErrors; granularities are stored in the canonical order and a
        whole-number fixed weight (TOML `audio_weight = 0`) as a float, so equal models have equal configs."""
        weight = self.audio_weight
        if isinstance(weight, str):
            if weight not in AUDIO_WEIGHT_MODES:
                raise ValueError(
                    f"audio_weight must be a number from 0 to 1 or one of {', '.join(map(repr, AUDIO_WEIGHT_MODES))}, "
                    f"not {weight!r}"
                )
        else:
            check_number("audio_weight", weight, 0.0, 1.0)
            object.__setattr__(self, "audio_weight", float(weight))  # type: ignore[arg-type]
        levels = self.granularities
        if (
            type(levels) is not tuple
            or not levels
            or not all(isinstance(level, str) and level in GRANULARITIES for level in levels)
            or len(set(levels)) != len(levels)
        ):
            shown = reprlib.repr(list(levels) if isinstance(levels, tuple) else levels)
            raise ValueError(f"granularities must be a non-empty list of distinct {list(GRANULARITIES)}, not {shown}")
        object.__setattr__(self, "granularities", tuple(level for level in GRANULARITIES if level in levels))
        if type(self.audio) is not bool:
            raise ValueError(f"audio must be true or false, not {reprlib.repr(self.audio)}")
        if not self.audio and (self.audio_weight != "predicted" or self.granularities != GRANULARITIES):
            raise ValueError(
                "audio = false is the visual branch alone (no fusion): leave audio_weight and granularities unset"
            )

    @property
    def predicts_importance(self) -> bool:
        """The model has the audio importance predictor (and so the pseudo-label loss)."""
        return self.audio and self.audio_weight == "predicted"

    def weight_count(self) -> int:
        """The number of parameters and buffers of `IMG(self)` (GloVe rows included), computed from the sizes
        without building the model (img_model/network/model.py's structure, module by module; a test holds them
        equal)."""
        d, steps = self.dim, self.max_pos_len

        def linear(inputs: int, outputs: int) -> int:
            return inputs * outputs + outputs

        attention = 4 * linear(d, d)  # query, key, value, output
        self_attention, cross_attention = attention + 2 * 2 * d, attention + 3 * 2 * d  # and 2 / 3 LayerNorms

        def conv_encoder(layers: int) -> int:  # each layer: LayerNorm, depthwise (no bias), pointwise
            return layers * (2 * d + d * self.encoder_kernel + linear(d, d)) + self_attention

        if self.query_features == "glove_char":
            characters = self.char_vocab_size * self.char_dim + sum(
                self.char_dim * channels * width + channels
                for width, channels in enumerate(self.char_kernel_channels, start=1)
            )
            words = (2 + self.glove_words) * self.word_dim  # padding, unknown, GloVe
            query = words + characters + linear(self.word_dim + self.char_feature_dim, d)
        else:
            query = linear(self.text_feature_dim, d)
        context_query = 3 * d + linear(4 * d, d)
        concatenation = d + linear(2 * d, d)
        branch = query + steps * d + conv_encoder(self.encoder_conv_layers) + self_attention + cross_attention
        branch += context_query + concatenation
        span = steps * d + conv_encoder(self.predictor_conv_layers) + 2 * 2 * d + 2 * (linear(2 * d, d) + linear(d, 1))
        visual = branch + linear(self.video_feature_dim, d) + span + linear(d, 1)  # with its predictor and saliency
        if not self.audio:
            return visual
        audio = branch + linear(self.audio_feature_dim, d) + span + linear(d, 1)
        mix = 2 * 2 * d + (linear(2 * d, d) if self.audio_weight == "concat" else 0)  # two LayerNorms (and the map)
        importance = 2 * d + linear(2 * d, 1) if self.audio_weight == "predicted" else 0
        importance += 2 * d if self.audio_weight == "entropy" else 0  # the two attention pools
        local = 2 * sum(d * width + d for width in self.local_kernels) + 2 * linear(len(self.local_kernels) * d, d)
        slots = 2 * d + 3 * 2 * d + 3 * linear(d, d) + 2 * 3 * (d * d + d) + 2 * linear(d, d)
        event = 2 * slots + 2 * cross_attention
        global_ = 2 * d + 2 * linear(2 * d, d)
        levels = {"local": local, "event": event, "global": global_}

        def gru(inputs: int, hidden: int, layers: int) -> int:  # bidirectional
            first = 3 * hidden * (inputs + hidden) + 6 * hidden
            later = 3 * hidden * (2 * hidden + hidden) + 6 * hidden
            return 2 * (first + (layers - 1) * later)

        kept = len(self.granularities)
        pairs = kept * (kept - 1) // 2
        fusion = pairs * gru(2 * d, d // 2, self.fusion_gru_layers) + gru(max(pairs, 1) * d, d, 1) + linear(2 * d, d)
        fused = sum(levels[level] + mix for level in self.granularities) + fusion + span + linear(d, 1)
        return visual + audio + importance + fused

    def check_batch_size(self, batch_size: int, name: str) -> None:
        """UsageError (one line, before anything runs) for a batch this model cannot take: the official position
        encoding indexes its table by the sample's place in the batch (§7.1), so a batch holds at most max_pos_len
        samples; and the largest activation of a forward pass (an attention map over max_pos_len steps, or the
        widest feature map) stays within MAX_ACTIVATION values."""
        if self.positional_encoding == "official" and batch_size > self.max_pos_len:
            raise UsageError(
                f"{name} {batch_size} exceeds max_pos_len {self.max_pos_len}: the official batch-index position "
                f"encoding (§7.1) covers at most {self.max_pos_len} samples per batch; use a batch of "
                f'{self.max_pos_len} or fewer, or [model] positional_encoding = "temporal"'
            )
        steps = self.max_pos_len
        per_sample = max(self.num_heads * steps * steps, steps * self.dim * max(4, len(self.local_kernels)))
        if batch_size * per_sample > MAX_ACTIVATION:
            raise UsageError(
                f"{name} {batch_size} with max_pos_len {steps}, dim {self.dim} and {self.num_heads} heads makes "
                f"activations of {batch_size * per_sample:,} values ({batch_size * per_sample * 4 / 2**30:,.0f} GiB "
                f"in fp32) each; the bound is {MAX_ACTIVATION:,} (8 GiB): use a smaller {name} or max_pos_len"
            )

    @property
    def char_feature_dim(self) -> int:
        return sum(self.char_kernel_channels)


# ActivityNet Captions: VGGish audio (128-d), 55 characters; char_dim stays 50 although the help says 100 (§7.24).
ACTIVITYNET = IMGConfig(audio_feature_dim=128, char_vocab_size=55)
# The VLM variants (§3.5): SlowFast+CLIP video (2816-d) with CLIP text, and InternVideo2 with LLaMA-2 text.
CHARADES_CLIP_SF = IMGConfig(video_feature_dim=2816, query_features="precomputed", text_feature_dim=512)
CHARADES_IV2 = IMGConfig(video_feature_dim=768, query_features="precomputed", text_feature_dim=4096, max_pos_len=64)


@dataclass(frozen=True)
class ObjectiveConfig:
    """Weights of the training objective (img_spec.md §4). Defaults: Charades-STA / Charades-AudioMatter."""

    saliency_weight: float = 0.5  # λ3
    distill_weight: float = 10.0  # λ2
    importance_weight: float = 5.0  # λ1, the pseudo-label BCE of the audio importance predictor
    saliency_margin: float = 0.2
    distill_temperature: float = 2.0  # τ
    pseudo_label_threshold: float = 0.2  # ε (ε_max = 1 − ε)
    pseudo_label_temperature: float = 3.0  # γ
    importance_warmup_epochs: int = 10  # p_warm = exp_up(epoch, 10)
    distill_warmup_epochs: int = 20  # the KD weight's warm-up, exp_up(epoch, 20)

    def __post_init__(self) -> None:
        for name in ("saliency_weight", "distill_weight", "importance_weight", "saliency_margin"):
            check_number(name, getattr(self, name), 0.0)
        for name in ("distill_temperature", "pseudo_label_temperature"):
            check_number(name, getattr(self, name), 0.0, above_low=True)
        # ε keeps y > ε and makes y > 1 − ε a 1: it must be below 1/2 for the two to differ
        check_number("pseudo_label_threshold", self.pseudo_label_threshold, 0.0, 0.5, below_high=True)
        for name in ("importance_warmup_epochs", "distill_warmup_epochs"):
            check_whole_number(name, getattr(self, name), 0, 1_000_000)


ACTIVITYNET_OBJECTIVE = ObjectiveConfig(pseudo_label_threshold=0.1, pseudo_label_temperature=2.0)


def exp_up(epoch: float, warmup_epochs: int) -> float:
    """The authors' ExpUp warm-up: 1 − cos(π/2 · e/N) for e ≤ N, then 1 (epoch counted from 0)."""
    if epoch >= warmup_epochs:
        return 1.0
    return 1.0 - math.cos(math.pi / 2 * epoch / warmup_epochs)


__all__ = [
    "ACTIVITYNET",
    "ACTIVITYNET_OBJECTIVE",
    "CHARADES_CLIP_SF",
    "CHARADES_IV2",
    "IMGConfig",
    "ObjectiveConfig",
    "exp_up",
]
