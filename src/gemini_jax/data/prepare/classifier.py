"""A model-based quality score: hashed word 1-2-grams and character 3-5-grams into a logistic regression.

Trained on texts the user calls good and bad (e.g. reference documents vs. raw crawl), like the
classifiers GPT-3 and PaLM used to pick web pages that resemble curated text. The hashing vectoriser
has no vocabulary to store, so the whole model is the regression's coefficients: `save` writes them
with numpy (never pickle) and `load` reads them back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression

HASHED_FEATURES = 1 << 18  # per vectoriser


def hashing_vectorizers() -> tuple[HashingVectorizer, HashingVectorizer]:
    words = HashingVectorizer(n_features=HASHED_FEATURES, ngram_range=(1, 2), alternate_sign=False, norm="l2")
    chars = HashingVectorizer(n_features=HASHED_FEATURES, analyzer="char_wb", ngram_range=(3, 5), alternate_sign=False,
                              norm="l2")
    return words, chars


class QualityClassifier:
    """`score(text)`: the probability that text is like the good examples it was trained on."""

    def __init__(self, *, coef: np.ndarray, intercept: float):
        if coef.shape != (2 * HASHED_FEATURES,):
            raise ValueError(f"classifier coefficients must have shape ({2 * HASHED_FEATURES},), got {coef.shape}")
        self.coef = coef.astype(np.float32)
        self.intercept = float(intercept)
        self._hashers = hashing_vectorizers()

    @classmethod
    def train(cls, good: Sequence[str], bad: Sequence[str], *, regularization: float = 1.0) -> QualityClassifier:
        if not good or not bad:
            raise ValueError(f"the quality classifier needs good and bad examples; got {len(good)} good, {len(bad)} bad")
        model = LogisticRegression(C=regularization, max_iter=1000, class_weight="balanced")
        labels = np.r_[np.ones(len(good)), np.zeros(len(bad))]
        model.fit(hashed_features(hashing_vectorizers(), [*good, *bad]), labels)
        return cls(coef=model.coef_[0], intercept=model.intercept_[0])

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        logits = hashed_features(self._hashers, texts) @ self.coef + self.intercept  # [N]
        return 1.0 / (1.0 + np.exp(-logits))

    def score(self, text: str) -> float:
        return float(self.scores([text])[0])

    def save(self, path: str | os.PathLike) -> None:
        """An .npz of the coefficients and intercept (plus a format number); no pickled objects."""
        np.savez(path, coef=self.coef, intercept=np.float64(self.intercept),
                 meta=np.array(json.dumps({"format": 1, "features": HASHED_FEATURES})))

    @classmethod
    def load(cls, path: str | os.PathLike) -> QualityClassifier:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != 1 or meta.get("features") != HASHED_FEATURES:
                raise ValueError(f"{path}: not a quality classifier of this version (meta {meta})")
            return cls(coef=data["coef"], intercept=float(data["intercept"]))


def hashed_features(vectorizers, texts: Sequence[str]) -> sparse.csr_matrix:
    words, chars = vectorizers
    return sparse.hstack([words.transform(texts), chars.transform(texts)], format="csr")


class ClassifierFilter:
    """Removes text whose quality score is below `threshold`."""

    name = "classifier"

    def __init__(self, classifier: QualityClassifier, threshold: float = 0.5):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"classifier threshold must be in [0, 1], got {threshold}")
        self.classifier, self.threshold = classifier, threshold

    def __call__(self, text: str) -> str | None:
        score = self.classifier.score(text)
        return f"classifier: quality score {score:.2f} < {self.threshold:g}" if score < self.threshold else None
