"""Safety classifiers: one logistic regression per harm category on hashed word 1-2-grams and
character 3-5-grams (the features of the data pipeline's quality classifier).

A request is flagged in a category when its probability reaches that category's threshold; its
probability is the highest over its readings (safety/readings.py: as written, and with base64 or
ROT13 decoded), so that an encoded request is read as what it encodes.
Thresholds are chosen on validation data by `with_thresholds_from`: by default the threshold with
the best validation F1 (missed harm and over-refusal of benign look-alikes both count); with
`min_precision=P`, the lowest threshold whose validation precision is at least P (the most harm
caught while at most a share 1 - P of flags are false alarms), the best F1 where none reaches it.

`save(dir)` writes `classifier.npz` (weights, compressed; read with allow_pickle=False) and
`classifier.json` (categories, thresholds and how each was chosen).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from gemini_jax.data.prepare.classifier import HASHED_FEATURES, hashed_features, hashing_vectorizers
from gemini_jax.safety.readings import readings

FORMAT = 1
WEIGHTS_FILE, META_FILE = "classifier.npz", "classifier.json"
DEFAULT_THRESHOLD = 0.5


class SafetyClassifier:
    """`scores(texts)`: per category, the probability that each text is a harmful request of it."""

    def __init__(self, *, categories: Sequence[str], coef: np.ndarray, intercept: np.ndarray,
                 thresholds: dict[str, float] | None = None, rules: dict[str, str] | None = None):
        self.categories = tuple(categories)
        width = 2 * HASHED_FEATURES
        if coef.shape != (len(self.categories), width) or intercept.shape != (len(self.categories),):
            raise ValueError(f"safety classifier weights must have shapes ({len(self.categories)}, {width}) and "
                             f"({len(self.categories)},), got {coef.shape} and {intercept.shape}")
        self.coef = coef.astype(np.float32)  # [C, F]
        # float64 like the hashed features, so that scipy reads it in place (a float32 copy is converted
        # on every product: ~5 ms a text where a serving filter scores every chunk of a stream).
        self.coef_by_feature = np.ascontiguousarray(self.coef.T, dtype=np.float64)  # [F, C]
        self.intercept = intercept.astype(np.float32)  # [C]
        self.thresholds = {c: float((thresholds or {}).get(c, DEFAULT_THRESHOLD)) for c in self.categories}
        self.rules = {c: (rules or {}).get(c, "default") for c in self.categories}
        self.hashers = hashing_vectorizers()  # shared with GrowingTextScorer, which hashes the same way

    @classmethod
    def train(cls, texts: Sequence[str], categories_per_text: Sequence[Collection[str]], *,
              categories: Sequence[str], regularization: float = 1.0) -> SafetyClassifier:
        """`categories_per_text[i]`: the categories text i is harmful in (empty: benign). Each
        category's regression sees its texts as positives and every other text as a negative.
        Thresholds start at 0.5; choose them on validation with `with_thresholds_from`."""
        labels = _labels(texts, categories_per_text, categories)  # [N, C]
        missing = [c for c, column in zip(categories, labels.T) if column.all() or not column.any()]
        if missing:
            raise ValueError(f"each category needs harmful and other texts to train on; {missing} have only one kind")
        features = hashed_features(hashing_vectorizers(), texts)
        coef, intercept = [], []
        for column in labels.T:
            model = LogisticRegression(C=regularization, max_iter=1000, class_weight="balanced")
            model.fit(features, column)
            coef.append(model.coef_[0])
            intercept.append(model.intercept_[0])
        return cls(categories=categories, coef=np.stack(coef), intercept=np.array(intercept))

    def scores(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Per category, each text's probability, read as written."""
        logits = hashed_features(self.hashers, texts) @ self.coef_by_feature + self.intercept  # [N, C]
        probabilities = 1.0 / (1.0 + np.exp(-logits))
        return {c: probabilities[:, i] for i, c in enumerate(self.categories)}

    def request_scores(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Per category, each text's highest probability over its readings (safety/readings.py)."""
        views = [readings(t) for t in texts]
        owner = np.repeat(np.arange(len(texts)), [len(v) for v in views])
        out = {}
        for category, probabilities in self.scores([v for vs in views for v in vs]).items():
            out[category] = np.zeros(len(texts), probabilities.dtype)
            np.maximum.at(out[category], owner, probabilities)
        return out

    def flags(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Per category, bool[N]: whether each text (its highest reading) reaches the category's threshold."""
        return {c: s >= self.thresholds[c] for c, s in self.request_scores(texts).items()}

    def with_thresholds_from(self, texts: Sequence[str], categories_per_text: Sequence[Collection[str]], *,
                             min_precision: float | None = None) -> SafetyClassifier:
        """A copy whose thresholds are chosen on these (validation) texts, as the module says."""
        labels = _labels(texts, categories_per_text, self.categories)
        thresholds, rules = {}, {}
        for (category, score), positive in zip(self.request_scores(texts).items(), labels.T):
            thresholds[category], rules[category] = choose_threshold(score, positive, min_precision=min_precision)
        return SafetyClassifier(categories=self.categories, coef=self.coef, intercept=self.intercept,
                                thresholds=thresholds, rules=rules)

    def save(self, directory: str | os.PathLike) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out / WEIGHTS_FILE, coef=self.coef, intercept=self.intercept)
        meta = {"format": FORMAT, "features": HASHED_FEATURES, "categories": list(self.categories),
                "thresholds": self.thresholds, "threshold_rules": self.rules}
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SafetyClassifier:
        where = Path(directory)
        try:
            meta = json.loads((where / META_FILE).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{where / META_FILE}: not a readable safety classifier description ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("features") != HASHED_FEATURES:
            raise ValueError(f"{where / META_FILE}: not a safety classifier of this version (expected format {FORMAT} "
                             f"with {HASHED_FEATURES} features per vectoriser)")
        with np.load(where / WEIGHTS_FILE, allow_pickle=False) as data:
            return cls(categories=meta["categories"], coef=data["coef"], intercept=data["intercept"],
                       thresholds=meta["thresholds"], rules=meta.get("threshold_rules"))


def choose_threshold(scores: np.ndarray, positive: np.ndarray, *,
                     min_precision: float | None = None) -> tuple[float, str]:
    """(threshold, rule): the score with the best F1 (flagging score >= threshold); with
    `min_precision`, the lowest score at which precision reaches it where one does; 0.5 when
    there are no positives."""
    if not positive.any():
        return DEFAULT_THRESHOLD, "default: no positive validation examples"
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hits = scores[order], positive[order]
    true_pos = np.cumsum(hits)  # flagging the first k+1 texts
    flagged = np.arange(1, len(scores) + 1)
    last_of_tie = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]  # a threshold flags all tied scores
    precision = true_pos / flagged
    recall = true_pos / positive.sum()
    if min_precision is not None:
        precise = np.flatnonzero(last_of_tie & (precision >= min_precision))
        if precise.size:
            return float(sorted_scores[precise[-1]]), f"lowest with validation precision >= {min_precision:g}"
    f1 = np.where(last_of_tie, 2 * precision * recall / np.maximum(precision + recall, 1e-12), -1.0)
    k = int(np.argmax(f1))
    missed = "" if min_precision is None else f" (precision {min_precision:g} not reached)"
    return float(sorted_scores[k]), f"best validation F1{missed}"


def _labels(texts: Sequence[str], categories_per_text: Sequence[Collection[str]], categories: Sequence[str]) -> np.ndarray:
    """bool[N, C]: whether text i is harmful in category j."""
    if len(texts) != len(categories_per_text):
        raise ValueError(f"got {len(texts)} texts but {len(categories_per_text)} category sets")
    known = set(categories)
    out = np.zeros((len(texts), len(categories)), bool)
    for i, harmful in enumerate(categories_per_text):
        if isinstance(harmful, str):
            raise ValueError(f"categories_per_text[{i}] must be a collection of category names, got the string "
                             f"{harmful!r} (write ({harmful!r},))")
        unknown = set(harmful) - known
        if unknown:
            raise ValueError(f"categories_per_text[{i}] names {sorted(unknown)}, not among the categories "
                             f"{list(categories)}")
        out[i] = [c in harmful for c in categories]
    return out
