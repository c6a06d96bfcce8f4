"""The leak-free code benchmark: reference solutions pass every hidden test, empty bodies fail
every one, two builds give the same problems, decontamination sees their text, and the task runs
through `gemini-jax eval` with pass@K and cluster@N/K."""

import ast
import json
import types

import pytest

from gemini_jax.data.corpora.stdlib_text import stdlib_sources
from gemini_jax.data.prepare.decontaminate import Decontaminator, eval_sets
from gemini_jax.evals import humaneval, leakfree_code
from gemini_jax.evals.tasks import Settings, get_task, run_task


@pytest.fixture(scope="module")
def problems():
    return leakfree_code.load_problems()


class References:
    """Each problem's reference body, then an empty one, as its samples."""

    def __init__(self, problems):
        self.solutions = {p.prompt: p.canonical_solution for p in problems}

    def generate(self, prompts, *, temperature, num_samples, seed, max_tokens, stop):
        return [[self.solutions[p], *["    pass\n"] * (num_samples - 1)][:num_samples] for p in prompts]


def cases(problem):
    """The hidden (arguments, expected) pairs, read from the tests' text."""
    [assignment] = [n for n in ast.parse(problem.test).body if isinstance(n, ast.Assign) and n.targets[0].id == "CASES"]
    return ast.literal_eval(assignment.value)


def test_there_are_problems_with_enough_hidden_tests(problems):
    assert len(problems) >= 5 and "fontTools" in leakfree_code.versions()
    assert len({p.task_id for p in problems}) == len(problems)
    for p in problems:
        assert p.task_id.split(".")[0].removeprefix("LeakFree/") in leakfree_code.SOURCES
        assert f"def {p.entry_point}(" in p.prompt
        assert leakfree_code.MIN_TESTS <= len(cases(p)) == p.cases <= leakfree_code.MAX_TESTS
        assert all(want is not None for _, want in cases(p))  # so a body that returns None fails every one


def test_reference_solutions_pass_every_hidden_test(problems):
    """Every fourth problem here; every problem through the whole protocol under -m slow (below)."""
    some = problems[::4]
    results = humaneval.check_completions(some, [p.canonical_solution for p in some], workers=2)
    assert [r.status for r in results] == ["passed"] * len(some)


@pytest.mark.parametrize("limit", [pytest.param(None, marks=pytest.mark.slow), 12])
def test_reference_solutions_pass_their_examples_through_cluster(problems, limit):
    """Through the whole cluster@1/1 path (examples, generated inputs, hidden tests): every
    problem under -m slow, the first 12 in the default suite."""
    result = run_task(get_task("leakfree_code"), References(problems), None,
                      Settings(protocol="cluster@1/1", limit=limit))
    assert result.metrics["examples"] == len(problems[:limit]) and result.metrics["cluster@1/1"] == 100.0
    assert [r["id"] for r in result.records if r["passed"] != 1 or r["passed_examples"] != 1] == []


@pytest.mark.parametrize("every", [pytest.param(1, marks=pytest.mark.slow), 4])
def test_empty_bodies_fail(problems, every):
    some = problems[::every]
    results = humaneval.check_completions(some, ["    pass\n"] * len(some), workers=2)
    assert [r.status for r in results] == ["failed"] * len(some)


def test_two_builds_give_the_same_problems(problems):
    again = leakfree_code.build_in_subprocess()  # the problems above may come from the cache: this is a new build
    assert again["versions"] == leakfree_code.versions()
    assert [leakfree_code.Problem(**p) for p in again["problems"]] == problems


def test_the_reference_package_is_out_of_the_programs_reach(problems):
    from gemini_jax.evals.sandbox import isolation

    if not isolation().jail:
        pytest.skip("hiding the package's files needs a mount namespace")
    p = problems[0]
    module = p.task_id.removeprefix("LeakFree/").rsplit(".", 1)[0]
    cheat = f"    from {module} import {p.entry_point} as f\n    return f(*locals().values())\n"
    [result] = humaneval.check_completions([p], [cheat])
    assert not result.passed and "ModuleNotFoundError" in result.reason, result


def test_decontamination_sees_the_problems_and_the_corpora_do_not_read_them(problems):
    sets = eval_sets(demo=False)
    assert sets["leakfree_code"] == leakfree_code.texts()
    decontaminate = Decontaminator({"leakfree_code": sets["leakfree_code"]})
    for p in problems:  # a training record holding a reference function is dropped
        reason = decontaminate(f"some code\n{p.prompt}{p.canonical_solution}\nmore code")
        assert reason and "leakfree_code" in reason
    # The project's own code corpus is the standard library: it never reads the packages.
    paths = [path for path, _ in stdlib_sources(max_bytes=1 << 40)]
    assert paths and not any(package in path for path in paths for package in leakfree_code.SOURCES)


def test_the_task_runs_with_pass_at_k_and_cluster(problems):
    task = get_task("leakfree_code")
    passed = run_task(task, References(problems), None, Settings(protocol="pass@2", limit=3))
    assert passed.metrics["pass@1"] == 50.0 and passed.metrics["pass@2"] == 100.0
    clustered = run_task(task, References(problems), None, Settings(protocol="cluster@2/1", limit=3))
    # The reference passes the docstring's examples, the empty body does not: it is submitted.
    assert clustered.metrics["cluster@2/1"] == 100.0 and clustered.metrics["pass@1"] == 50.0
    assert [(r["passed_examples"], r["submitted"]) for r in clustered.records] == [(1, [0])] * 3


def test_gemini_jax_eval_asks_it_with_cluster(problems, monkeypatch, tmp_path):
    from gemini_jax import checkpoint, cli
    from gemini_jax.evals import benchmark

    monkeypatch.setattr(checkpoint, "load_run", lambda *a, **k: types.SimpleNamespace(
        model=None, tokenizer=None, run_dir=tmp_path))
    model = References([*problems, *humaneval.load_problems()])
    monkeypatch.setattr(benchmark, "checkpoint_model", lambda context: model)
    out = tmp_path / "results.json"
    assert cli.main(["eval", "--checkpoint", str(tmp_path), "--tasks", "humaneval,leakfree_code", "--protocol",
                     "cluster@3/2", "--limit", "2", "--output", str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())
    assert results["leakfree_code"]["cluster@3/2"] == 100.0 and results["leakfree_code"]["examples"] == 2
    assert results["leakfree_code"]["pass@2"] == pytest.approx(100 * 2 / 3)  # 1 - C(2,2)/C(3,2)
    assert results["humaneval"]["cluster@3/2"] == 100.0
