"""Stable 64-bit hashes of words and word n-grams, vectorised with numpy.

The same text hashes to the same numbers in every process (Python's `hash` is salted per process),
so dedup signatures and decontamination grams can be computed in worker pools.
"""

from __future__ import annotations

import re

import numpy as np

WORD = re.compile(r"\w+")
_MAX_WORD_CHARS = 32  # longer words hash by their first 32 characters and their length
_PRIME = np.uint64(1099511628211)  # the FNV-64 prime: odd, so multiplying mod 2**64 loses nothing
_POWERS = _PRIME ** np.arange(_MAX_WORD_CHARS, dtype=np.uint64)


def words(text: str) -> list[str]:
    """Lowercased runs of letters, digits and underscores: punctuation and whitespace only separate."""
    return WORD.findall(text.lower())


_last: tuple[str, list[str], np.ndarray] | None = None


def word_hashes(text: str) -> tuple[list[str], np.ndarray]:
    """`words(text)` and their `hash_words`, remembered for the last text: the quality, safety,
    decontamination and near-dedup stages each ask for the same record's words in turn."""
    global _last
    if _last is None or _last[0] is not text:  # identity: the held reference keeps the id from reuse
        tokens = words(text)
        _last = (text, tokens, hash_words(tokens))
    return _last[1], _last[2]


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole 64-bit output."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_words(tokens: list[str]) -> np.ndarray:
    """uint64[len(tokens)]: one hash per word, from its code points (a polynomial over them)."""
    if not tokens:
        return np.zeros(0, np.uint64)
    chars = np.array(tokens, dtype=f"U{_MAX_WORD_CHARS}")  # truncates longer words
    points = chars.view(np.uint32).reshape(len(tokens), _MAX_WORD_CHARS).astype(np.uint64)  # [W, 32]
    lengths = np.fromiter(map(len, tokens), np.uint64, len(tokens))  # [W]
    return mix((points * _POWERS).sum(axis=1) ^ (lengths * np.uint64(0x9E3779B97F4A7C15)))


def hash_grams(hashes: np.ndarray, n: int) -> np.ndarray:
    """uint64[W - n + 1]: a hash of every run of n consecutive word hashes (empty when W < n)."""
    count = len(hashes) - n + 1
    if count <= 0:
        return np.zeros(0, np.uint64)
    return hash_grams_at(hashes, np.arange(count), n)


def hash_grams_at(hashes: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    """uint64[len(starts)]: `hash_grams(hashes, n)[starts]`, computing only those grams."""
    grams = hashes[starts]
    for j in range(1, n):
        grams = grams * _PRIME + hashes[starts + j]
    return mix(grams)
