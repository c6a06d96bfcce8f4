"""A safety classifier's scores of a text that grows, as a streamed reply does, hashing only what
was added since the last whitespace.

`SafetyClassifier.scores` hashes the whole text (word 1-2-grams and character 3-5-grams inside
words, each vectoriser's counts L2-normalised). A reply checked at every chunk would be hashed
again from its start each time. Cut at whitespace, a text's n-grams are those of its two parts
plus one word bigram across the cut (no word token and no whitespace-delimited word spans
whitespace), so the counts of everything up to the last whitespace are kept, with their dot
product with the weights and their squared norm, and each check hashes only the words after it.
The scores equal `SafetyClassifier.scores` of the whole text (tests/test_growing_text.py).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
from sklearn.utils import murmurhash3_32

if TYPE_CHECKING:
    from gemini_jax.safety.classifier import SafetyClassifier


class _Counts:
    """One vectoriser's n-gram counts of the committed text: index -> count, their dot product
    with the weights ([C]) and their squared norm."""

    def __init__(self, categories: int):
        self.counts: dict[int, float] = {}
        self.dot = np.zeros(categories)
        self.norm2 = 0.0

    def with_added(self, indices: np.ndarray, values: np.ndarray, coef: np.ndarray) -> tuple[np.ndarray, float]:
        """(dot, squared norm) of these counts plus the given ones, without keeping them."""
        before = np.array([self.counts.get(int(i), 0.0) for i in indices])
        norm2 = self.norm2 + float(np.sum((before + values) ** 2 - before ** 2))
        return self.dot + values @ coef[indices], norm2

    def add(self, indices: np.ndarray, values: np.ndarray, coef: np.ndarray) -> None:
        self.dot, self.norm2 = self.with_added(indices, values, coef)
        for i, v in zip(indices.tolist(), values.tolist()):
            self.counts[i] = self.counts.get(i, 0.0) + v


class GrowingTextScorer:
    """`scores(text)`: the classifier's probabilities for `text`, which should extend the text of
    the previous call (another text starts over)."""

    def __init__(self, classifier: SafetyClassifier):
        words, chars = classifier.hashers
        self._categories = classifier.categories
        self._width = words.n_features
        self._coef = (classifier.coef_by_feature[:self._width], classifier.coef_by_feature[self._width:])
        self._intercept = classifier.intercept.astype(np.float64)
        self._word_tokens = words.build_tokenizer()
        self._word_ngrams = words.build_analyzer()
        self._char_ngrams = chars.build_analyzer()
        self._start()

    def _start(self) -> None:
        self._committed = ""  # ends at whitespace, or is empty
        self._last_word: str | None = None  # the committed text's last word token
        self._counts = (_Counts(len(self._categories)), _Counts(len(self._categories)))

    def _ngrams(self, part: str) -> tuple[list[str], list[str], str | None]:
        """Word and character n-grams of `part` (text that follows the committed text), with the
        bigram across the cut, and the part's last word token."""
        lowered = part.lower()
        words = self._word_ngrams(part)
        tokens = self._word_tokens(lowered)
        if tokens and self._last_word is not None:
            words.append(f"{self._last_word} {tokens[0]}")
        return words, self._char_ngrams(part), tokens[-1] if tokens else self._last_word

    def _hashed(self, ngrams: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(indices, counts) of the n-grams, hashed as HashingVectorizer does (its FeatureHasher
        takes |murmurhash3_32(utf-8 bytes, seed 0)| modulo the width; building its sparse row
        costs ~0.1 ms, several times the hashing of a chunk's few n-grams)."""
        counts = Counter(abs(murmurhash3_32(g, seed=0)) % self._width for g in ngrams)
        return (np.fromiter(counts.keys(), np.int64, len(counts)),
                np.fromiter(counts.values(), np.float64, len(counts)))

    def scores(self, text: str) -> dict[str, float]:
        if not text.startswith(self._committed):
            self._start()
        cut = _last_whitespace_end(text, len(self._committed))
        if cut > len(self._committed):
            words, chars, last = self._ngrams(text[len(self._committed):cut])
            for counts, coef, ngrams in zip(self._counts, self._coef, (words, chars)):
                counts.add(*self._hashed(ngrams), coef)
            self._committed, self._last_word = text[:cut], last
        words, chars, _ = self._ngrams(text[cut:])
        logits = self._intercept.copy()
        for counts, coef, ngrams in zip(self._counts, self._coef, (words, chars)):
            dot, norm2 = counts.with_added(*self._hashed(ngrams), coef)
            if norm2 > 0:
                logits += dot / np.sqrt(norm2)
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        return {c: float(p) for c, p in zip(self._categories, probabilities)}


def _last_whitespace_end(text: str, start: int) -> int:
    """The index just past the last whitespace character of text[start:] (`start` if none)."""
    for i in range(len(text) - 1, start - 1, -1):
        if text[i].isspace():
            return i + 1
    return start
