"""NLTK 3.7's word tokeniser (`word_tokenize(text, preserve_line=True)`), reproduced without NLTK.

The IMG authors tokenised with NLTK 3.7 (img_spec.md §1.3). Later releases changed three word-level rules, and
the vocabulary with them (ActivityNet: 12,448 words instead of 12,444, 5,707 of them at another id):

- an apostrophe opening a word: 3.7 splits it off only before a one-letter word ("'a" -> "'", "a"); later
  releases before any word that is not a clitic ("'bout" -> "'", "bout");
- later releases turn every whitespace run into one space before the clitic rules, so "it's\\tok" splits into
  "it", "'s", "ok"; 3.7 matches clitics before a plain space only;
- later releases pad figure, en and em dashes and the horizontal bar (U+2012-U+2015); 3.7 keeps "a–b" whole.

The rules below are 3.7's `NLTKWordTokenizer` (nltk/tokenize/destructive.py at tag 3.7), applied in its
order. One pattern is written with a possessive quantifier: the same matches without 3.7's quadratic
backtracking on long whitespace runs (the denial-of-service fix NLTK made later; it changed no output).
"""

from __future__ import annotations

import re

_Rule = tuple[re.Pattern[str], str]

_STARTING_QUOTES: tuple[_Rule, ...] = (
    (re.compile(r"([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'^"'), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"""([ \(\[{<])("|'{2})"""), r"\1 `` "),
    # 3.7's opening apostrophe: split only before a one-character word that is not a clitic.
    (re.compile(r"(?i)(')(?!re|ve|ll|m|t|s|d|n)(\w)\b"), r"\1 \2"),
)

_PUNCTUATION: tuple[_Rule, ...] = (
    (re.compile(r"""([^.])(\.)([\])}>"'»”’ ]*+)\s*$"""), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"""([^.])(\.)([\])}>"']*)\s*$"""), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
)

_BRACKETS: _Rule = (re.compile(r"[\]\[(){}<>]"), r" \g<0> ")
_DOUBLE_DASHES: _Rule = (re.compile(r"--"), r" -- ")

_ENDING_QUOTES: tuple[_Rule, ...] = (
    (re.compile(r"([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    # 3.7 has no whitespace normalisation here: a clitic is split only before a plain space.
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
)

# Robert MacIntyre's contractions, as 3.7 lists them (its CONTRACTIONS4 is unused there too).
_CONTRACTIONS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern)
    for pattern in (
        r"(?i)\b(can)(not)\b",
        r"(?i)\b(d)('ye)\b",
        r"(?i)\b(gim)(me)\b",
        r"(?i)\b(gon)(na)\b",
        r"(?i)\b(got)(ta)\b",
        r"(?i)\b(lem)(me)\b",
        r"(?i)\b(more)('n)\b",
        r"(?i)\b(wan)(na)(?=\s)",
        r"(?i) ('t)(is)\b",
        r"(?i) ('t)(was)\b",
    )
)


def _apply(text: str, rules: tuple[_Rule, ...]) -> str:
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def word_tokenize_37(text: str) -> list[str]:
    """The tokens NLTK 3.7's `word_tokenize(text, preserve_line=True)` returns."""
    text = _apply(text, _STARTING_QUOTES)
    text = _apply(text, _PUNCTUATION)
    text = _apply(text, (_BRACKETS, _DOUBLE_DASHES))
    text = _apply(f" {text} ", _ENDING_QUOTES)
    for pattern in _CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()
