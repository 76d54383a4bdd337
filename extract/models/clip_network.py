"""CLIP's ViT image tower in plain torch: pixels [B, 3, S, S] -> projected image embeddings [B, projection_dim].

The same computation as transformers' CLIPVisionModelWithProjection (`image_embeds`), built from a Hugging Face
model folder's config.json and holding its checkpoint's tensors under their own names (`vision_model.*`,
`visual_projection.*`), so a saved folder loads without transformers and without renaming a key; the submodule
names below are therefore the checkpoint's, typo included (`pre_layrnorm`). Importing transformers costs seconds of
start-up (it pulls in torch's compiler stack); this module needs torch alone. tests/test_clip.py compares the
two on the same weights.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from extract.core.errors import MissingWeightsError
from extract.models.weights import build_loaded, read_weights_file

# The checkpoint's parts that belong to the image tower; a full CLIPModel file also holds the text tower
# (`text_model.*`, `text_projection.*`) and `logit_scale`, which this network does not use.
VISION_PREFIXES = ("vision_model.", "visual_projection.")
# Older transformers versions saved the position indices (an arange the network makes itself) as a tensor.
SAVED_POSITION_IDS = "vision_model.embeddings.position_ids"


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "quick_gelu": quick_gelu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


@dataclasses.dataclass(frozen=True)
class ClipVisionConfig:
    """The image tower's shape; defaults are transformers' CLIPVisionConfig defaults (ViT-B/32)."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @classmethod
    def from_file(cls, path: Path) -> ClipVisionConfig:
        """A folder's config.json: a CLIPVisionModel config, or a full CLIPModel config (its `vision_config`, as
        transformers reads it, and its projection_dim). Keys this network has no use for are ignored."""
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MissingWeightsError(f"{path} is not a readable JSON model config: {exc}") from None
        if isinstance(config, dict) and config.get("model_type") == "clip":
            # CLIPModel sizes visual_projection by its own projection_dim (transformers reads the vision
            # config's copy, which agrees in every published checkpoint and fails to load where it does not).
            projection = {"projection_dim": config["projection_dim"]} if "projection_dim" in config else {}
            config = {**(config.get("vision_config") or {}), **projection}
        if not isinstance(config, dict):
            raise MissingWeightsError(f"{path} holds no CLIP vision config; pass a CLIP model folder")
        fields = {field.name for field in dataclasses.fields(cls)}
        made = cls(**{key: value for key, value in config.items() if key in fields})
        if made.hidden_act not in ACTIVATIONS:
            raise MissingWeightsError(
                f"{path}: hidden_act {made.hidden_act!r} is not one this CLIP supports ({', '.join(ACTIVATIONS)})"
            )
        return made

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


class PositionEmbedding(nn.Module):
    """One learned vector per token position (an nn.Embedding's `weight`, looked up in order). Not nn.Embedding
    itself: its random initialisation on the meta device goes through torch._refs, whose import of torch._dynamo
    costs about 1.7 s of start-up."""

    def __init__(self, positions: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(positions, width))


class ClipVisionEmbeddings(nn.Module):
    """Non-overlapping patches embedded by a bias-free conv, a learned class token in front, learned positions."""

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, config.patch_size, stride=config.patch_size, bias=False
        )
        self.position_embedding = PositionEmbedding(config.num_positions, config.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding.weight


class ClipAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v/out projections."""

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        width = config.hidden_size
        self.heads = config.num_attention_heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, T, W] -> [B, heads, T, W / heads]
            return t.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)

        mixed = F.scaled_dot_product_attention(split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)))
        return self.out_proj(mixed.transpose(1, 2).reshape(batch, tokens, width))


class ClipMlp(nn.Module):
    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.activation = ACTIVATIONS[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class ClipEncoderLayer(nn.Module):
    """Pre-LN transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = ClipAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ClipMlp(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipEncoder(nn.Module):
    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ClipEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClipVisionTransformer(nn.Module):
    """Embeddings, a layer norm, the encoder; the class token's final state, layer-normed, is the pooled output."""

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.embeddings = ClipVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = ClipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        states = self.encoder(self.pre_layrnorm(self.embeddings(pixels)))
        return self.post_layernorm(states[:, 0])


class ClipImageEncoder(nn.Module):
    """The image tower and its bias-free projection into the joint image-text space."""

    def __init__(self, config: ClipVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.vision_model = ClipVisionTransformer(config)
        self.visual_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision_model(pixels))


def vision_tensors(state_dict: object, source: str) -> Mapping[str, Any]:
    """The image tower's tensors of a CLIP checkpoint (a full CLIPModel's text tower left out)."""
    if not isinstance(state_dict, Mapping):
        raise MissingWeightsError(f"{source} holds a {type(state_dict).__name__}, not a CLIP state dict")
    return {
        key: value for key, value in state_dict.items() if key.startswith(VISION_PREFIXES) and key != SAVED_POSITION_IDS
    }


def read_checkpoint(path: Path) -> object:
    """model.safetensors (safetensors.torch.load_file) or pytorch_model.bin (read_weights_file: weights only,
    memory-mapped)."""
    if path.suffix != ".safetensors":
        return read_weights_file(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError) as exc:
        raise MissingWeightsError(f"{path} is not a readable safetensors file (truncated or corrupt?): {exc}") from None


def load_clip_image_encoder(config_file: Path, weights_file: Path) -> ClipImageEncoder:
    """A Hugging Face CLIP folder's config.json and checkpoint -> ClipImageEncoder in eval mode, its weights the
    file's tensors (built on the meta device, nothing initialised); a missing, unexpected or mis-shaped vision key
    is one MissingWeightsError naming the file."""
    config = ClipVisionConfig.from_file(config_file)
    tensors = vision_tensors(read_checkpoint(weights_file), str(weights_file))
    model = build_loaded(lambda: ClipImageEncoder(config), tensors, source=str(weights_file))
    assert isinstance(model, ClipImageEncoder)
    return model
