"""Heuristic quality rules for raw-text documents (Gopher and C4), and a mode for source code.

Sources of the rules and of the default thresholds:
- Gopher: Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
  Gopher", arXiv 2112.11446, Appendix A.1.1 (quality filters) and Table A1 (repetition filters):
  50..100,000 words, mean word length 3..10 characters, symbol-to-word ratio < 0.1 for "#" and for
  "..." each, < 90% of lines starting with a bullet, < 30% of lines ending with an ellipsis, >= 80% of
  words holding an alphabetic character, >= 2 of the stop words {the, be, to, of, and, that, have,
  with}; duplicate lines <= 30% of lines and <= 20% of characters, duplicate paragraphs <= 30% of
  paragraphs and <= 20% of characters, the most frequent 2/3/4-gram covering <= 20%/18%/16% of the
  characters.
- C4: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
  Transformer", JMLR 21(140), Section 2.2: pages containing "lorem ipsum" are removed.

Source code breaks prose rules (few stop words, symbols, short "words"), so `HeuristicQuality.for_code()`
keeps only the length and repetition rules, at thresholds that keep ordinary code (generated tables and
repeated boilerplate still go).

A filter returns None to keep a document, or the reason it is removed, naming the rule:
`"gopher: mean word length 1.2 < 3"`.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from gemini_jax.data.prepare.hashing import word_hashes

_BULLETS = ("•", "●", "○", "▪", "◦", "‣", "⁃", "-", "*", "·")
_ELLIPSES = ("...", "…")
_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_PARAGRAPH_BREAK = re.compile(r"\n{2,}")
_ALPHA = re.compile(r"[^\W\d_]")  # a letter in any script
_PRIME = np.uint64(1099511628211)


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeuristicQuality:
    """Gopher/C4 rules with their published thresholds; `code=True` applies only length and repetition."""

    name: str = "quality"
    code: bool = False
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # "#" and "..." each, per word
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    min_alpha_words: float = 0.8
    min_stop_words: int = 2
    max_duplicate_lines: float = 0.3
    max_duplicate_line_chars: float = 0.2
    max_duplicate_paragraphs: float = 0.3
    max_duplicate_paragraph_chars: float = 0.2
    max_top_ngram_chars: tuple[float, float, float] = (0.20, 0.18, 0.16)  # n = 2, 3, 4
    lorem_ipsum: bool = True

    @classmethod
    def for_code(cls, **overrides) -> HeuristicQuality:
        """Length and repetition rules only, loosened for code: a short module, repeated statements
        (`else:`, `return None`, `})`) and repeated `self.x` n-grams are normal in Python. At these
        thresholds 0.9% of 3 KB chunks of the standard library and site-packages are removed, mostly
        generated tables (encodings/cp*.py) and tests that repeat one call; Gopher's prose values
        would remove 2.7%."""
        settings = dict(code=True, min_words=5, max_duplicate_lines=0.7, max_duplicate_line_chars=0.6,
                        max_duplicate_paragraphs=0.7, max_duplicate_paragraph_chars=0.6,
                        max_top_ngram_chars=(0.5, 0.45, 0.4))
        return cls(**(settings | overrides))

    def __call__(self, text: str) -> str | None:
        tokens = text.split()
        reason = self._length(tokens) or self._repetition(text, tokens)
        if reason or self.code:
            return reason
        return self._prose(text, tokens)

    def _length(self, tokens: list[str]) -> str | None:
        if len(tokens) < self.min_words:
            return f"gopher: {len(tokens)} words < {self.min_words}"
        if len(tokens) > self.max_words:
            return f"gopher: {len(tokens)} words > {self.max_words}"
        return None

    def _prose(self, text: str, tokens: list[str]) -> str | None:
        mean_length = sum(map(len, tokens)) / len(tokens)
        if mean_length < self.min_mean_word_length:
            return f"gopher: mean word length {mean_length:.1f} < {self.min_mean_word_length:g}"
        if mean_length > self.max_mean_word_length:
            return f"gopher: mean word length {mean_length:.1f} > {self.max_mean_word_length:g}"
        for symbol in ("#", "..."):
            ratio = text.count(symbol) / len(tokens)
            if ratio > self.max_symbol_word_ratio:
                return f"gopher: {symbol!r} per word {ratio:.2f} > {self.max_symbol_word_ratio:g}"
        lines = [line for line in text.split("\n") if line.strip()]
        bullets = sum(line.lstrip().startswith(_BULLETS) for line in lines) / len(lines)
        if bullets > self.max_bullet_lines:
            return f"gopher: lines starting with a bullet {bullets:.2f} > {self.max_bullet_lines:g}"
        ellipses = sum(line.rstrip().endswith(_ELLIPSES) for line in lines) / len(lines)
        if ellipses > self.max_ellipsis_lines:
            return f"gopher: lines ending with an ellipsis {ellipses:.2f} > {self.max_ellipsis_lines:g}"
        alpha = sum(1 for token in tokens if _ALPHA.search(token)) / len(tokens)
        if alpha < self.min_alpha_words:
            return f"gopher: words with a letter {alpha:.2f} < {self.min_alpha_words:g}"
        stop_words = sum(1 for token in tokens if token.lower() in _STOP_WORDS)
        if stop_words < self.min_stop_words:
            return f"gopher: {stop_words} stop words < {self.min_stop_words}"
        if self.lorem_ipsum and "lorem ipsum" in text.lower():
            return "c4: contains 'lorem ipsum'"
        return None

    def _repetition(self, text: str, tokens: list[str]) -> str | None:
        for what, parts, max_parts, max_chars in (
            ("lines", text.split("\n"), self.max_duplicate_lines, self.max_duplicate_line_chars),
            ("paragraphs", _PARAGRAPH_BREAK.split(text), self.max_duplicate_paragraphs,
             self.max_duplicate_paragraph_chars),
        ):
            parts = [p for p in map(str.strip, parts) if p]
            if not parts:
                continue
            seen: set[str] = set()
            repeats, repeated_chars = 0, 0
            for part in parts:
                if part in seen:
                    repeats += 1
                    repeated_chars += len(part)
                seen.add(part)
            if repeats / len(parts) > max_parts:
                return f"gopher: duplicate {what} {repeats / len(parts):.2f} > {max_parts:g}"
            share = repeated_chars / sum(map(len, parts))
            if share > max_chars:
                return f"gopher: characters in duplicate {what} {share:.2f} > {max_chars:g}"
        return self._top_ngrams(text)

    def _top_ngrams(self, text: str) -> str | None:
        """Gopher's repetition of the most frequent n-gram: its characters times its count, over
        the characters of all words (words as the other stages read them: lowercased runs of
        letters, digits and underscores)."""
        tokens, hashes = word_hashes(text)
        lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))  # [W]
        total = lengths.sum()
        grams = hashes
        for n, limit in zip((2, 3, 4), self.max_top_ngram_chars):
            grams = grams[:-1] * _PRIME + hashes[n - 1:]  # [W - n + 1]: a polynomial hash suffices to count
            if len(grams) < 2:
                break
            ordered = np.sort(grams)
            run_starts = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
            if len(run_starts) == len(ordered) - 1:  # every gram distinct
                continue
            bounds = np.concatenate(([0], run_starts, [len(ordered)]))
            runs = bounds[1:] - bounds[:-1]
            longest = np.argmax(runs)
            count = runs[longest]
            first = np.argmax(grams == ordered[bounds[longest]])
            chars = lengths[first:first + n].sum()
            share = float(count * chars / total)
            if share > limit:
                return f"gopher: top {n}-gram covers {share:.2f} of characters > {limit:g}"
        return None
