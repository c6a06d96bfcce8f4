"""The benchmark tasks by name (see base.py for what a task is, text.py and multimodal.py for
each one's files), and `run_task`, which asks a model a task's questions with its protocol."""

from __future__ import annotations

from gemini_jax.evals.tasks import leakfree, multimodal, text
from gemini_jax.evals.tasks.base import Asking, Item, Task, TaskData, TaskDataError
from gemini_jax.evals.tasks.runner import Settings, TaskResult, run_task

TASKS: dict[str, Task] = {t.name: t for t in [*text.TASKS, *multimodal.TASKS, leakfree.TASK]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise TaskDataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Asking", "Item", "Settings", "Task", "TaskData", "TaskDataError", "TaskResult", "get_task", "run_task"]
