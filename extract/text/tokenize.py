"""The authors' tokenisation: lower-case the stripped sentence, then NLTK's Treebank word tokeniser.

The published pipeline calls word_tokenize in its default mode, which first splits sentences with the punkt
model (a download). preserve_line=True tokenises the whole line at once and needs no data; it gives the same
characters and differs only around a period inside a multi-sentence query (img_spec.md §7.29). Measured on
the shipped files it reproduces §1.2: Charades 1,303 distinct tokens, at most 13 per query; ActivityNet
12,448, at most 91.
"""

from __future__ import annotations

from collections.abc import Iterable

from nltk.tokenize import word_tokenize

TOKENIZER = "nltk.word_tokenize(sentence.strip().lower(), preserve_line=True)"


def tokenize(sentence: str) -> list[str]:
    return word_tokenize(sentence.strip().lower(), preserve_line=True)


def tokenize_all(sentences: Iterable[str]) -> list[list[str]]:
    """Tokens of every sentence; a sentence repeated in the dataset is tokenised once."""
    seen: dict[str, list[str]] = {}
    out = []
    for sentence in sentences:
        tokens = seen.get(sentence)
        if tokens is None:
            tokens = seen[sentence] = tokenize(sentence)
        out.append(list(tokens))
    return out


def nltk_version() -> str:
    import nltk

    return nltk.__version__
