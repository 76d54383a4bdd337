"""BERT-family text features (transformers AutoModel): the last hidden state of every word piece.

Any local folder or Hugging Face id of an encoder with a fast tokenizer works (default bert-base-uncased,
768-d; sentence-transformers/all-MiniLM-L6-v2 gives 384-d). Queries go in as written; [CLS] and [SEP] are
part of the stored tokens, so a query of L word pieces gives [L + 2, D].
"""

from __future__ import annotations

from typing import Any

import torch

from extract.text.encoder import TokenFeatureEncoder


class BertTextEncoder(TokenFeatureEncoder):
    kind = "bert"
    default_model = "bert-base-uncased"

    def _load(self, source: str, local_only: bool) -> tuple[Any, torch.nn.Module]:
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        return tokenizer, AutoModel.from_pretrained(source, local_files_only=local_only)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, None
