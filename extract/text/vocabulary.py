"""IMG's word and character vocabularies (VSLNet's vocab_emb_gen, img_spec.md §1.3) and the ids they give.

Words: every token of the vocabulary splits (train + test) that GloVe knows, by decreasing count, ties in
order of first appearance (Counter.most_common); 0 = <PAD>, 1 = <UNK>, GloVe words from 2. Characters: every
character seen at least 5 times, same order, after <PAD> and <UNK>. A query keeps its first 128 words
(max_pos_len); unknown words and characters map to 1.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

PAD, UNK = "<PAD>", "<UNK>"
PAD_ID, UNK_ID = 0, 1
MIN_CHAR_COUNT = 5
MAX_WORDS = 128


@dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]  # PAD, UNK, then the GloVe words
    chars: tuple[str, ...]  # PAD, UNK, then the characters
    max_words: int = MAX_WORDS
    _word_index: dict[str, int] = field(init=False, repr=False, compare=False)
    _char_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_word_index", {word: i for i, word in enumerate(self.words)})
        object.__setattr__(self, "_char_index", {char: i for i, char in enumerate(self.chars)})

    @property
    def glove_words(self) -> tuple[str, ...]:
        """The words whose vectors the GloVe matrix holds, row k for word id k + 2."""
        return self.words[2:]

    def word_ids(self, tokens: Sequence[str]) -> np.ndarray:
        return np.array([self._word_index.get(t, UNK_ID) for t in tokens[: self.max_words]], dtype=np.int32)

    def char_ids(self, tokens: Sequence[str]) -> list[np.ndarray]:
        index = self._char_index
        return [np.array([index.get(c, UNK_ID) for c in t], dtype=np.int32) for t in tokens[: self.max_words]]

    def sha256(self) -> str:
        """Identifies the vocabulary (words and characters in id order) in provenance."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.words).encode())
        digest.update(b"\0")
        digest.update("\n".join(self.chars).encode())
        return digest.hexdigest()


def count(token_lists: Iterable[Sequence[str]]) -> tuple[Counter[str], Counter[str]]:
    words: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    for tokens in token_lists:
        words.update(tokens)
        for token in tokens:
            chars.update(token)
    return words, chars


def build_vocabulary(
    token_lists: Iterable[Sequence[str]], in_glove: Callable[[str], bool], min_char_count: int = MIN_CHAR_COUNT
) -> Vocabulary:
    """The vocabularies from the tokens of the vocabulary splits; in_glove(word) says whether GloVe has it."""
    words, chars = count(token_lists)
    glove_words = [word for word, _ in words.most_common() if in_glove(word)]
    kept_chars = [char for char, n in chars.most_common() if n >= min_char_count]
    return Vocabulary((PAD, UNK, *glove_words), (PAD, UNK, *kept_chars))
