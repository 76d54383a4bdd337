"""An existing GloVe vocabulary to encode new queries with (`img-extract text --vocabulary-from SOURCE`).

A model's word ids point at rows of its embedding: queries it has never seen (another dataset, your own
sentences) must be encoded with *its* vocabulary, not one built from the new queries, or img-eval refuses the
text store (or worse, the ids would name other words). SOURCE is either

- a GloVe text store (`img-extract text --embed glove:...`): its words, characters, vectors and recipe, or
- an img_model checkpoint (`img-train` RUN/best.pt, or one converted with `--text`): its vocabulary, the GloVe
  rows held in its weights, and the text recipe it records, read by img_model (img_model/checkpoint.py
  `checkpoint_vocabulary`; the text package reads no checkpoints: the img-extract command passes the reader).

The new store copies the source's recipe unchanged (it describes how words become ids: tokeniser, vocabulary,
GloVe file), so img-eval compares it equal to the checkpoint's; where the vocabulary came from is recorded
beside the recipe in the provenance (`vocabulary_from`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from extract.core.errors import UsageError
from extract.text.store import TEXT_STORE_FORMAT, TextStore
from extract.text.tokenize import DEFAULT_TOKENIZER
from extract.text.vocabulary import Vocabulary


@dataclass(frozen=True)
class VocabularySource:
    vocabulary: Vocabulary
    vectors: np.ndarray  # [len(words) - 2, D] float32: row k for word id k + 2
    recipe: dict[str, Any]  # the text recipe the source was made with
    origin: dict[str, Any]  # what to record as provenance["vocabulary_from"]

    @property
    def tokenizer(self) -> str:
        return str(self.recipe.get("tokenizer", DEFAULT_TOKENIZER))


def _is_text_store(path: Path) -> bool:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return f.attrs.get("format") == TEXT_STORE_FORMAT
    except OSError:
        return False


def load_vocabulary_source(path: Path, from_checkpoint: Callable[[Path], VocabularySource]) -> VocabularySource:
    """The vocabulary of a GloVe text store, or of a checkpoint (read by `from_checkpoint`); UsageError (one line)
    for anything else."""
    if not path.is_file():
        raise UsageError(f"--vocabulary-from {path} does not exist; give a checkpoint (RUN/best.pt) or a text store")
    if _is_text_store(path):
        return _from_text_store(path)
    return from_checkpoint(path)


def _from_text_store(path: Path) -> VocabularySource:
    with TextStore(path) as store:
        if store.kind != "glove":
            raise UsageError(f"--vocabulary-from {path} holds {store.kind} features, not a GloVe vocabulary")
        words, vectors, chars = store.vocabulary()
        recipe = dict(store.provenance.get("recipe", {}))
    vocabulary = Vocabulary(tuple(words), tuple(chars))
    origin = {"path": str(path.resolve()), "kind": "text store", "vocabulary_sha256": vocabulary.sha256()}
    return VocabularySource(vocabulary, np.asarray(vectors, np.float32), recipe, origin)
