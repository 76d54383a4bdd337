"""A typed query as the checkpoint's model reads it: GloVe word and character ids with the checkpoint's own
vocabulary and tokeniser, or per-token features from the text encoder (BERT, CLIP-text) its text store used.

Unknown words. The vocabulary holds the words of the training (and test) queries that GloVe knows; any other
word reads as <UNK> (id 1), whose vector is the model's learned UNK row, exactly as in training. A query with
some unknown words is answered, and `unknown_words` names them (img-predict warns). A query in which *every*
word is unknown is refused (QueryError): all its words would be the same UNK vector, so the answer would not
depend on what was typed. An empty query is refused too.

Long queries. The model reads the first max_pos_len tokens of a query, as img-eval reads the text store's (§1.3
step 4); `tokens_dropped` counts the others (img-predict says so, and the answer carries it).

The encoder of a BERT / CLIP-text checkpoint is loaded from the model its text store recorded (or --text-model)
and must be the same model: its weights' sha256 must be the recorded one, unless trust_weights says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extract.core.errors import ImgVmrError
from extract.text.tokenize import DEFAULT_TOKENIZER, tokenize
from extract.text.vocabulary import MAX_WORDS, Vocabulary
from img_model.checkpoint import Checkpoint, CheckpointMismatchError
from img_model.predict.recipe_check import check_recorded_recipe


class QueryError(ImgVmrError):
    """A query that cannot be answered: empty, or with no word the checkpoint's vocabulary knows."""


log = logging.getLogger(f"img_vmr.{__name__}")

# Recipe keys that say where a text model was loaded from, not what it computes.
TEXT_SOURCE_KEYS = ("model",)


@dataclass(frozen=True)
class QueryInput:
    """One query's model inputs: word_ids + char_ids (GloVe models) or features (precomputed-text models)."""

    text: str
    word_ids: np.ndarray | None = None  # [L] int64
    char_ids: list[np.ndarray] | None = None
    features: np.ndarray | None = None  # [L, D] float32
    unknown_words: tuple[str, ...] = ()
    tokens_dropped: int = 0  # tokens past the first max_pos_len, which the model does not read


def checked_query(text: str) -> str:
    """The query without surrounding white space; an empty one is a QueryError."""
    query = text.strip()
    if not query:
        raise QueryError("empty query: type what happens in the moment you are looking for")
    return query


class GloveQueryReader:
    """Word and character ids from the checkpoint's vocabulary, tokenised as its text store was."""

    def __init__(self, vocabulary: dict[str, Any], recipe: dict[str, Any], max_tokens: int) -> None:
        self.vocabulary = Vocabulary(
            tuple(vocabulary["words"]), tuple(vocabulary["chars"]), int(recipe.get("max_words", MAX_WORDS))
        )
        self.tokenizer = str(recipe.get("tokenizer", DEFAULT_TOKENIZER))
        self.max_tokens = max_tokens
        self._known = set(self.vocabulary.words[2:])

    def __call__(self, text: str) -> QueryInput:
        query = checked_query(text)
        every_token = tokenize(query, self.tokenizer)
        # the text store's first max_words, of which img-eval reads the first max_pos_len (§1.3)
        tokens = every_token[: min(self.vocabulary.max_words, self.max_tokens)]
        if not tokens:
            raise QueryError(f"{query!r} has no words once tokenised")
        unknown = tuple(dict.fromkeys(token for token in tokens if token not in self._known))
        if len(unknown) == len(set(tokens)):
            shown = ", ".join(self.vocabulary.words[2:8])
            raise QueryError(
                f"no word of {query!r} is in the checkpoint's vocabulary ({len(self._known)} words, e.g. {shown}): "
                "every word would read as the same <UNK> vector, so the answer would not depend on the query; "
                "rephrase it with words of the training queries"
            )
        word_ids = self.vocabulary.word_ids(tokens).astype(np.int64)
        char_ids = [ids.astype(np.int64) for ids in self.vocabulary.char_ids(tokens)]
        dropped = len(every_token) - len(tokens)
        return QueryInput(query, word_ids=word_ids, char_ids=char_ids, unknown_words=unknown, tokens_dropped=dropped)


class EncoderQueryReader:
    """Per-token features from the text encoder the checkpoint's text store recorded (the first max_tokens)."""

    def __init__(self, encoder: Any, max_tokens: int) -> None:
        self.encoder = encoder
        self.max_tokens = max_tokens

    def __call__(self, text: str) -> QueryInput:
        query = checked_query(text)
        features = np.asarray(self.encoder.encode([query]).features[0], np.float32)
        read = features[: self.max_tokens]
        return QueryInput(query, features=read, tokens_dropped=len(features) - len(read))


def query_reader(
    checkpoint: Checkpoint,
    device: torch.device,
    weights_dir: Path | None = None,
    text_model: str | None = None,
    trust_weights: bool = False,
) -> GloveQueryReader | EncoderQueryReader:
    """The function turning a typed query into this checkpoint's text inputs."""
    config = checkpoint.config
    recorded = checkpoint.provenance.get("text")
    recipe: dict[str, Any] = dict(recorded["recipe"]) if recorded else {}
    if config.query_features == "glove_char":
        if checkpoint.vocabulary is None:
            raise CheckpointMismatchError(
                "the checkpoint embeds GloVe word ids but carries no vocabulary; convert it again with --text"
            )
        if not recorded:
            log.warning("the checkpoint records no tokeniser (converted); queries are split with %s", DEFAULT_TOKENIZER)
        return GloveQueryReader(checkpoint.vocabulary, recipe, config.max_pos_len)
    return EncoderQueryReader(
        _text_encoder(config.text_feature_dim, recipe, device, weights_dir, text_model, trust_weights),
        config.max_pos_len,
    )


def _text_encoder(
    dim: int,
    recipe: dict[str, Any],
    device: torch.device,
    weights_dir: Path | None,
    text_model: str | None,
    trust_weights: bool,
) -> Any:
    from extract.text.bert import BertTextEncoder
    from extract.text.clip_text import ClipTextEncoder

    kind, model = recipe.get("kind"), text_model or recipe.get("model")
    classes = {"bert": BertTextEncoder, "clip-text": ClipTextEncoder}
    if kind not in classes or not model:
        raise CheckpointMismatchError(
            "the checkpoint records no text encoder (converted without --text): pass --text-model with the BERT or "
            "CLIP-text model its features came from"
        )
    encoder = classes[kind](model, device, 1, recipe.get("max_length"), weights_dir)
    actual = encoder.recipe()
    hint = "pass the model its text store used with --text-model (and --weights-dir)"
    check_recorded_recipe(f"{kind} text features", recipe, actual, trust_weights, hint, ignore=TEXT_SOURCE_KEYS)
    if int(actual["hidden_size"]) != dim:
        raise CheckpointMismatchError(f"the model reads {dim}-d text features; {model} gives {actual['hidden_size']}-d")
    return encoder


def read_queries(reader: GloveQueryReader | EncoderQueryReader, texts: Sequence[str]) -> list[QueryInput]:
    """Every query's inputs; the first bad query stops with its QueryError."""
    return [reader(text) for text in texts]
