"""Tokenisation and IMG's vocabulary rules reproduce the token statistics of img_spec.md §1.2."""

from __future__ import annotations

import functools

from extract.text.tokenize import tokenize, tokenize_all
from extract.text.vocabulary import PAD, UNK, Vocabulary, build_vocabulary, count
from manifests.registry import load_dataset
from tests.testdata import annotations_dir


@functools.cache
def vocabulary_tokens(name: str) -> list[list[str]]:
    """Tokens of the train and test queries of a dataset (the splits its vocabulary counts)."""
    queries = load_dataset(name, annotations_dir())
    return tokenize_all(r.sentence for r in queries.records if r.split in queries.vocabulary_splits)


def test_tokens_are_lower_cased_treebank_words_of_the_whole_line() -> None:
    assert tokenize("  The person isn't opening the door. Then sits!  ") == [
        "the", "person", "is", "n't", "opening", "the", "door.", "then", "sits", "!",
    ]  # fmt: skip
    assert tokenize("") == []


def test_charades_token_statistics_match_the_spec() -> None:
    tokens = vocabulary_tokens("charades-sta")
    words, chars = count(tokens)
    assert len(words) == 1303
    assert max(len(t) for t in tokens) == 13
    assert round(sum(len(t) for t in tokens) / len(tokens), 1) == 7.2
    assert len(chars) == 38 and sum(n >= 5 for n in chars.values()) == 34


def test_activitynet_token_statistics_match_the_spec() -> None:
    tokens = vocabulary_tokens("activitynet")
    words, chars = count(tokens)
    assert len(tokens) == 37421 + 17502
    assert (len(words), max(len(t) for t in tokens)) == (12448, 91)
    assert round(sum(len(t) for t in tokens) / len(tokens), 1) == 14.8
    assert sum(n >= 5 for n in chars.values()) == 53


def test_character_vocabularies_have_the_spec_sizes() -> None:
    for name, size in (("charades-sta", 36), ("activitynet", 55)):
        vocab = build_vocabulary(vocabulary_tokens(name), lambda word: True)
        assert len(vocab.chars) == size and vocab.chars[:2] == (PAD, UNK)


def test_words_are_ordered_by_count_with_ties_in_order_of_appearance() -> None:
    vocab = build_vocabulary([["b", "a", "c"], ["c", "a", "zz"]], lambda word: word != "zz", min_char_count=2)
    assert vocab.words == (PAD, UNK, "a", "c", "b")
    assert vocab.chars == (PAD, UNK, "a", "c", "z")  # b was seen once


def test_ids_map_unknown_words_and_characters_to_one_and_keep_128_words() -> None:
    vocab = Vocabulary((PAD, UNK, "door", "opens"), (PAD, UNK, "o", "d"))
    assert vocab.word_ids(["door", "zebra"]).tolist() == [2, 1]
    assert [c.tolist() for c in vocab.char_ids(["door", "ox"])] == [[3, 2, 2, 1], [2, 1]]
    assert len(vocab.word_ids(["door"] * 500)) == 128 and len(vocab.char_ids(["door"] * 500)) == 128


def test_vocabulary_hash_changes_with_the_vocabulary() -> None:
    a = Vocabulary((PAD, UNK, "door"), (PAD, UNK))
    assert a.sha256() == Vocabulary((PAD, UNK, "door"), (PAD, UNK)).sha256()
    assert a.sha256() != Vocabulary((PAD, UNK, "door", "a"), (PAD, UNK)).sha256()
