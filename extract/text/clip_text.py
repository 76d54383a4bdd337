"""CLIP text tower (transformers CLIPTextModelWithProjection): per-token features and the pooled embedding.

Per token: `last_hidden_state` after the final layer norm, unprojected, for the valid tokens (start and end
tokens included) -- [L, 512] for ViT-B/32, the per-token text features Moment-DETR-style pipelines (and the
IMG authors' CLIP+SF variant, img_spec.md §2.1) consume. Pooled: `text_embeds`, the end token's state
projected into the joint image-text space (what CLIP compares with image embeddings). At most 77 tokens.
"""

from __future__ import annotations

from typing import Any

import torch

from extract.text.encoder import TokenFeatureEncoder


class ClipTextEncoder(TokenFeatureEncoder):
    kind = "clip-text"
    default_model = "openai/clip-vit-base-patch32"

    def _load(self, source: str, local_only: bool) -> tuple[Any, torch.nn.Module]:
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        return tokenizer, CLIPTextModelWithProjection.from_pretrained(source, local_files_only=local_only)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return output.last_hidden_state, output.text_embeds

    def recipe(self) -> dict[str, Any]:
        return {**super().recipe(), "pooled": "text_embeds", "projection_dim": int(self.model.config.projection_dim)}
