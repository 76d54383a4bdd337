"""A typed query as the checkpoint's model reads it: GloVe word and character ids with the checkpoint's own
vocabulary and tokeniser, or per-token features from the text encoder (BERT, CLIP-text) its text store used.

Unknown words. The vocabulary holds the words of the training (and test) queries that GloVe knows; any other
word reads as <UNK> (id 1), whose vector is the model's learned UNK row, exactly as in training. A query with
some unknown words is answered, and `unknown_words` names them (img-predict warns). A query in which *every*
word is unknown is refused (QueryError): all its words would be the same UNK vector, so the answer would not
depend on what was typed. An empty query is refused too.

Open vocabulary (GloVe models). The GloVe rows of IMG's word embedding are frozen in training: a word the training
queries never had is, for the model, exactly its GloVe vector, like any word of its vocabulary. With a GloVe file
(`--glove FILE`, or the file recorded at training when its index is in the GloVe index cache) a word outside the
vocabulary but in the file reads its exact row of the file: it gets a new id past the vocabulary's, and the
predictor appends the row to the model's frozen matrix (GloveExtension). Only the file the model was trained with
fits (its vectors of the vocabulary's words must equal the checkpoint's: another file puts words in another space),
and the file is read through the same indexed cache as `img-extract text --embed glove:FILE` (extract/text/glove.py),
so a lookup reads only the rows it needs. Characters need nothing: every word's characters are read already.
Words in neither the vocabulary nor the file still read as <UNK> and are listed; `glove_words` names those read
from the file.

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

from extract.core.errors import ImgVmrError, UsageError
from extract.text.glove import GloveIndex, cached_index, open_glove
from extract.text.tokenize import DEFAULT_TOKENIZER, tokenize
from extract.text.vocabulary import MAX_WORDS, UNK_ID, Vocabulary
from img_model.checkpoint import CHECKPOINT_GLOVE_KEY, Checkpoint, CheckpointMismatchError
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
    unknown_words: tuple[str, ...] = ()  # read as <UNK>: in neither the vocabulary nor the GloVe file
    tokens_dropped: int = 0  # tokens past the first max_pos_len, which the model does not read
    glove_words: tuple[str, ...] = ()  # read from the GloVe file: beyond the checkpoint's vocabulary


def checked_query(text: str) -> str:
    """The query without surrounding white space; an empty one is a QueryError."""
    query = text.strip()
    if not query:
        raise QueryError("empty query: type what happens in the moment you are looking for")
    return query


class GloveExtension:
    """A GloVe file extending a checkpoint's vocabulary: the exact rows of words the vocabulary lacks.

    `name` is the file's name (no folder), for the answers and their messages. Rows are looked up
    once per word (a word the file lacks is remembered too), in one pass over the index's words per call."""

    def __init__(self, index: GloveIndex, name: str) -> None:
        self.index = index
        self.name = name
        self._rows: dict[str, int | None] = {}

    def rows(self, words: Sequence[str]) -> dict[str, int]:
        """The file's row of each of these words it has."""
        missing = [word for word in dict.fromkeys(words) if word not in self._rows]
        if missing:
            found = self.index.find(missing)
            self._rows.update({word: found.get(word) for word in missing})
        return {word: row for word in words if (row := self._rows.get(word)) is not None}

    def vectors(self, words: Sequence[str]) -> np.ndarray:
        """[len(words), dim] float32: the file's rows of these words (each must be in the file)."""
        rows = self.rows(words)
        return self.index.vectors([rows[word] for word in words])


class GloveQueryReader:
    """Word and character ids from the checkpoint's vocabulary, tokenised as its text store was; with a
    GloveExtension, words past the vocabulary get ids from len(words) on, in the order they were first read
    (`added_words`: the rows the model must hold past its own, in id order)."""

    def __init__(
        self,
        vocabulary: dict[str, Any],
        recipe: dict[str, Any],
        max_tokens: int,
        extension: GloveExtension | None = None,
    ) -> None:
        self.vocabulary = Vocabulary(
            tuple(vocabulary["words"]), tuple(vocabulary["chars"]), int(recipe.get("max_words", MAX_WORDS))
        )
        self.tokenizer = str(recipe.get("tokenizer", DEFAULT_TOKENIZER))
        self.max_tokens = max_tokens
        self.extension = extension
        self._known = set(self.vocabulary.words[2:])
        self.added_words: dict[str, int] = {}  # word -> its id past the vocabulary's

    def tokens(self, query: str) -> tuple[list[str], int]:
        """The tokens the model reads (the text store's first max_words, of which img-eval reads the first
        max_pos_len, §1.3) and the count of those dropped."""
        every_token = tokenize(query, self.tokenizer)
        tokens = every_token[: min(self.vocabulary.max_words, self.max_tokens)]
        return tokens, len(every_token) - len(tokens)

    def extend(self, texts: Sequence[str]) -> None:
        """Give ids to the words of these queries that the vocabulary lacks and the GloVe file has (one pass)."""
        if self.extension is None:
            return
        wanted = [
            token
            for text in texts
            for token in self.tokens(text.strip())[0]
            if token not in self._known and token not in self.added_words
        ]
        found = self.extension.rows(wanted)
        for word in dict.fromkeys(wanted):
            if word in found:
                self.added_words[word] = len(self.vocabulary.words) + len(self.added_words)

    def __call__(self, text: str) -> QueryInput:
        query = checked_query(text)
        self.extend([query])
        tokens, dropped = self.tokens(query)
        if not tokens:
            raise QueryError(f"{query!r} has no words once tokenised")
        added = tuple(dict.fromkeys(token for token in tokens if token in self.added_words))
        unknown = tuple(
            dict.fromkeys(token for token in tokens if token not in self._known and token not in self.added_words)
        )
        if len(unknown) == len(set(tokens)):
            shown = ", ".join(self.vocabulary.words[2:8])
            where = f" nor in {self.extension.name}" if self.extension else ""
            raise QueryError(
                f"no word of {query!r} is in the checkpoint's vocabulary ({len(self._known)} words, e.g. {shown})"
                f"{where}: every word would read as the same <UNK> vector, so the answer would not depend on the "
                "query; rephrase it with words of the training queries"
                + ("" if self.extension else " (or give --glove FILE, the GloVe file it was trained with)")
            )
        word_ids = self.vocabulary.word_ids(tokens).astype(np.int64)
        for position, token in enumerate(tokens):
            if word_ids[position] == UNK_ID and token in self.added_words:
                word_ids[position] = self.added_words[token]
        char_ids = [ids.astype(np.int64) for ids in self.vocabulary.char_ids(tokens)]
        return QueryInput(
            query,
            word_ids=word_ids,
            char_ids=char_ids,
            unknown_words=unknown,
            tokens_dropped=dropped,
            glove_words=added,
        )


def glove_extension(checkpoint: Checkpoint, glove: Path | None, cache_dir: Path | None = None) -> GloveExtension | None:
    """The GloVe file extending a GloVe checkpoint's vocabulary: `glove` when given (its index built in
    `cache_dir` on first use), else the file recorded at training when its index is in `cache_dir` (default: the
    GloVe index cache img-extract text uses), else None. UsageError (one line) for a checkpoint without GloVe
    words, or a file other than the one it was trained with."""
    if checkpoint.config.query_features != "glove_char" or CHECKPOINT_GLOVE_KEY not in checkpoint.state_dict:
        if glove is not None:
            raise UsageError(
                f"--glove {glove}: this checkpoint holds no GloVe words to extend (it reads precomputed text "
                "features, or was converted without --text)"
            )
        return None
    recorded: dict[str, Any] = dict((checkpoint.provenance.get("text") or {}).get("recipe", {}))
    if glove is not None:
        index = open_glove(glove, cache_dir)
        name = glove.name  # what the answers record: no folder of this machine
    else:
        name, size, sha256 = (recorded.get(key) for key in ("glove_file", "glove_size", "glove_sha256"))
        index = cached_index(name, size, sha256, cache_dir) if name and size and sha256 else None
        if index is None:
            return None
        name = index.source_name
        log.info(
            "the vocabulary is extended from %s, the GloVe file recorded at training (index %s)", name, index.folder
        )
    stored = checkpoint.state_dict[CHECKPOINT_GLOVE_KEY].float().numpy()
    if index.dim != stored.shape[1]:
        raise UsageError(f"--glove {name}: {index.dim}-d vectors; the model was trained with {stored.shape[1]}-d GloVe")
    if recorded.get("glove_sha256") != index.sha256:  # not the recorded file (or none recorded): its rows must fit
        words = list(checkpoint.vocabulary["words"][2:]) if checkpoint.vocabulary else []
        rows = index.find(words)
        if len(rows) != len(words) or not np.array_equal(index.vectors([rows[w] for w in words]), stored):
            what = (
                f" ({recorded['glove_file']}, sha256 {recorded['glove_sha256'][:12]}...)"
                if recorded.get("glove_sha256")
                else ""
            )
            raise UsageError(
                f"--glove {name}: its vectors of the checkpoint's words are not the ones the model was trained with: "
                f"give the GloVe file it was trained with{what}"
            )
    return GloveExtension(index, name)


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
    extension: GloveExtension | None = None,
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
        return GloveQueryReader(checkpoint.vocabulary, recipe, config.max_pos_len, extension)
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
    if isinstance(reader, GloveQueryReader):
        reader.extend(texts)  # every query's new words in one pass over the GloVe file's words
    return [reader(text) for text in texts]
