"""Per-token text features from a transformers model: tokenise, batch by length, run, unpad.

BERT-family and CLIP text towers share this loop; each subclass says how its model is loaded and what it
returns (bert.py, clip_text.py). Queries longer than the maximum length are cut there, with the special
tokens kept, and flagged `truncated` (also counted in the run summary).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extract.core.download import sha256_file
from extract.core.errors import MissingWeightsError, ModelUnavailableError, UsageError
from extract.models.clip_vision import loads_locally, resolve_model_source, weights_file

log = logging.getLogger(f"img_vmr.{__name__}")


@dataclass
class EncodedQueries:
    tokens: list[list[str]]
    token_ids: list[np.ndarray]  # [L] int32 per query
    features: list[np.ndarray]  # [L, D] float32 per query
    pooled: np.ndarray | None  # [N, P] float32
    truncated: list[bool]


class TokenFeatureEncoder:
    """Shared batching; subclasses implement _load (tokenizer, model) and _forward."""

    kind = ""
    default_model = ""

    def __init__(
        self,
        model: str | None = None,
        device: torch.device | str = "cpu",
        batch_size: int = 64,
        max_length: int | None = None,
        weights_dir: Path | None = None,
    ) -> None:
        self.model_name = model or self.default_model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.source = resolve_model_source(self.model_name, weights_dir)
        local = loads_locally(self.source, self._not_available)
        try:
            self.tokenizer, self.model = self._load(self.source, local)
        except OSError:
            raise self._not_available(None) from None
        self.model = self.model.eval().to(self.device)
        limit = int(self.model.config.max_position_embeddings)
        if max_length is not None and max_length > limit:
            raise UsageError(f"--max-length {max_length} exceeds the {limit} positions of {self.model_name}")
        self.max_length = max_length or min(limit, int(self.tokenizer.model_max_length))
        weights = weights_file(self.source)
        self.weights_file = weights.name if weights else None
        self.weights_sha256 = sha256_file(weights) if weights else None

    def _not_available(self, reason: str | None) -> MissingWeightsError:
        why = f" ({reason})" if reason else ""
        name = self.model_name.rsplit("/", 1)[-1]
        return ModelUnavailableError(
            f"{self.kind} model {self.model_name!r} is not available offline{why}: download "
            f"https://huggingface.co/{self.model_name} into DIR/{name} and pass --weights-dir DIR (or --embed "
            f"{self.kind}:DIR/{name})"
        )

    def _load(self, source: str, local_only: bool) -> tuple[Any, torch.nn.Module]:
        """The tokenizer and model of `source`; `local_only`: from its folder or the hub cache, asking no server."""
        raise NotImplementedError

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(last hidden state [B, L, D], pooled [B, P] or None)."""
        raise NotImplementedError

    def recipe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model_name,
            "model_class": type(self.model).__name__,
            "weights_file": self.weights_file,
            "weights_sha256": self.weights_sha256,
            "tokenizer": type(self.tokenizer).__name__,
            "input": "sentence.strip(), as written (the model's tokenizer normalises case)",
            "max_length": self.max_length,
            "hidden_size": int(self.model.config.hidden_size),
        }

    def encode(self, sentences: Sequence[str]) -> EncodedQueries:
        """Features of every sentence, batched by length (results do not depend on the batching)."""
        ids = self.tokenizer(list(sentences), truncation=True, max_length=self.max_length)["input_ids"]
        truncated = [
            len(row) == self.max_length
            and len(self.tokenizer(sentence, truncation=False, verbose=False)["input_ids"]) > self.max_length
            for row, sentence in zip(ids, sentences, strict=True)
        ]
        features: list[np.ndarray] = [np.empty(0)] * len(ids)
        pooled_rows: list[np.ndarray | None] = [None] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        pad = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), self.batch_size):
            chosen = order[start : start + self.batch_size]
            length = len(ids[chosen[0]])
            input_ids = torch.full((len(chosen), length), pad, dtype=torch.long)
            mask = torch.zeros((len(chosen), length), dtype=torch.long)
            for row, i in enumerate(chosen):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            with torch.inference_mode():
                hidden, pooled = self._forward(input_ids.to(self.device), mask.to(self.device))
            hidden = hidden.float().cpu().numpy()
            pooled = None if pooled is None else pooled.float().cpu().numpy()
            for row, i in enumerate(chosen):
                features[i] = hidden[row, : len(ids[i])].copy()
                pooled_rows[i] = None if pooled is None else pooled[row]
        if any(truncated):
            log.warning(
                "%d queries longer than %d tokens were cut to their first %d",
                sum(truncated),
                self.max_length,
                self.max_length,
            )
        return EncodedQueries(
            tokens=[self.tokenizer.convert_ids_to_tokens(row) for row in ids],
            token_ids=[np.asarray(row, np.int32) for row in ids],
            features=features,
            pooled=None if not ids or pooled_rows[0] is None else np.stack(pooled_rows),  # type: ignore[arg-type]
            truncated=truncated,
        )
