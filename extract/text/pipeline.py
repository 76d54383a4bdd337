"""`img-extract text`: query records in, a text store with provenance out (GloVe ids or per-token features).

glove:PATH         tokens (tokenize.py; NLTK 3.7's rules unless --tokenizer says otherwise), IMG's vocabularies
                   over the vocabulary splits (vocabulary.py) with the GloVe file's words (glove.py); stores the
                   vocabulary, the vector matrix, the character vocabulary and every query's word and character ids
bert[:MODEL]       per-token last hidden states (bert.py), default bert-base-uncased
clip-text[:MODEL]  per-token features and the pooled projected embedding (clip_text.py), default
                   openai/clip-vit-base-patch32
--vocabulary-from  GloVe ids by an existing vocabulary, a checkpoint's or a text store's (vocabulary_source.py)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from extract.core.errors import UsageError
from extract.core.versions import software_versions
from extract.text.encoder import TokenFeatureEncoder
from extract.text.glove import open_glove
from extract.text.store import TextBatch, TextStoreWriter
from extract.text.tokenize import DEFAULT_TOKENIZER, tokenize_all, tokenizer_recipe
from extract.text.vocabulary import MAX_WORDS, MIN_CHAR_COUNT, Vocabulary, build_vocabulary
from extract.text.vocabulary_source import VocabularySource
from manifests.records import QueryRecord

log = logging.getLogger(f"img_vmr.{__name__}")

EMBED_KINDS = ("glove", "bert", "clip-text")


@dataclass(frozen=True)
class EmbedSpec:
    kind: str
    target: str | None  # GloVe file, or model id / folder (None: the encoder's default)


def parse_embed(spec: str) -> EmbedSpec:
    kind, _, target = spec.partition(":")
    if kind not in EMBED_KINDS:
        raise UsageError(f"--embed {spec!r}: use glove:PATH, bert[:MODEL] or clip-text[:MODEL]")
    if kind == "glove" and not target:
        raise UsageError("--embed glove needs the vectors file: --embed glove:PATH/glove.840B.300d.txt")
    return EmbedSpec(kind, target or None)


@dataclass(frozen=True)
class TextQueries:
    """What to embed: the records, the splits whose words make the vocabulary, and where they came from."""

    records: list[QueryRecord]
    vocabulary_splits: tuple[str, ...] | None  # None: every split
    source: Mapping[str, Any]  # dataset name and annotation files (sha256), for provenance


@dataclass
class TextSummary:
    queries: int = 0
    computed: int = 0
    truncated: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = (
            f"summary: {self.computed} queries embedded, {self.queries - self.computed} already in the store, "
            f"{self.truncated} truncated; {self.seconds:.1f} s"
        )
        return [head, *self.notes]


def run_glove(
    queries: TextQueries,
    glove_path: Path,
    out: Path,
    resume: bool = True,
    cache_dir: Path | None = None,
    tokenizer: str = DEFAULT_TOKENIZER,
) -> TextSummary:
    """A GloVe text store whose vocabulary is built from these queries' vocabulary splits."""
    started = time.perf_counter()
    index = open_glove(glove_path, cache_dir)
    records = queries.records
    tokens = tokenize_all((r.sentence for r in records), tokenizer)
    splits = queries.vocabulary_splits
    vocab_tokens = [t for t, r in zip(tokens, records, strict=True) if splits is None or r.split in splits]
    looked_up = time.perf_counter()
    found = index.find({word for query in vocab_tokens for word in query})
    vocab = build_vocabulary(vocab_tokens, found.__contains__)
    vectors = index.vectors([found[word] for word in vocab.glove_words])
    glove_seconds = time.perf_counter() - looked_up
    recipe = {
        "kind": "glove",
        **tokenizer_recipe(tokenizer),
        **index.provenance(),
        "vocabulary_splits": list(splits) if splits is not None else "all",
        "min_char_count": MIN_CHAR_COUNT,
        "max_words": MAX_WORDS,
        "words": len(vocab.words),
        "chars": len(vocab.chars),
        "vocabulary_sha256": vocab.sha256(),
    }
    provenance = {
        "recipe": recipe,
        "software": software_versions("transformers"),
        "runtime": {},
        "queries": dict(queries.source),
    }
    summary = _write_glove(queries, tokens, vocab, vectors, provenance, out, resume)
    in_glove = len(vocab.glove_words)
    distinct = len({word for query in vocab_tokens for word in query})
    summary.notes.insert(
        0,
        f"vocabulary: {distinct} distinct tokens in {recipe['vocabulary_splits']}, {in_glove} in GloVe "
        f"({len(vocab.words)} ids with <PAD>, <UNK>), {len(vocab.chars)} characters; GloVe index "
        f"({index.rows} words, {index.dim}-d) looked up in {glove_seconds:.2f} s",
    )
    summary.seconds = time.perf_counter() - started
    return summary


def run_glove_with_vocabulary(
    queries: TextQueries, source: VocabularySource, out: Path, resume: bool = True, tokenizer: str | None = None
) -> TextSummary:
    """A GloVe text store of these queries encoded with an existing vocabulary (a checkpoint's or a text
    store's): same tokeniser, same word and character ids, same vectors, same recipe; words the vocabulary
    lacks are UNK."""
    started = time.perf_counter()
    if tokenizer is not None and tokenizer != source.tokenizer:
        raise UsageError(
            f"--tokenizer {tokenizer}: the vocabulary of {source.origin['path']} was made with {source.tokenizer}; "
            "drop --tokenizer to use it"
        )
    tokens = tokenize_all((r.sentence for r in queries.records), source.tokenizer)
    provenance = {
        "recipe": source.recipe,
        "software": software_versions("transformers"),
        "runtime": {},
        "queries": dict(queries.source),
        "vocabulary_from": source.origin,
    }
    summary = _write_glove(queries, tokens, source.vocabulary, source.vectors, provenance, out, resume)
    known = set(source.vocabulary.words[2:])
    words = [word for query in tokens for word in query[:MAX_WORDS]]
    unknown = sum(word not in known for word in words)
    summary.notes.insert(
        0,
        f"vocabulary of {source.origin['path']} ({source.origin['kind']}, {len(source.vocabulary.words)} words, "
        f"{len(source.vocabulary.chars)} characters): {unknown} of {len(words)} words of these queries are not in "
        "it (<UNK>)",
    )
    summary.seconds = time.perf_counter() - started
    return summary


def _write_glove(
    queries: TextQueries,
    tokens: list[list[str]],
    vocab: Vocabulary,
    vectors: np.ndarray,
    provenance: Mapping[str, Any],
    out: Path,
    resume: bool,
) -> TextSummary:
    """Commit every query not yet stored (word and character ids by `vocab`), then merge with the vocabulary."""
    records = queries.records
    writer = TextStoreWriter(out, "glove", provenance, resume)
    try:
        rows = {r.qid: i for i, r in enumerate(records)}
        todo = writer.todo(records)
        kept = [tokens[rows[r.qid]][:MAX_WORDS] for r in todo]
        truncated = [len(tokens[rows[r.qid]]) > MAX_WORDS for r in todo]
        writer.commit(
            TextBatch(
                todo,
                kept,
                truncated,
                token_arrays={"word_ids": [vocab.word_ids(t) for t in kept]},
                char_ids=[vocab.char_ids(t) for t in kept],
            )
        )
    except BaseException:
        writer.abandon()
        raise
    writer.close({"words": vocab.words, "vectors": vectors, "chars": vocab.chars})
    summary = TextSummary(len(records), len(todo), sum(truncated))
    if sum(truncated):
        summary.notes.append(f"{sum(truncated)} queries longer than {MAX_WORDS} words keep their first {MAX_WORDS}")
    return summary


def run_encoder(
    queries: TextQueries, encoder: TokenFeatureEncoder, out: Path, resume: bool = True, commit_every: int = 2048
) -> TextSummary:
    started = time.perf_counter()
    recipe = encoder.recipe()
    provenance = {
        "recipe": recipe,
        "software": software_versions("transformers"),
        "runtime": {"device": str(encoder.device), "batch_size": encoder.batch_size},
        "queries": dict(queries.source),
    }
    writer = TextStoreWriter(out, encoder.kind, provenance, resume)
    summary = TextSummary(len(queries.records))
    try:
        todo = writer.todo(queries.records)
        for start in range(0, len(todo), commit_every):
            chunk = todo[start : start + commit_every]
            encoded = encoder.encode([r.sentence for r in chunk])
            writer.commit(
                TextBatch(
                    chunk,
                    encoded.tokens,
                    encoded.truncated,
                    token_arrays={"token_ids": encoded.token_ids, "features": encoded.features},
                    pooled=encoded.pooled,
                )
            )
            summary.computed += len(chunk)
            summary.truncated += sum(encoded.truncated)
            log.info("%s: %d / %d queries embedded", out, start + len(chunk), len(todo))
    except BaseException:
        writer.abandon()
        raise
    writer.close()
    summary.seconds = time.perf_counter() - started
    return summary
