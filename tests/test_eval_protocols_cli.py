"""`gemini-jax eval --protocol ...` on the benchmark fixtures, asked of scripted models whose
answers and confidences are known, so that routing decisions and scores can be computed by hand;
the canonical HumanEval solutions through the protocol path; the options refused because they
would do nothing."""

import dataclasses
import json
import re
import types

import pytest
from evals_data import make_data_dir, write_run

from gemini_jax import checkpoint, cli
from gemini_jax.config import PRESETS
from gemini_jax.evals import benchmark, humaneval
from gemini_jax.evals.protocols import Method, ProtocolSpec
from gemini_jax.evals.tasks import Settings, TaskDataError, get_task, run_task
from gemini_jax.evals.tasks.runner import COT_MAX_TOKENS

COT_CUE = get_task("mmlu").cot_cue


def question_of(prompt: str) -> str:
    """The question a k-shot prompt asks: the first line of its last block."""
    return prompt.removesuffix(COT_CUE).rsplit("\n\n", 1)[-1].split("\n", 1)[0].removeprefix("Question: ")


class ScriptedModel:
    """Answers by question: `samples[q]` for sampled generations, `greedy[q]` at temperature 0,
    log-likelihood 0 for the choice `likely[q]` and -5 for the others. Records every call."""

    def __init__(self, samples=None, greedy=None, likely=None):
        self.samples, self.greedy, self.likely, self.calls = samples or {}, greedy or {}, likely or {}, []

    def generate(self, prompts, *, temperature, num_samples, seed, max_tokens, stop):
        self.calls.append(("generate", list(prompts), temperature, num_samples, max_tokens))
        if temperature == 0.0:
            return [[self.greedy[question_of(p)]] * num_samples for p in prompts]
        return [list(self.samples[question_of(p)][:num_samples]) for p in prompts]

    def loglikelihood(self, pairs):
        self.calls.append(("loglikelihood", list(pairs)))
        return [0.0 if choice == f" {self.likely[question_of(p)]}" else -5.0 for p, choice in pairs]


@pytest.fixture
def data(tmp_path):
    return make_data_dir(tmp_path)


@pytest.fixture
def scripted_cli(monkeypatch, tmp_path):
    """Runs `gemini-jax eval` with `model` in place of the checkpoint's; returns the results JSON
    and the records."""

    def run(model, *flags):
        monkeypatch.setattr(checkpoint, "load_run", lambda *a, **k: types.SimpleNamespace(
            model=None, tokenizer=None, run_dir=tmp_path))
        monkeypatch.setattr(benchmark, "checkpoint_model", lambda context: model)
        out, records = tmp_path / "results.json", tmp_path / "records.jsonl"
        code = cli.main(["eval", "--checkpoint", str(tmp_path), *flags, "--output", str(out), "--records",
                         str(records), "--no-progress"])
        assert code == 0
        return json.loads(out.read_text()), [json.loads(line) for line in records.read_text().splitlines()]

    return run


def chains(*letters):
    """Chains of thought ending in each letter (None: one that names no answer)."""
    return [f"Some reasoning. The answer is ({x})." if x else "I cannot tell." for x in letters]


# MMLU's fixture: (question, gold) of the dev split (the shots) and of the test split.
DEV = [("What is the closest star to Earth?", "B"), ("Which planet is largest?", "C"),
       ("What orbits a planet, like Earth's Moon?", "A"), ("How many planets are in the Solar System?", "B"),
       ("What is a light-year a unit of?", "C"), ("If all A are B and x is A then x is?", "A"),
       ("What is the negation of 'p and q'?", "B"), ("Is 'p or not p' a tautology?", "A"),
       ("Modus ponens infers q from?", "A"), ("A statement that is always false is a?", "B")]
TEST = [("Which planet is known as the Red Planet?", "B"), ("What is the Sun mostly made of?", "C"),
        ("What is 'p implies q' equivalent to?", "A")]
# Per question: 8 chains of thought (consensus = the majority's count / 8) and the most likely choice.
COT = {
    DEV[0][0]: (chains(*"BBBBBBBB"), "A"),  # 1.0, vote right, direct wrong
    DEV[1][0]: (chains(*"CCCCCCCA"), "A"),  # 0.875, vote right, direct wrong
    DEV[2][0]: (chains(*"BBBBBBAA"), "A"),  # 0.75, vote wrong, direct right
    DEV[3][0]: (chains(*"BBBBBBAA"), "B"),  # 0.75, both right
    DEV[4][0]: (chains(*"CCCCCAAB"), "D"),  # 0.625, vote right, direct wrong
    DEV[5][0]: (chains(*"BBBBBAAC"), "A"),  # 0.625, vote wrong, direct right
    DEV[6][0]: (chains("D", "D", "D", "D", "B", "B", None, None), "B"),  # 0.5, vote wrong, direct right
    DEV[7][0]: (chains("A", "A", "A", "A", "B", "B", None, None), "C"),  # 0.5, vote right, direct wrong
    DEV[8][0]: (chains("D", "D", "D", "A", "A", "B", "B", None), "A"),  # 0.375, vote wrong, direct right
    DEV[9][0]: (chains("B", "B", "B", "A", "A", "C", "C", None), "B"),  # 0.375, both right
    TEST[0][0]: (chains(*"BBBBBBBA"), "A"),  # 0.875, vote right, direct wrong
    TEST[1][0]: (chains(*"AAAAAACC"), "C"),  # 0.75, vote wrong, direct right
    TEST[2][0]: (chains(*"BBBBBBBB"), "A"),  # 1.0, vote wrong, direct right
}
# Dev accuracy (of 10) by threshold, routing to the vote when consensus >= threshold:
#   0.375: 6 (every vote)   0.5: 5 + 2 = 7   0.625: 4 + 3 = 7   0.75: 3 + 4 = 7
#   0.875: 2 + 6 = 8        1.0: 1 + 6 = 7   above 1: 6 (every direct answer)
# so the threshold is 0.875 (80%). On test: 0.875 -> the vote (B, right), 0.75 -> the direct
# answer (C, right), 1.0 -> the vote (B, wrong): 2 of 3, two of them routed to the vote.


def test_mmlu_cot_routed_chooses_its_threshold_on_dev_and_routes_by_hand(data, scripted_cli):
    model = ScriptedModel(samples={q: c for q, (c, _) in COT.items()}, likely={q: d for q, (_, d) in COT.items()})
    results, records = scripted_cli(model, "--tasks", "mmlu", "--protocol", "cot-routed@8", "--data-dir", str(data))
    mmlu = results["mmlu"]
    assert mmlu["threshold"] == 0.875 and mmlu["dev_accuracy"] == pytest.approx(80.0)
    assert mmlu["dev_examples"] == 10 and mmlu["examples"] == 3 and mmlu["shots"] == 5
    assert mmlu["accuracy"] == pytest.approx(200 / 3) and mmlu["routed_to_cot"] == pytest.approx(200 / 3)
    assert [r["route"] for r in records] == ["cot", "greedy", "cot"]
    assert [r["answer"] for r in records] == ["B", "C", "B"]
    assert [r["consensus"] for r in records] == [0.875, 0.75, 1.0]
    assert [r["scores"]["accuracy"] for r in records] == [100.0, 100.0, 0.0]
    sampled = [c for c in model.calls if c[0] == "generate"]
    assert all(temperature == 0.7 and k == 8 and max_tokens == COT_MAX_TOKENS
               for _, _, temperature, k, max_tokens in sampled)
    prompts = [p for call in sampled for p in call[1]]
    assert len(prompts) == 13 and all(p.endswith("\nAnswer:" + COT_CUE) for p in prompts)
    shots = [len(re.findall(r"\nAnswer: [A-D]\n", p)) for p in prompts]
    assert shots == [4] * 10 + [5] * 3  # dev: the 4 others of its subject's split; test: 5-shot from dev
    assert all(p.count(question_of(p)) == 1 for p in prompts[:10])  # never one of its own shots


def test_cot_routed_without_a_dev_split_is_refused(data):
    task = get_task("mmlu")
    empty = dataclasses.replace(task, load=lambda folder: dataclasses.replace(task.load(folder), shots=[]))
    with pytest.raises(TaskDataError, match="chooses its threshold on the dev split.*has none"):
        run_task(empty, ScriptedModel(), data, Settings(shots=0, protocol="cot-routed@2"))


# GSM8K's test questions: 5 sampled solutions each, read by their final number.
GSM8K = {
    "Sara reads 10 pages a day for 7 days. How many pages does she read?":
        ["70 pages.\n#### 70", "#### 70", "#### 17", "so 70", "no idea"],  # 70 (3 of 5): right
    "A shop sold 1,200 cups on Monday and 300 on Tuesday. How many in all?":
        ["#### 1,500", "#### 1400", "#### 1400", "#### 1500", "the total is 1400"],  # 1400 (3 of 5): wrong
    "Ben had 9 marbles and lost 4. How many are left?":
        ["#### 5", "#### 4", "#### 13", "#### 5", "#### 4"],  # 5 and 4 tie at 2: 5, seen first: right
}


@pytest.mark.parametrize("flags", [["--protocol", "maj@5"], ["--samples", "5"]])  # the old flag: the same vote
def test_gsm8k_maj_at_k_votes_by_hand(data, scripted_cli, flags):
    model = ScriptedModel(samples=GSM8K)
    results, records = scripted_cli(model, "--tasks", "gsm8k", *flags, "--shots", "2", "--data-dir", str(data))
    assert results["gsm8k"]["exact_match"] == pytest.approx(200 / 3) and results["gsm8k"]["examples"] == 3
    assert [r["answer"] for r in records] == ["70", "1400", "5"]
    assert [r["consensus"] for r in records] == [0.6, 0.6, 0.4]
    assert [r["scores"]["exact_match"] for r in records] == [100.0, 0.0, 100.0]
    assert [c[2:4] for c in model.calls] == [(0.7, 5)]


def test_greedy_protocol_on_mmlu_reads_the_named_letter(data, scripted_cli):
    greedy = {q: answer for q, answer in zip([q for q, _ in TEST], [" B, Mars", " I think C", " (D)"])}
    model = ScriptedModel(greedy=greedy)
    results, records = scripted_cli(model, "--tasks", "mmlu", "--protocol", "greedy", "--data-dir", str(data))
    assert [r["answer"] for r in records] == ["B", "C", "D"]  # "I" is no choice: the letter among A-D
    assert results["mmlu"]["accuracy"] == pytest.approx(200 / 3)
    assert [c[2:4] for c in model.calls] == [(0.0, 1)]


class CodeModel:
    """Each HumanEval prompt's canonical solution, then bare bodies, as its samples."""

    def __init__(self):
        self.solutions = {p.prompt: p.canonical_solution for p in humaneval.load_problems()}

    def generate(self, prompts, *, temperature, num_samples, seed, max_tokens, stop):
        return [[self.solutions[p], *["    pass\n"] * (num_samples - 1)] for p in prompts]


def test_humaneval_pass_at_k_through_the_protocol_path(scripted_cli):
    results, records = scripted_cli(CodeModel(), "--tasks", "humaneval", "--protocol", "pass@2", "--limit", "6")
    # One of 2 programs passes each problem: pass@1 = 1 - C(1,1)/C(2,1) = 1/2, pass@2 = 1.
    assert results["humaneval"]["pass@1"] == 50.0 and results["humaneval"]["pass@2"] == 100.0
    assert [r["passed"] for r in records] == [1] * 6


@pytest.mark.slow
def test_canonical_humaneval_solutions_pass_164_of_164_through_the_protocol_path():
    result = run_task(get_task("humaneval"), CodeModel(), None, Settings(protocol=ProtocolSpec(Method.GREEDY)))
    assert result.metrics["examples"] == 164
    assert [r["id"] for r in result.records if r["passed"] != 1] == []
    assert result.metrics["pass@1"] == 100.0


@pytest.mark.parametrize("flags, message", [
    (["--tasks", "mmlu,hellaswag", "--protocol", "maj@8"],
     "--protocol maj@8 does not apply to hellaswag: its prompt does not name the choices by letter.*"
     r"\(it takes loglikelihood\)"),
    (["--tasks", "gsm8k", "--protocol", "cot-routed@4"], "does not apply to gsm8k: it has no chain-of-thought"),
    (["--tasks", "gsm8k", "--protocol", "loglikelihood"], "does not apply to gsm8k: it has no choices to score"),
    (["--tasks", "humaneval", "--protocol", "maj@3"], "programs are judged by their tests, not voted on"),
    (["--tasks", "wmt", "--protocol", "pass@3"], "pass@K judges programs by their tests"),
    (["--tasks", "mmlu", "--samples", "4"],
     "--samples does nothing for mmlu: it is asked by the log-likelihood of its choices"),
    (["--tasks", "gsm8k,wmt", "--samples", "4"], "--samples does nothing for wmt: it is asked greedily"),
    (["--tasks", "gsm8k", "--protocol", "maj@4", "--samples", "4"], "--samples does nothing with --protocol maj@4"),
    (["--tasks", "gsm8k", "--temperature", "0.3"], "--temperature does nothing for gsm8k: asked greedy"),
    (["--tasks", "mmlu", "--protocol", "loglikelihood", "--temperature", "1"], "--temperature does nothing for mmlu"),
    (["--tasks", "vqa", "--protocol", "greedy"], r"--protocol \(for benchmarks only\)"),
    (["--tasks", "mmlu,vqav2", "--shots", "2"], "--shots does nothing for vqav2: it is asked 0-shot"),
    (["--tasks", "hellaswag", "--shots", "0"], "--shots does nothing for hellaswag"),
])
def test_options_that_would_do_nothing_are_refused_before_the_checkpoint_loads(capsys, flags, message):
    assert cli.main(["eval", "--checkpoint", "no-such-run", "--data-dir", "x", *flags]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no-such-run" not in err
    assert re.search(message, err), err


@pytest.mark.parametrize("value, message", [
    ("maj", "needs its number of samples, e.g. maj@8"), ("greedy@2", "takes no number of samples"),
    ("pass@0", "must be an integer of 1 or more"), ("best@3", "unknown protocol 'best@3'; accepted: greedy"),
])
def test_bad_protocol_names_are_usage_errors(capsys, value, message):
    assert cli.main(["eval", "--tasks", "gsm8k", "--protocol", value]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:a prompt longer than the model's context")  # 1-shot MMLU in 128 tokens
def test_cot_routed_on_a_checkpoint_routes_by_its_chosen_threshold(tmp_path, build_model):
    """The real adapter end to end (tiny random model): each answer is the vote or the direct
    answer exactly as the reported threshold says."""
    config = dataclasses.replace(PRESETS["test"], vocab_size=320, max_seq_len=128)
    texts = ["The following are multiple choice questions (with answers) about astronomy.\nAnswer: B\n",
             "Question: Tom has 3 apples and buys 2 more.\nAnswer: 5\n", "def f(x):\n    return x + 1\n",
             "Let's think step by step. The answer is (C).\n"] * 20
    run_dir, _ = write_run(tmp_path, build_model(config), config=config, texts=texts)
    data, out = make_data_dir(tmp_path), tmp_path / "r.json"
    records = tmp_path / "records.jsonl"
    assert cli.main(["eval", "--checkpoint", str(run_dir), "--tasks", "mmlu", "--protocol", "cot-routed@2",
                     "--shots", "1", "--limit", "2", "--data-dir", str(data), "--output", str(out),
                     "--records", str(records), "--no-progress"]) == 0
    mmlu = json.loads(out.read_text())["mmlu"]
    assert mmlu["dev_examples"] == 2 and mmlu["examples"] == 2
    for r in map(json.loads, records.read_text().splitlines()):
        assert len(r["output"]) == 2 and r["direct"] in "ABCD"
        to_vote = r["majority"] is not None and r["consensus"] >= mmlu["threshold"]
        assert r["route"] == ("cot" if to_vote else "greedy")
        assert r["answer"] == (r["majority"] if to_vote else r["direct"])


def test_help_names_every_protocol(capsys):
    try:
        assert cli.main(["eval", "--help"]) == 0
    except SystemExit as e:  # argparse's own exit, where main lets it through
        assert e.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--protocol PROTOCOL" in out
    for method in Method:
        assert method.value in out


def test_protocol_names_round_trip_and_say_what_they_sample():
    for name in ("greedy", "loglikelihood", "maj@32", "cot-routed@8", "pass@1"):
        assert str(ProtocolSpec.parse(name)) == name
    assert ProtocolSpec.parse(" maj@32 ") == ProtocolSpec(Method.MAJORITY, 32)
    assert [ProtocolSpec.parse(n).samples for n in ("greedy", "loglikelihood", "maj@2", "cot-routed@2", "pass@2")] == [
        False, False, True, True, True]
    with pytest.raises(TaskDataError, match="--protocol: unknown protocol 'maj8'"):
        Settings(protocol="maj8")


def test_batched_choice_matches_one_question_at_a_time():
    from gemini_jax.evals.protocols import choices_by_loglikelihood, choose_by_loglikelihood, read_choice

    model = ScriptedModel(likely={"q1": "b", "q2": "long one", "q3": "x"})
    prompts, choices = ["q1", "q2", "q3"], [["a", "b", "c"], ["short", "long one"], ["x", "y"]]
    batched = choices_by_loglikelihood(model, prompts, choices)
    assert [c.index for c in batched] == [1, 1, 0] and batched[0].loglikelihoods == [-5.0, 0.0, -5.0]
    assert [choose_by_loglikelihood(model, p, c) for p, c in zip(prompts, choices)] == [1, 1, 0]
    assert len([c for c in model.calls if c[0] == "loglikelihood"]) == 4  # one batch, then one call per question
    with pytest.raises(ValueError, match="2 prompts but 3 lists of choices"):
        choices_by_loglikelihood(model, prompts[:2], choices)
    assert [read_choice(t, 4) for t in ("(C) because", "I think D.", "E", "none")] == [2, 3, None, None]
