"""The text side of a dataset: per-query model inputs from a text store (img-extract text).

GloVe stores give word ids and character ids per query (small: read once into memory for the queries in use)
and the vocabulary the model's embedding rows follow; BERT / CLIP-text stores give per-token features, read
lazily per process like the feature stores (handles are never shared across fork).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from extract.text.store import TextStore
from extract.text.vocabulary import Vocabulary
from img_model.data.worker_handles import PerProcess


@dataclass(frozen=True)
class QueryVocabulary:
    """The word and character vocabularies of a GloVe text store, the GloVe rows, and their hash."""

    words: tuple[str, ...]  # <PAD>, <UNK>, then the GloVe words: row k of `vectors` is word id k + 2
    chars: tuple[str, ...]
    vectors: np.ndarray  # [len(words) - 2, word_dim] float32

    @property
    def sha256(self) -> str:
        return Vocabulary(self.words, self.chars).sha256()

    def as_checkpoint(self) -> dict[str, Any]:
        """What a checkpoint stores (the vectors are already in the model's weights)."""
        return {"words": list(self.words), "chars": list(self.chars), "sha256": self.sha256}


@dataclass(frozen=True)
class GloveInputs:
    word_ids: np.ndarray  # [L] int64
    char_ids: list[np.ndarray]  # L arrays of character ids


class QueryTexts:
    """Model inputs per qid from one text store, and what the store says about how they were made."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        with TextStore(self.path) as store:
            self.kind: str = store.kind
            self.recipe: dict[str, Any] = dict(store.provenance.get("recipe", {}))
            self.sentences: dict[str, str] = {record.qid: record.sentence for record in store.records()}
            self.vocabulary: QueryVocabulary | None = None
            self.feature_dim = 0
            if self.kind == "glove":
                words, vectors, chars = store.vocabulary()
                self.vocabulary = QueryVocabulary(tuple(words), tuple(chars), np.asarray(vectors, np.float32))
            elif len(store):
                self.feature_dim = int(store.features(store.qids()[0]).shape[1])
        self._glove: dict[str, GloveInputs] = {}
        self._store = PerProcess(TextStore, [self.path])

    @property
    def precomputed(self) -> bool:
        return self.kind != "glove"

    def provenance(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "recipe": self.recipe}

    def load(self, qids: Iterable[str]) -> None:
        """Read the word and character ids of these queries into memory (GloVe stores; no-op otherwise).

        The id arrays of the whole store are read at once (the text store's documented layout: /queries/qid,
        /queries/n_tokens, /tokens/word_ids, /tokens/n_chars, /chars/char_ids) and cut per query in memory:
        a second for ActivityNet, where reading query by query takes minutes."""
        if self.precomputed:
            return
        wanted = [qid for qid in qids if qid not in self._glove]
        if not wanted:
            return
        with h5py.File(self.path, "r", locking=False) as f:
            rows = {qid: row for row, qid in enumerate(f["queries/qid"].asstr()[()].tolist())}
            token_offsets = np.concatenate([[0], np.cumsum(f["queries/n_tokens"][()], dtype=np.int64)])
            word_ids = f["tokens/word_ids"][()].astype(np.int64)
            char_offsets = np.concatenate([[0], np.cumsum(f["tokens/n_chars"][()], dtype=np.int64)])
            char_ids = f["chars/char_ids"][()].astype(np.int64)
        for qid in wanted:
            first, last = token_offsets[rows[qid]], token_offsets[rows[qid] + 1]
            chars = [char_ids[char_offsets[t] : char_offsets[t + 1]] for t in range(first, last)]
            self._glove[qid] = GloveInputs(word_ids[first:last], chars)

    def glove(self, qid: str) -> GloveInputs:
        return self._glove[qid]

    def features(self, qid: str) -> np.ndarray:
        """[L, D] float32 per-token features (BERT / CLIP-text stores), read through this process's handle."""
        return self._store.get().features(qid).astype(np.float32, copy=False)

    def close(self) -> None:
        self._store.close()
