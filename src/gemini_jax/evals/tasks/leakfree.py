"""leakfree_code: the leak-free code benchmark (evals/leakfree_code.py) as a task, asked as
HumanEval is (pass@K or cluster@N/K in the sandbox; no data dir)."""

from __future__ import annotations

from pathlib import Path

from gemini_jax.evals import leakfree_code
from gemini_jax.evals.tasks.base import Asking, Item, Task, TaskData
from gemini_jax.evals.tasks.text import CODE_STOPS


def load_leakfree_code(folder: Path) -> TaskData:
    """The problems as items; they are built from an installed package, so `folder` is unused."""
    return TaskData(items=[Item(id=p.task_id, prompt=p.prompt, golds=(p.canonical_solution,), meta={"problem": p})
                           for p in leakfree_code.load_problems()])


TASK = Task("leakfree_code", "small functions of installed packages (fontTools, sympy) that no training corpus here "
            "reads, pass@k in the sandbox against tests computed by the originals", load_leakfree_code, Asking.CODE,
            ("pass@1",), max_tokens=384, stop=CODE_STOPS)
