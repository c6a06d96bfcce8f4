"""Protocols against a scripted fake model and hand-computed answers."""

import math

import pytest

from gemini_jax.evals import protocols as p


class ScriptedModel:
    """Answers from tables; records every call so tests can check what was asked."""

    def __init__(self, samples=None, greedy=None, loglik=None):
        self.samples, self.greedy, self.loglik, self.calls = samples or {}, greedy or {}, loglik or {}, []

    def generate(self, prompts, *, temperature, num_samples, seed, max_tokens, stop):
        self.calls.append(("generate", tuple(prompts), temperature, num_samples))
        if temperature == 0.0:
            return [[self.greedy[q]] * num_samples for q in prompts]
        return [list(self.samples[q][:num_samples]) for q in prompts]

    def loglikelihood(self, pairs):
        self.calls.append(("loglikelihood", tuple(pairs)))
        return [self.loglik[pair] for pair in pairs]


SHOTS = [("1+1?", "2"), ("2+2?", "4"), ("3+3?", "6")]


def test_few_shot_prompt_layout():
    assert p.few_shot_prompt("5+5?", SHOTS, k=2) == "Q: 1+1?\nA: 2\n\nQ: 2+2?\nA: 4\n\nQ: 5+5?\nA:"
    assert p.few_shot_prompt("5+5?", SHOTS, k=0) == "Q: 5+5?\nA:"
    with pytest.raises(ValueError, match=r"k must be in \[0, 3\].*got 4"):
        p.few_shot_prompt("5+5?", SHOTS, k=4)


def test_multiple_choice_by_loglikelihood_and_by_generation():
    question = p.multiple_choice_question("Capital of France?", ["Lyon", "Paris", "Nice"])
    assert question == "Capital of France?\nA. Lyon\nB. Paris\nC. Nice"
    prompt = question + "\nAnswer:"
    loglik = {(prompt, " Lyon"): -3.0, (prompt, " Paris"): -4.0, (prompt, " Nice"): -9.0}
    model = ScriptedModel(loglik=loglik, greedy={prompt: " B, because"})
    assert p.choose_by_loglikelihood(model, prompt, ["Lyon", "Paris", "Nice"]) == 0
    # Per character: Lyon -3/4 = -0.75, Paris -4/5 = -0.8: still Lyon; make Paris win by length.
    loglik[(prompt, " Paris")] = -3.5  # -0.7 per character
    assert p.choose_by_loglikelihood(model, prompt, ["Lyon", "Paris", "Nice"], per_char=True) == 1
    assert p.choose_by_loglikelihood(model, prompt, ["Lyon", "Paris", "Nice"]) == 0
    assert p.choose_by_generation(model, prompt, 3) == 1
    model.greedy[prompt] = " I am not sure"
    assert p.choose_by_generation(model, prompt, 3) is None  # "I" is not one of A-C


def test_loglikelihood_ties_go_to_the_first_choice():
    model = ScriptedModel(loglik={("q", " x"): -1.0, ("q", " y"): -1.0})
    assert p.choose_by_loglikelihood(model, "q", ["x", "y"]) == 0


def test_greedy_asks_for_temperature_zero():
    model = ScriptedModel(greedy={"a": "1", "b": "2"})
    assert p.greedy(model, ["a", "b"]) == ["1", "2"]
    assert model.calls == [("generate", ("a", "b"), 0.0, 1)]


def test_majority_vote_counts_and_breaks_ties_by_first_appearance():
    assert p.majority_vote(["7", "3", "7", None]) == ("7", 0.5)
    assert p.majority_vote(["3", "7", "7", "3"]) == ("3", 0.5)  # tie: "3" came first
    assert p.majority_vote(["7", "3", "3", "7"]) == ("7", 0.5)
    assert p.majority_vote([None, None]) == (None, 0.0)
    with pytest.raises(ValueError, match="at least one answer"):
        p.majority_vote([])


def test_maj_at_k_extracts_answers_from_chains_of_thought():
    chains = ["2 and 2 make 4. The answer is 4.", "The answer is 5", "so... The answer is 4", "no idea"]
    model = ScriptedModel(samples={"q": chains})
    assert p.maj_at_k(model, "q", k=4, extract=p.answer_after()) == "4"
    assert p.maj_at_k(model, "q", k=2, extract=p.answer_after()) == "4"  # tie of 4 and 5: 4 first
    with pytest.raises(ValueError, match="returned 4 samples, 5 were asked"):
        p.maj_at_k(model, "q", k=5, extract=p.answer_after())


def test_pass_at_k_closed_form_and_edges():
    assert p.pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))  # 0.7
    assert p.pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert p.pass_at_k(5, 0, 3) == 0.0
    assert p.pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k: every 3 samples include a pass
    assert p.pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the pass rate
    assert p.pass_at_k(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100))
    for n, c, k in [(5, 2, 6), (5, 6, 1), (0, 0, 1), (5, 2, 0)]:
        with pytest.raises(ValueError, match="pass@k needs"):
            p.pass_at_k(n, c, k)


def test_uncertainty_routed_cot_uses_the_vote_only_when_consistent():
    extract = p.answer_after()
    confident = ["The answer is 4"] * 3 + ["The answer is 5"]  # consensus 0.75
    split = ["The answer is 4", "The answer is 5", "The answer is 6", "The answer is 4"]  # consensus 0.5
    model = ScriptedModel(samples={"cot1": confident, "cot2": split}, greedy={"d1": " 9", "d2": " 6"})
    routed = p.uncertainty_routed_cot(model, "cot1", "d1", k=4, threshold=0.7, extract=extract)
    assert routed == p.RoutedAnswer("4", 0.75, "cot")
    routed = p.uncertainty_routed_cot(model, "cot2", "d2", k=4, threshold=0.7, extract=extract)
    assert routed == p.RoutedAnswer("6", 0.5, "greedy")
    routed = p.uncertainty_routed_cot(model, "cot2", "d2", k=4, threshold=0.5, extract=extract)
    assert routed == p.RoutedAnswer("4", 0.5, "cot")


def test_choose_threshold_maximises_validation_accuracy():
    items = [
        p.ValidationItem("1", 1.0, "0", gold="1"),  # vote right, confident
        p.ValidationItem("2", 0.8, "0", gold="2"),  # vote right
        p.ValidationItem("3", 0.6, "4", gold="4"),  # vote wrong, greedy right
        p.ValidationItem("5", 0.4, "6", gold="6"),  # vote wrong, greedy right
    ]
    # Right answers by threshold: 0.4 -> 2 (all votes), 0.6 -> 3, 0.8 -> 4, 1.0 -> 3, inf -> 2 (all greedy).
    assert p.choose_threshold(items) == (0.8, 1.0)
    assert p.choose_threshold(items, [0.4, 0.6]) == (0.6, 0.75)
    assert p.choose_threshold(items, [0.9, 1.0]) == (0.9, 0.75)  # tie: the lower threshold
    with pytest.raises(ValueError, match="at least one validation item"):
        p.choose_threshold([])
