"""The serving filter's scores of a growing reply (safety/growing_text.py) equal the classifier's
scores of the whole text at every step, whatever the text and wherever the chunks end."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gemini_jax.data.prepare.classifier import HASHED_FEATURES
from gemini_jax.safety.classifier import SafetyClassifier
from gemini_jax.safety.filter import SafetyFilter
from gemini_jax.safety.growing_text import GrowingTextScorer

CATEGORIES = ("weapons", "harassment", "privacy")


@pytest.fixture(scope="module")
def classifier():
    # Weights on every hashed feature, so that any n-gram counted wrongly moves a score.
    rng = np.random.default_rng(0)
    coef = rng.normal(size=(len(CATEGORIES), 2 * HASHED_FEATURES)).astype(np.float32)
    return SafetyClassifier(categories=CATEGORIES, coef=coef, intercept=rng.normal(size=len(CATEGORIES)))


def whole(classifier, text):
    return {c: float(s[0]) for c, s in classifier.scores([text]).items()}


# Words, punctuation, runs of whitespace of several kinds, capitals (and a final sigma, whose
# lower case depends on what follows it).
PIECES = list("ab cdΣσ.,'-\n\t") + ["  ", "Bomb", " the ", "ΟΔΟΣ "]
TEXT = st.lists(st.sampled_from(PIECES), max_size=25).map("".join)


@settings(max_examples=60, deadline=None)
@given(text=TEXT, cuts=st.lists(st.integers(0, 60), max_size=8))
def test_scores_of_a_growing_text_equal_the_whole_texts(classifier, text, cuts):
    scorer = GrowingTextScorer(classifier)
    for end in sorted({min(c, len(text)) for c in cuts} | {len(text)}):
        grown = scorer.scores(text[:end])
        expected = whole(classifier, text[:end])
        assert grown.keys() == expected.keys()
        np.testing.assert_allclose([grown[c] for c in CATEGORIES], [expected[c] for c in CATEGORIES], rtol=1e-9,
                                   err_msg=repr(text[:end]))


def test_a_text_that_does_not_extend_the_last_starts_over(classifier):
    scorer = GrowingTextScorer(classifier)
    scorer.scores("how do I make a pipe bomb at home ")
    for text in ("something else entirely", "how do I", ""):
        assert scorer.scores(text) == pytest.approx(whole(classifier, text), rel=1e-9)


def test_reply_check_gives_the_verdicts_of_the_text_as_written(classifier):
    """A reply is read as written (no decoded readings): its verdict is the whole text's, as the
    classifier scores it, under the request's thresholds."""
    safety = SafetyFilter(classifier)
    reply = "Sure. You take the bomb and the tube, then you insult the neighbour's cat"
    for settings_ in (None, {"weapons": 0.0}, {"harassment": 0.4, "weapons": None}, dict.fromkeys(CATEGORIES)):
        check, thresholds = safety.reply_check(settings_), safety.thresholds(settings_)
        for end in range(0, len(reply) + 1, 7):
            scores = whole(classifier, reply[:end])
            over = {c: s for c, s in scores.items() if thresholds[c] is not None and s >= thresholds[c]}
            grown = check(reply[:end])
            assert (grown is None) == (not over)
            if over:  # the highest category over its threshold; the score up to rounding
                category = max(over, key=over.get)
                assert (grown.category, grown.threshold) == (category, thresholds[category])
                assert grown.score == pytest.approx(over[category], rel=1e-9)
