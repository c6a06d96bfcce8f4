"""Per-category precision, recall and F1 of a safety classifier at its thresholds.

For category c, the positives are the refuse requests of c; every other request (allow requests,
and refuse requests of other categories) is a negative. The row "any" is the serving decision:
a request is refused when any category flags it, and the positives are all refuse requests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from gemini_jax.safety.classifier import SafetyClassifier
from gemini_jax.safety.requests import SafetyRequest

ANY = "any"


@dataclasses.dataclass(frozen=True)
class Metrics:
    positives: int  # requests to refuse
    negatives: int
    true_positives: int
    false_positives: int  # benign (or other-category) requests flagged

    @property
    def precision(self) -> float | None:  # None: nothing was flagged
        flagged = self.true_positives + self.false_positives
        return self.true_positives / flagged if flagged else None

    @property
    def recall(self) -> float | None:  # None: there was nothing to flag
        return self.true_positives / self.positives if self.positives else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        return None if p is None or r is None or p + r == 0 else 2 * p * r / (p + r)

    def to_json(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "positives": self.positives,
                "negatives": self.negatives, "true_positives": self.true_positives,
                "false_positives": self.false_positives}


def _metrics(flagged: np.ndarray, positive: np.ndarray) -> Metrics:
    return Metrics(positives=int(positive.sum()), negatives=int((~positive).sum()),
                   true_positives=int((flagged & positive).sum()), false_positives=int((flagged & ~positive).sum()))


def evaluate(classifier: SafetyClassifier, requests: Sequence[SafetyRequest]) -> dict[str, Metrics]:
    """Metrics per category of the classifier, then "any"."""
    if not requests:
        raise ValueError("no requests to evaluate")
    flags = classifier.flags([r.text for r in requests])
    out = {}
    for category in classifier.categories:
        positive = np.array([category in r.harmful_in for r in requests])
        out[category] = _metrics(flags[category], positive)
    refused = np.any(np.stack(list(flags.values())), axis=0)
    out[ANY] = _metrics(refused, np.array([r.label == "refuse" for r in requests]))
    return out


def format_table(results: dict[str, dict[str, Metrics]]) -> str:
    """One row per (set, category): precision, recall, F1 and the counts they come from."""
    rows = [f"{'set':<14} {'category':<12} {'precision':>9} {'recall':>7} {'f1':>6} {'refuse':>7} {'other':>6}"]
    for name, metrics in results.items():
        for category, m in metrics.items():
            cells = [_cell(m.precision, 9), _cell(m.recall, 7), _cell(m.f1, 6)]
            rows.append(f"{name:<14} {category:<12} {' '.join(cells)} {m.positives:>7} {m.negatives:>6}")
    return "\n".join(rows)


def _cell(value: float | None, width: int) -> str:
    return f"{'n/a' if value is None else f'{value:.3f}':>{width}}"
