"""HumanEval in our sandbox: every reference solution passes, every bare prompt fails."""

import collections

import pytest

from gemini_jax.evals.humaneval import (
    NUM_PROBLEMS,
    Problem,
    check_completions,
    load_problems,
)


@pytest.fixture(scope="module")
def problems():
    return load_problems()


def test_problems_load_in_task_order(problems):
    assert len(problems) == NUM_PROBLEMS == 164
    assert [p.task_id for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert problems[0].entry_point == "has_close_elements"
    assert all("def check(candidate)" in p.test for p in problems)


def test_program_layout_follows_the_reference_harness():
    problem = Problem("HumanEval/x", "def f():\n", "f", "    return 1\n", "def check(c):\n    assert c() == 1\n")
    assert problem.program("    return 1\n") == (
        "def f():\n    return 1\n\n\ndef check(c):\n    assert c() == 1\n\n\ncheck(f)\n"
    )


def test_canonical_solutions_pass_164_of_164(problems):
    results = check_completions(problems, [p.canonical_solution for p in problems], workers=2)
    failures = {p.task_id: r.reason for p, r in zip(problems, results) if not r.passed}
    assert failures == {}


def test_bare_prompts_fail_164_of_164(problems):
    # Measured: 159 fail an assert, 5 raise (e.g. a TypeError on the None a bare function returns).
    results = check_completions(problems, ["    pass\n"] * len(problems), workers=2)
    counts = collections.Counter(r.status for r in results)
    assert counts == {"failed": 159, "error": 5}, counts


def test_mismatched_lengths_are_refused(problems):
    with pytest.raises(ValueError, match="one per problem"):
        check_completions(problems[:2], ["    pass\n"])
