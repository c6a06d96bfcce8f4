"""Safety settings at serving time: a request's per-category thresholds over a SafetyClassifier.

As in the Gemini API, a request may name, for each harm category, how readily it is blocked: a
threshold in [0, 1] on the classifier's probability (lower blocks more), or "off". Categories
it does not name keep the classifier's own thresholds (chosen on validation). Both forms are
accepted:

    [{"category": "harassment", "threshold": 0.5}, {"category": "weapons", "threshold": "off"}]
    {"harassment": 0.5, "weapons": "off"}

`SafetyFilter.check(text, settings)` returns None (allowed) or a Verdict: the category with the
highest score among those at or over their threshold (the classifier's own `flags` rule, >=).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gemini_jax.data.examples import Example

if TYPE_CHECKING:
    from gemini_jax.safety.classifier import SafetyClassifier

OFF = "off"
Settings = Mapping[str, float | None]  # category -> threshold; None: the category is off


class SettingsError(ValueError):
    """Bad safety settings; `field` names where (e.g. "safety_settings[1].threshold")."""

    def __init__(self, message: str, *, field: str):
        super().__init__(message)
        self.field = field


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Why a text was blocked: the category, the classifier's score and the threshold it reached."""

    category: str
    score: float
    threshold: float

    def to_json(self, blocked: str) -> dict[str, Any]:
        """The `safety` object of a blocked reply; `blocked` is "prompt" or "response"."""
        return {"blocked": blocked, "category": self.category, "score": round(self.score, 6)}

    def describe(self, blocked: str) -> str:
        return f"blocked ({blocked}): {self.category}, score {self.score:.3f} >= threshold {self.threshold:.3f}"


class SafetyBlocked(Exception):
    """A prompt or reply the safety filter blocked: `stage` ("prompt" or "response") and `verdict`."""

    def __init__(self, stage: str, verdict: Verdict):
        super().__init__(verdict.describe(stage))
        self.stage = stage
        self.verdict = verdict


def _threshold(value: Any, field: str) -> float | None:
    if value is None or value == OFF:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        raise SettingsError(f"{field} must be a number in [0, 1] or {OFF!r} (or null), got {shown}", field=field)
    return float(value)


def _category(value: Any, categories: Sequence[str], field: str) -> str:
    if not isinstance(value, str) or value not in categories:
        shown = repr(value) if len(repr(value)) <= 40 else f"{repr(value)[:40]}..."
        raise SettingsError(f"{field} must be one of {list(categories)}, got {shown}", field=field)
    return value


def parse_settings(obj: Any, categories: Sequence[str], *, where: str = "safety_settings") -> dict[str, float | None]:
    """A request's safety settings -> {category: threshold or None (off)}, only the categories it
    names; None -> {}. Raises SettingsError naming the field (`where[i].category`, ...)."""
    if obj is None:
        return {}
    out: dict[str, float | None] = {}
    if isinstance(obj, Mapping):
        for name, value in obj.items():
            _category(name, categories, f"{where}.{str(name)[:40]}")
            out[name] = _threshold(value, f"{where}.{name}")
        return out
    if not isinstance(obj, list):
        raise SettingsError(f'{where} must be a list of {{"category": ..., "threshold": ...}} or a mapping '
                            f"category -> threshold, got {type(obj).__name__}", field=where)
    for i, item in enumerate(obj):
        field = f"{where}[{i}]"
        if not isinstance(item, Mapping) or set(item) - {"category", "threshold"} or "category" not in item:
            raise SettingsError(f'{field} must be {{"category": one of {list(categories)}, "threshold": a number in '
                                f"[0, 1] or {OFF!r}}}", field=field)
        name = _category(item["category"], categories, f"{field}.category")
        if name in out:
            raise SettingsError(f"{field}.category names {name!r} a second time", field=f"{field}.category")
        out[name] = _threshold(item.get("threshold"), f"{field}.threshold")
    return out


def prompt_text(example: Example) -> str:
    """The text of the user turns (media parts have none), one turn per line: what a prompt check reads."""
    return "\n".join("".join(p.text for p in c.parts if p.text is not None)
                     for c in example.contents if c.role == "user")


class SafetyFilter:
    """`check(text, settings)`: a Verdict when the text is blocked under these settings, else None."""

    def __init__(self, classifier: SafetyClassifier):
        self.classifier = classifier
        self.categories = classifier.categories

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SafetyFilter:
        """The classifier `gemini-jax safety train --out DIR` wrote."""
        from gemini_jax.safety.classifier import SafetyClassifier

        return cls(SafetyClassifier.load(directory))

    def thresholds(self, settings: Settings | None = None) -> dict[str, float | None]:
        """The classifier's validation thresholds, overridden by the request's own."""
        return {**self.classifier.thresholds, **(settings or {})}

    def check(self, text: str, settings: Settings | None = None) -> Verdict | None:
        """The verdict on a prompt, read as written and with base64 or ROT13 decoded (`scores`)."""
        return _verdict(self.thresholds(settings), lambda: self.scores(text))

    def reply_check(self, settings: Settings | None = None) -> Callable[[str], Verdict | None]:
        """The verdict on one reply as it grows: each call's text extends the previous call's, and
        only what was added is hashed again (safety/growing_text.py). A reply is read as written
        (the model's own words; decoding is for what a user sends)."""
        thresholds, scores = self.thresholds(settings), self.growing_scores()
        return lambda text: _verdict(thresholds, lambda: scores(text))

    def growing_scores(self) -> Callable[[str], dict[str, float]]:
        """`scores` of a growing text, for one text at a time."""
        from gemini_jax.safety.growing_text import GrowingTextScorer

        return GrowingTextScorer(self.classifier).scores

    def require_safe(self, text: str, settings: Settings | None, *, stage: str) -> None:
        """Raises SafetyBlocked when the text is blocked: a prompt as `check` reads it, a reply
        ("response") as `reply_check` does, so that a whole reply gets the server's verdict."""
        verdict = self.check(text, settings) if stage == "prompt" else self.reply_check(settings)(text)
        if verdict is not None:
            raise SafetyBlocked(stage, verdict)

    def scores(self, text: str) -> dict[str, float]:
        """The classifier's `request_scores` for one text: the highest over its readings."""
        return {c: float(s[0]) for c, s in self.classifier.request_scores([text]).items()}


def _verdict(thresholds: Mapping[str, float | None], scores: Callable[[], dict[str, float]]) -> Verdict | None:
    """The highest-scoring category at or over its threshold; the scores are not computed when
    every category is off."""
    if all(t is None for t in thresholds.values()):
        return None
    computed = scores()
    over = [Verdict(c, computed[c], t) for c, t in thresholds.items() if t is not None and computed[c] >= t]
    return max(over, key=lambda v: v.score, default=None)
