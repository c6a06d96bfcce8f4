"""Every evaluation by name, and the one function that runs them: the demo's held-out sets, the
long-context probes and the benchmarks, in any mixture (what `gemini-jax eval --tasks` reaches).

    results = evaluate_run("runs/demo", ["vqa", "mmlu"], EvalOptions(data_dir="benchmarks", limit=100))
    print(format_results(results))

    # in-process, with a recipe's own task parameters and an already built corpus:
    evaluate(model, tokenizer, demo_sets(text_seq_len=128), EvalOptions(limit=200), corpus=corpus)

A task given by name is the registry's default instance; a task instance carries its own
parameters (tasks/demo.py, tasks/long_context.py, benchmark.py). EvalOptions are the flags;
`unused_options` names those set for no chosen task.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemini_jax.evals import benchmark
from gemini_jax.evals.eval_task import (  # noqa: F401 - EvalTask and Family are exported from here
    COMMON_OPTIONS,
    EvalContext,
    EvalOptions,
    EvalTask,
    Family,
    TaskOutcome,
    families,
    flag,
)
from gemini_jax.evals.tasks import TASKS as BENCHMARKS
from gemini_jax.evals.tasks import TaskDataError
from gemini_jax.evals.tasks import demo
from gemini_jax.evals.tasks import image_generation
from gemini_jax.evals.tasks import long_context
from gemini_jax.evals.tasks import prepared
from gemini_jax.evals.tasks import robustness
from gemini_jax.evals.tasks import safety

if TYPE_CHECKING:
    from gemini_jax.data.corpora.demo import DemoCorpus
    from gemini_jax.data.tokenizer import Tokenizer
    from gemini_jax.model import Gemini

TaskLike = str | EvalTask  # a registry name, or a task instance with its own parameters

TASKS: dict[str, EvalTask] = {task.name: task for task in (
    *demo.demo_sets(), robustness.Robustness(), robustness.Robustness(name="robustness_validation", split="validation"),
    long_context.KvRetrieval(), long_context.NllByPosition(), *prepared.prepared_sets(),
    *safety.safety_sets(), image_generation.ImageGeneration(),
    image_generation.ImageGeneration(name="image_generation_validation", split="validation"),
    *(benchmark.Benchmark(task) for task in BENCHMARKS.values()))}
DEFAULT_TASKS = demo.TASKS  # what `gemini-jax eval` runs without --tasks


def resolve(tasks: Sequence[TaskLike]) -> list[EvalTask]:
    """Task instances for names or instances; every unknown name at once, with the known ones."""
    unknown = [t for t in tasks if isinstance(t, str) and t not in TASKS]
    if unknown:
        known = "; ".join(f"{family.value}: {', '.join(t.name for t in TASKS.values() if t.family is family)}"
                          for family in Family)
        raise TaskDataError(f"unknown task(s) {', '.join(unknown)}; known {known}")
    chosen = [TASKS[t] if isinstance(t, str) else t for t in tasks]
    names = [t.name for t in chosen]
    if len(set(names)) != len(names):
        raise TaskDataError(f"a task is named twice: {names}")
    if not chosen:
        raise TaskDataError("no tasks to evaluate")
    return chosen


def unused_options(tasks: Sequence[TaskLike], options: EvalOptions) -> list[str]:
    """Options set away from their defaults that no chosen task reads, as "--flag (for <families>
    only)": a caller refuses them rather than let them be silently ignored."""
    chosen, defaults = resolve(tasks), EvalOptions()
    read = set(COMMON_OPTIONS).union(*(t.reads for t in chosen))
    unused = []
    for name in EvalOptions.__dataclass_fields__:
        if name not in read and getattr(options, name) != getattr(defaults, name):
            readers = families([t for t in TASKS.values() if name in t.reads])
            unused.append(f"{flag(name)} (for {_spoken_list(f.value for f in readers)} only)")
    return unused


def _spoken_list(words: Iterable[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    words = list(words)
    return " and ".join(filter(None, [", ".join(words[:-1]), words[-1]]))


def refuse_unused_options(tasks: Sequence[TaskLike], options: EvalOptions) -> None:
    """TaskDataError naming each of `unused_options` (--shots with the demo sets would otherwise
    look like a 5-shot score)."""
    unused = unused_options(tasks, options)
    if unused:
        kinds = _spoken_list(f.value for f in families(resolve(tasks)))
        raise TaskDataError(f"these options do nothing for {kinds}: {', '.join(unused)}; drop them")


def evaluate(model: Gemini, tokenizer: Tokenizer, tasks: Sequence[TaskLike], options: EvalOptions = EvalOptions(), *,
             run_dir: str | Path | None = None, corpus: DemoCorpus | None = None) -> dict[str, dict[str, Any]]:
    """{task: {metric: value}} for `tasks` in order. Every task is checked before any runs; work
    they share is built once. `run_dir` places nll_by_position's plot by default; `corpus` is a
    DemoCorpus already built (else the demo sets build the default one in options.cache_dir).
    Records (one JSON line per example) go to options.records."""
    chosen = resolve(tasks)
    context = EvalContext(model=model, tokenizer=tokenizer, options=options, run_dir=run_dir, corpus=corpus)
    for task in chosen:
        task.check(context)
    outcomes: dict[str, TaskOutcome] = {task.name: task.run(context) for task in chosen}
    if options.records and any("records" in task.reads for task in chosen):
        path = Path(options.records)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, default=str) + "\n" for o in outcomes.values() for r in o.records))
    for note in context.notes:
        if said := note():
            print(said, file=sys.stderr)
    return {name: outcome.metrics for name, outcome in outcomes.items()}


def evaluate_run(run_dir: str | Path, tasks: Sequence[TaskLike], options: EvalOptions = EvalOptions(), *,
                 step: int | None = None, corpus: DemoCorpus | None = None) -> dict[str, dict[str, Any]]:
    """`evaluate` on a run directory's model (at checkpoint `step`, default the latest)."""
    from gemini_jax import checkpoint

    resolve(tasks)  # an unknown task fails before the checkpoint is loaded
    run = checkpoint.load_run(run_dir, step=step)
    return evaluate(run.model, run.tokenizer, tasks, options, run_dir=run.run_dir, corpus=corpus)


def format_results(results: dict[str, dict[str, Any]]) -> str:
    """The printed tables: the demo sets' and the benchmarks' metric tables, the retrieval grid
    and NLL buckets for long context; one section per family present, in the results' order."""
    sections: dict[Family, dict[str, dict[str, Any]]] = {}
    for name, metrics in results.items():
        family = TASKS[name].family if name in TASKS else Family.BENCHMARKS
        sections.setdefault(family, {})[name] = metrics
    formats = {Family.DEMO_SETS: demo.format_table, Family.YOUR_DATA: demo.format_table,
               Family.LONG_CONTEXT: long_context.format_results, Family.BENCHMARKS: benchmark.format_table}
    return "\n\n".join(formats[family](section) for family, section in sections.items())
