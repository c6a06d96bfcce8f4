"""A word-list safety filter: whole words, case-insensitive (words as the other stages read them:
runs of letters, digits and underscores; a listed phrase matches its words in a row).

The shipped list is `blocklist.txt` beside this module (a short curated English list; see its header).
Even strong words turn up in quoted or reported text, so one match does not remove a document: it is
removed only when the matches exceed `max_fraction` of its words. The reason gives the count, never
the words.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources

from gemini_jax.data.prepare.hashing import WORD, word_hashes


def shipped_words() -> list[str]:
    """The entries of the shipped `blocklist.txt` (lines starting with # are comments)."""
    text = (resources.files(__package__) / "blocklist.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


class SafetyFilter:
    """Removes a document when blocklisted words make up more than `max_fraction` of its words.
    `words`: the list (default: the shipped one); an entry of several words matches as a phrase."""

    name = "safety"

    def __init__(self, words: Iterable[str] | None = None, *, max_fraction: float = 0.005):
        if not 0.0 <= max_fraction < 1.0:
            raise ValueError(f"safety max_fraction must be in [0, 1), got {max_fraction}")
        listed = shipped_words() if words is None else words
        entries = {" ".join(WORD.findall(w.lower())) for w in listed} - {""}
        self.words = frozenset(e for e in entries if " " not in e)
        phrases = sorted((e for e in entries if " " in e), key=len, reverse=True)
        self.phrases = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, phrases)) + r")(?!\w)") if phrases else None
        self.max_fraction = max_fraction

    def __call__(self, text: str) -> str | None:
        tokens, _ = word_hashes(text)
        if not tokens:
            return None
        matches = sum(1 for t in tokens if t in self.words)
        if self.phrases is not None:
            matches += len(self.phrases.findall(" ".join(tokens)))
        if matches > self.max_fraction * len(tokens):
            share = matches / len(tokens)
            return f"safety: {matches} blocklisted words in {len(tokens)} ({share:.3f} > {self.max_fraction:g})"
        return None
