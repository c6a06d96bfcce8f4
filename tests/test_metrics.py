"""Each metric against published examples, hand-computed values, or its reference library."""

import math

import pytest

from gemini_jax.evals import metrics as m


@pytest.mark.parametrize("raw, normalised", [
    ("Two dogs.", "2 dogs"),  # number word -> digit, final period dropped
    ("dont", "don't"),  # contraction restored
    ("the sky", "sky"),  # article dropped
    ("black-and-white", "black and white"),  # a hyphen between words becomes a space
    ("2.5", "2.5"),  # a decimal point stays
    ("1,000", "1000"),  # a comma inside a number vanishes
    ("red, white", "red white"),
    ("None", "0"),
])
def test_vqa_normalisation(raw, normalised):
    assert m.normalize_vqa(raw) == normalised


def test_vqa_accuracy_averages_over_leave_one_out_subsets():
    # 3 of 10 humans said "2": leaving out one of them leaves 2 matches (2/3), any other 3 (1).
    assert m.vqa_accuracy("two", ["2"] * 3 + ["3"] * 7) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)  # 0.9
    assert m.vqa_accuracy("2", ["2"] * 4 + ["3"] * 6) == 1.0
    assert m.vqa_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(9 * (1 / 3) / 10)  # 0.3
    assert m.vqa_accuracy("4", ["2"] * 10) == 0.0
    assert m.vqa_accuracy("Yes.", ["yes"] * 10) == 1.0


def test_exact_match_normalises_case_punctuation_and_articles():
    assert m.exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert m.exact_match("Eiffel", ["eiffel tower", "tower"]) == 0.0


def test_anls_is_one_minus_normalised_edit_distance_below_the_threshold():
    assert m.anls("hallo", ["hello"]) == pytest.approx(0.8)  # 1 edit / 5 characters
    assert m.anls("Hello ", ["xyz", "hello"]) == 1.0  # case and spaces ignored, best gold
    assert m.anls("ab", ["ax"]) == 0.0  # distance 0.5 reaches the threshold
    assert m.anls("abcd", ["abxd"]) == pytest.approx(0.75)


def test_relaxed_accuracy_allows_five_percent_on_numbers_only():
    assert m.relaxed_accuracy("104", ["100"]) == 1.0
    assert m.relaxed_accuracy("105.1", ["100"]) == 0.0
    assert m.relaxed_accuracy("12%", ["0.12"]) == 1.0
    assert m.relaxed_accuracy("0.01", ["0"]) == 0.0  # no relative tolerance around 0
    assert m.relaxed_accuracy("Red", ["red"]) == 1.0
    assert m.relaxed_accuracy("reds", ["red"]) == 0.0


def test_drop_f1_bag_of_words_with_number_rule():
    # pred tokens [1000.0, people], gold [1000.0, persons]: overlap 1 -> P = R = 1/2.
    assert m.drop_f1("the 1,000 people", ["1000 persons"]) == pytest.approx(0.5)
    # pred [1000.0], gold [1000.0, people]: P = 1, R = 1/2 -> F1 = 2/3.
    assert m.drop_f1("1000", ["1000 people"]) == pytest.approx(2 / 3)
    assert m.drop_f1("in 1999", ["1998"]) == 0.0  # wrong number: no credit for overlap
    # Gold "1998 games" has the wrong number (0); gold "1999": P = 1/3, R = 1 -> F1 = 1/2.
    assert m.drop_f1("in 1999 games", ["1998 games", "1999"]) == pytest.approx(0.5)


def test_bleu_hand_computed_brevity_penalty():
    # All n-gram precisions are 1; the hypothesis has 4 of 6 reference words: BP = exp(1 - 6/4).
    assert m.bleu(["a b c d"], [["a b c d e f"]]) == pytest.approx(100 * math.exp(-0.5))
    assert m.bleu(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(100.0)


def test_chrf_hand_computed():
    # "abc" vs "abd": char 1-grams P = R = 2/3, 2-grams 1/2, 3-grams 0 (no longer n-grams exist).
    assert m.chrf(["abc"], [["abd"]]) == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)


def test_wer_and_cer():
    assert m.wer(["the cat sit"], ["the cat sat"]) == pytest.approx(1 / 3)
    assert m.wer(["a b"], ["a b c d"]) == pytest.approx(0.5)  # two deletions over four words
    assert m.cer(["abce"], ["abcd"]) == pytest.approx(0.25)


def test_cider_d_hand_computed():
    # Two images, every n-gram in one image's references only: idf = log 2 for all.
    # Image 2 is a perfect 2-word caption: cosine 1 at n = 1, 2, nothing at n = 3, 4 -> 10 * 2/4 = 5.
    # Image 1, "a" vs "a b": unigram cosine 1/sqrt(2), length penalty exp(-1/72), n >= 2 empty.
    scores = [10 / 4 * (1 / math.sqrt(2)) * math.exp(-1 / 72), 5.0]
    assert m.cider_d(["a", "c d"], [["a b"], ["c d"]]) == pytest.approx(sum(scores) / 2)


def test_cider_d_matches_pycocoevalcap():
    cider = pytest.importorskip("pycocoevalcap.cider.cider")
    refs = [["a man rides a horse", "a person riding a brown horse"], ["two dogs play in the snow", "dogs in snow"],
            ["a plate of food on a table", "food on a white plate"]]
    preds = ["a man riding a horse", "a dog in the snow", "a table with a plate"]
    expected, _ = cider.Cider().compute_score(dict(enumerate(refs)), {i: [p] for i, p in enumerate(preds)})
    assert m.cider_d(preds, refs) == pytest.approx(expected)


def test_compute_averages_and_refuses_bad_input():
    assert m.compute("exact_match", ["a", "b"], [["a"], ["c"]]) == 0.5
    with pytest.raises(ValueError, match="unknown metric 'bleurt'.*accepted: exact_match"):
        m.compute("bleurt", ["a"], [["a"]])
    with pytest.raises(ValueError, match="no predictions"):
        m.compute("anls", [], [])
    with pytest.raises(ValueError, match="1 predictions but 2 references"):
        m.compute("anls", ["a"], [["a"], ["b"]])
    with pytest.raises(ValueError, match=r"references\[0\] must be a non-empty list"):
        m.compute("anls", ["a"], ["a"])
    with pytest.raises(ValueError, match="same number of references"):
        m.bleu(["a", "b"], [["a"], ["b", "c"]])
