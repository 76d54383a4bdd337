"""An existing GloVe vocabulary to encode new queries with (`img-extract text --vocabulary-from SOURCE`).

A model's word ids point at rows of its embedding: queries it has never seen (another dataset, your own
sentences) must be encoded with *its* vocabulary, not one built from the new queries, or img-eval refuses the
text store (or worse, the ids would name other words). SOURCE is either

- a GloVe text store (`img-extract text --embed glove:...`): its words, characters, vectors and recipe, or
- an img_model checkpoint (`img-train` RUN/best.pt, or one converted with `--text`): its vocabulary, the GloVe
  rows held in its weights, and the text recipe it records.

The new store copies the source's recipe unchanged (it describes how words become ids: tokeniser, vocabulary,
GloVe file), so img-eval compares it equal to the checkpoint's; where the vocabulary came from is recorded
beside the recipe in the provenance (`vocabulary_from`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from extract.core.errors import UsageError
from extract.text.store import TEXT_STORE_FORMAT, TextStore
from extract.text.tokenize import DEFAULT_TOKENIZER, tokenizer_recipe
from extract.text.vocabulary import Vocabulary

# Where a checkpoint keeps the GloVe rows (both query embeddings hold the same frozen matrix).
CHECKPOINT_GLOVE_KEY = "video_branch.query_embedding.words.glove_vectors"


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


def load_vocabulary_source(path: Path) -> VocabularySource:
    """The vocabulary of a GloVe text store or of a checkpoint; UsageError (one line) for anything else."""
    if not path.is_file():
        raise UsageError(f"--vocabulary-from {path} does not exist; give a checkpoint (RUN/best.pt) or a text store")
    if _is_text_store(path):
        return _from_text_store(path)
    return _from_checkpoint(path)


def _from_text_store(path: Path) -> VocabularySource:
    with TextStore(path) as store:
        if store.kind != "glove":
            raise UsageError(f"--vocabulary-from {path} holds {store.kind} features, not a GloVe vocabulary")
        words, vectors, chars = store.vocabulary()
        recipe = dict(store.provenance.get("recipe", {}))
    vocabulary = Vocabulary(tuple(words), tuple(chars))
    origin = {"path": str(path.resolve()), "kind": "text store", "vocabulary_sha256": vocabulary.sha256()}
    return VocabularySource(vocabulary, np.asarray(vectors, np.float32), recipe, origin)


def _from_checkpoint(path: Path) -> VocabularySource:
    from img_model.checkpoint import read_checkpoint
    from img_model.convert import CheckpointLayoutError

    try:
        checkpoint = read_checkpoint(path)
    except CheckpointLayoutError as error:
        raise UsageError(
            f"--vocabulary-from {path}: neither a text store nor a readable checkpoint ({error})"
        ) from None
    if checkpoint.vocabulary is None or CHECKPOINT_GLOVE_KEY not in checkpoint.state_dict:
        raise UsageError(
            f"--vocabulary-from {path}: the checkpoint carries no GloVe vocabulary (a model of precomputed text "
            "features, or converted without --text)"
        )
    vocabulary = Vocabulary(tuple(checkpoint.vocabulary["words"]), tuple(checkpoint.vocabulary["chars"]))
    if vocabulary.sha256() != checkpoint.vocabulary["sha256"]:
        raise UsageError(f"--vocabulary-from {path}: the checkpoint's vocabulary does not match its own sha256")
    vectors = checkpoint.state_dict[CHECKPOINT_GLOVE_KEY].float().numpy()
    recorded = checkpoint.provenance.get("text")
    if recorded is not None:
        recipe = dict(recorded.get("recipe", {}))
    else:  # converted: the checkpoint records only the vocabulary, whose hash is what img-eval then compares
        recipe = {"kind": "glove", **tokenizer_recipe(DEFAULT_TOKENIZER), "words": len(vocabulary.words),
                  "chars": len(vocabulary.chars), "vocabulary_sha256": vocabulary.sha256()}  # fmt: skip
    origin = {"path": str(path.resolve()), "kind": "checkpoint", "vocabulary_sha256": vocabulary.sha256()}
    return VocabularySource(vocabulary, vectors, recipe, origin)
