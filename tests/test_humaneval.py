"""HumanEval in our sandbox: every reference solution passes, every bare prompt fails."""

import collections

import pytest

from gemini_jax.evals.humaneval import (
    NUM_PROBLEMS,
    Problem,
    check_completions,
    load_problems,
)
from gemini_jax.evals.sandbox import isolation


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


def _canonical_failures(problems) -> dict[str, str]:
    results = check_completions(problems, [p.canonical_solution for p in problems], workers=2)
    return {p.task_id: r.reason for p, r in zip(problems, results) if not r.passed}


def test_canonical_solutions_pass_a_spread_of_problems(problems):
    assert _canonical_failures(problems[::8]) == {}  # 21 problems across the set; all 164 under -m slow


@pytest.mark.slow
def test_canonical_solutions_pass_164_of_164(problems):
    assert _canonical_failures(problems) == {}


@pytest.mark.slow
def test_bare_prompts_fail_164_of_164(problems):
    # Measured: 159 fail an assert, 5 raise (e.g. a TypeError on the None a bare function returns).
    results = check_completions(problems, ["    pass\n"] * len(problems), workers=2)
    counts = collections.Counter(r.status for r in results)
    assert counts == {"failed": 159, "error": 5}, counts


def test_mismatched_lengths_are_refused(problems):
    with pytest.raises(ValueError, match="one per problem"):
        check_completions(problems[:2], ["    pass\n"])


# Completions of HumanEval/0 that try to be scored `passed` without being right (issue 26).
_FORGERIES = {
    "exit_zero_early": "    import os\n    os._exit(0)\n",
    "rewrite_os_write": (
        "    import os\n    _write = os.write\n"
        "    os.write = lambda fd, data: _write(fd, data.replace(b'failed', b'passed'))\n    return None\n"
    ),
    "nonce_from_callers_frame": (
        "    import os, sys\n    frame = sys._getframe()\n    while frame:\n"
        "        for value in list(frame.f_locals.values()):\n            if isinstance(value, str) and len(value) == 32:\n"
        "                os.write(1, f'\\n{value} passed \"\"\\n'.encode())\n        frame = frame.f_back\n"
        "    os._exit(0)\n"
    ),
    "always_equal": (
        "    class Anything:\n        def __eq__(self, other):\n            return True\n"
        "        __bool__ = lambda self: True\n    return Anything()\n"
    ),
    "print_judge_verdict": "    print('{\"status\": \"passed\", \"reason\": \"\"}')\n    raise SystemExit(0)\n",
}


@pytest.mark.parametrize("name", sorted(_FORGERIES))
def test_forged_completions_are_not_scored_passed(problems, name):
    (result,) = check_completions(problems[:1], [_FORGERIES[name]])
    assert result.status != "passed", (name, result)


def test_the_reference_solutions_are_out_of_the_programs_reach(problems):
    from gemini_jax.evals.humaneval import _data_dir

    if not isolation().jail:
        pytest.skip("hiding the benchmark's files needs a mount namespace")
    cheat = (
        "    import gzip, json\n"
        f"    rows = [json.loads(line) for line in gzip.open({_data_dir() + '/data/HumanEval.jsonl.gz'!r}, 'rt')]\n"
        "    namespace = {}\n    exec(rows[0]['prompt'] + rows[0]['canonical_solution'], namespace)\n"
        "    return namespace['has_close_elements'](numbers, threshold)\n"
    )
    (result,) = check_completions(problems[:1], [cheat])
    assert result.status == "error" and "FileNotFoundError" in result.reason, result
