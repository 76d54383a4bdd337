"""The authors' tokenisation: lower-case the stripped sentence, then NLTK's Treebank word tokeniser.

Two named tokenisers; the name is recorded in the text store's recipe:

- `nltk-3.7` (default): NLTK 3.7's rules, which the authors ran (img_spec.md §1.3), reproduced in nltk37.py.
  It gives the published vocabularies, so word ids line up with the rows of an official checkpoint's
  embedding: Charades-STA 1,303 distinct tokens, ActivityNet 12,444.
- `nltk-current`: the installed NLTK's `word_tokenize`. Its later apostrophe, whitespace and dash rules
  tokenise 20 ActivityNet queries differently (12,448 tokens, 5,707 words at another id); Charades is the same.

Both tokenise the whole line at once (preserve_line=True). The published pipeline first splits sentences with
the punkt model (a download); that differs only around a period inside a multi-sentence query and leaves the
character vocabulary unchanged (img_spec.md §7.29).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from extract.core.errors import UsageError
from extract.text.nltk37 import word_tokenize_37

TOKENIZERS = ("nltk-3.7", "nltk-current")
DEFAULT_TOKENIZER = "nltk-3.7"


def _nltk_current(text: str) -> list[str]:
    from nltk.tokenize import word_tokenize

    return word_tokenize(text, preserve_line=True)


def _word_tokenizer(name: str) -> Callable[[str], list[str]]:
    if name == "nltk-3.7":
        return word_tokenize_37
    if name == "nltk-current":
        return _nltk_current
    raise UsageError(f"unknown tokenizer {name!r}; use one of {', '.join(TOKENIZERS)}")


def tokenize(sentence: str, tokenizer: str = DEFAULT_TOKENIZER) -> list[str]:
    return _word_tokenizer(tokenizer)(sentence.strip().lower())


def tokenize_all(sentences: Iterable[str], tokenizer: str = DEFAULT_TOKENIZER) -> list[list[str]]:
    """Tokens of every sentence; a sentence repeated in the dataset is tokenised once."""
    word_tokenize = _word_tokenizer(tokenizer)
    seen: dict[str, list[str]] = {}
    out = []
    for sentence in sentences:
        tokens = seen.get(sentence)
        if tokens is None:
            tokens = seen[sentence] = word_tokenize(sentence.strip().lower())
        out.append(list(tokens))
    return out


def tokenizer_recipe(tokenizer: str) -> dict[str, Any]:
    """What decides the tokens, for the text store's recipe."""
    if tokenizer == "nltk-3.7":
        rule = "NLTK 3.7 word_tokenize(sentence.strip().lower(), preserve_line=True), reproduced in extract"
        return {"tokenizer": tokenizer, "tokenizer_rule": rule}
    _word_tokenizer(tokenizer)
    rule = "nltk.word_tokenize(sentence.strip().lower(), preserve_line=True)"
    return {"tokenizer": tokenizer, "tokenizer_rule": rule, "nltk": nltk_version()}


def nltk_version() -> str:
    import nltk

    return nltk.__version__
