"""Configurations of the IMG network and of its training objective, with the published recipe as defaults.

`IMGConfig()` is the Charades-STA I3D + PANNs + GloVe model of the paper (img_spec.md §3, 3,774,314 trainable
parameters); `ObjectiveConfig()` is its Charades loss recipe (§4). The other published settings are presets below.
Every quirk of the authors' code that changes outputs is the default here and has a named fix (§7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from extract.core.errors import UsageError

PositionalEncoding = Literal["official", "temporal"]
SlotNoise = Literal["train", "always", "never"]
QueryFeatures = Literal["glove_char", "precomputed"]


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

    def __post_init__(self) -> None:
        if self.dim % self.num_heads or self.dim % 2:
            raise ValueError(f"dim {self.dim} must be even and divisible by num_heads {self.num_heads}")
        if self.positional_encoding not in ("official", "temporal"):
            raise ValueError(f"positional_encoding must be 'official' or 'temporal', not {self.positional_encoding!r}")
        if self.slot_noise not in ("train", "always", "never"):
            raise ValueError(f"slot_noise must be 'train', 'always' or 'never', not {self.slot_noise!r}")
        if self.query_features not in ("glove_char", "precomputed"):
            raise ValueError(f"query_features must be 'glove_char' or 'precomputed', not {self.query_features!r}")

    def check_batch_size(self, batch_size: int, name: str) -> None:
        """The official position encoding indexes its table by the sample's place in the batch (§7.1): a batch may
        hold at most max_pos_len samples (UsageError, one line, before anything runs)."""
        if self.positional_encoding == "official" and batch_size > self.max_pos_len:
            raise UsageError(
                f"{name} {batch_size} exceeds max_pos_len {self.max_pos_len}: the official batch-index position "
                f"encoding (§7.1) covers at most {self.max_pos_len} samples per batch; use a batch of "
                f'{self.max_pos_len} or fewer, or [model] positional_encoding = "temporal"'
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
