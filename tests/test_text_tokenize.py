"""Tokenisation and IMG's vocabulary rules reproduce the token statistics of img_spec.md §1.2."""

from __future__ import annotations

import functools

import pytest

from extract.core.errors import UsageError
from extract.text.tokenize import DEFAULT_TOKENIZER, tokenize, tokenize_all
from extract.text.vocabulary import PAD, UNK, Vocabulary, build_vocabulary, count
from manifests.records import QueryRecord
from manifests.registry import load_dataset
from tests.testdata import annotations_dir

# The ActivityNet queries (all splits) that NLTK 3.7 and later NLTK releases tokenise differently; the first 18
# are in the vocabulary splits (train, val_1).
ANET_QUERIES_TOKENISED_DIFFERENTLY = (
    "qid_4803",
    "qid_4805",
    "qid_4806",
    "qid_6381",
    "qid_18577",
    "qid_27708",
    "qid_30896",
    "qid_30898",
    "qid_30899",
    "qid_34302",
    "qid_34919",
    "qid_40861",
    "qid_43578",
    "qid_44748",
    "qid_50723",
    "qid_51920",
    "qid_51923",
    "qid_51924",
    "qid_58554",
    "qid_69130",
)


@functools.cache
@functools.cache  # ActivityNet's 72,000 queries are tokenised once per tokenizer for all the tests here
def dataset_tokens(name: str, tokenizer: str = DEFAULT_TOKENIZER) -> list[tuple[QueryRecord, list[str]]]:
    """Every query of a dataset with its tokens (shared: do not modify)."""
    records = load_dataset(name, annotations_dir()).records
    return list(zip(records, tokenize_all((r.sentence for r in records), tokenizer), strict=True))


def vocabulary_tokens(name: str, tokenizer: str = DEFAULT_TOKENIZER) -> list[list[str]]:
    """Tokens of the train and test queries of a dataset (the splits its vocabulary counts)."""
    splits = load_dataset(name, annotations_dir()).vocabulary_splits
    return [tokens for record, tokens in dataset_tokens(name, tokenizer) if record.split in splits]


def test_tokens_are_lower_cased_treebank_words_of_the_whole_line() -> None:
    assert tokenize("  The person isn't opening the door. Then sits!  ") == [
        "the",
        "person",
        "is",
        "n't",
        "opening",
        "the",
        "door.",
        "then",
        "sits",
        "!",
    ]
    assert tokenize("") == []


@pytest.mark.parametrize(
    ("sentence", "nltk_37", "nltk_current"),
    [
        # an opening apostrophe: 3.7 splits it off only before a one-character word
        ("the 'lying' man", ["the", "'lying", "'", "man"], ["the", "'", "lying", "'", "man"]),
        ("a jump at 6'2 feet", ["a", "jump", "at", "6", "'", "2", "feet"], ["a", "jump", "at", "6'2", "feet"]),
        # 3.7 splits clitics before a plain space only
        ("it's\tok", ["it's", "ok"], ["it", "'s", "ok"]),
        # 3.7 keeps en and em dashes inside words
        ("a 5–10 km run", ["a", "5–10", "km", "run"], ["a", "5", "–", "10", "km", "run"]),
    ],
)
def test_default_tokenizer_keeps_the_rules_of_nltk_37(sentence: str, nltk_37: list[str], nltk_current: list[str]):
    assert tokenize(sentence) == tokenize(sentence, "nltk-3.7") == nltk_37
    assert tokenize(sentence, "nltk-current") == nltk_current


def test_an_unknown_tokenizer_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match=r"use one of nltk-3\.7, nltk-current"):
        tokenize("a door", "nltk-3.6")


@pytest.mark.parametrize("tokenizer", ["nltk-3.7", "nltk-current"])
def test_charades_token_statistics_match_the_spec(tokenizer: str) -> None:
    tokens = vocabulary_tokens("charades-sta", tokenizer)
    words, chars = count(tokens)
    assert len(words) == 1303
    assert max(len(t) for t in tokens) == 13
    assert round(sum(len(t) for t in tokens) / len(tokens), 1) == 7.2
    assert len(chars) == 38 and sum(n >= 5 for n in chars.values()) == 34


def test_activitynet_token_statistics_match_the_spec() -> None:
    tokens = vocabulary_tokens("activitynet")
    words, chars = count(tokens)
    assert len(tokens) == 37421 + 17502
    assert (len(words), max(len(t) for t in tokens)) == (12444, 91)  # the authors' vocabulary (NLTK 3.7)
    assert round(sum(len(t) for t in tokens) / len(tokens), 1) == 14.8
    assert sum(n >= 5 for n in chars.values()) == 53


@pytest.mark.slow
def test_current_nltk_splits_20_activitynet_queries_differently_and_moves_word_ids() -> None:
    pairs = zip(dataset_tokens("activitynet", "nltk-3.7"), dataset_tokens("activitynet", "nltk-current"), strict=True)
    differ = [record.qid for (record, authors), (_, current) in pairs if authors != current]
    assert tuple(differ) == ANET_QUERIES_TOKENISED_DIFFERENTLY
    authors, current = (
        build_vocabulary(vocabulary_tokens("activitynet", t), lambda word: True) for t in ("nltk-3.7", "nltk-current")
    )
    assert (len(authors.words), len(current.words)) == (2 + 12444, 2 + 12448)
    current_ids = {word: i for i, word in enumerate(current.words)}
    moved = [word for i, word in enumerate(authors.words) if current_ids.get(word, i) != i]
    assert len(moved) == 8502  # of all counted words: an official checkpoint's embedding rows no longer line up
    assert authors.chars == current.chars


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
