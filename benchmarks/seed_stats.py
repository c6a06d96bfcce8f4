"""Mean and spread over seeds of nested {task: {metric: value}} results, for the *_seeds.py benchmarks,
and the demo sets scored on a run with the score kept in a file (`evaluated`).

A README comparison reads "mean +- std (per-seed values)": std is the sample standard deviation
(ddof=1), the spread a fourth seed would be expected to show, not the smaller population one.
"""

from __future__ import annotations

import statistics
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Metrics that count examples or tokens, not quality: the same for every seed and left out.
COUNTS = ("examples", "tokens", "documents")


def numeric_metrics(results: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """{task: {metric: value}} of `results`, the tasks asked for and their numeric quality metrics."""
    return {task: {m: float(v) for m, v in results[task].items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and m not in COUNTS}
            for task in tasks}


def spread(values: Sequence[float]) -> dict[str, Any]:
    """{"mean", "std" (ddof=1; None for one value), "values"}."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": list(values)}


def summarize(per_seed: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """[{task: {metric: value}} per seed] -> {task: {metric: spread}} over the metrics every seed has."""
    first = per_seed[0]
    return {task: {metric: spread([seed[task][metric] for seed in per_seed])
                   for metric in first[task] if all(metric in seed.get(task, {}) for seed in per_seed)}
            for task in first}


def difference(a: Sequence[Mapping[str, Mapping[str, float]]],
               b: Sequence[Mapping[str, Mapping[str, float]]]) -> list[dict[str, dict[str, float]]]:
    """Per seed, a - b for each metric both have (seed i of a paired with seed i of b)."""
    return [{task: {m: x[task][m] - y[task][m] for m in x[task] if m in y.get(task, {})} for task in x}
            for x, y in zip(a, b, strict=True)]


def brief(summary: Mapping[str, Mapping[str, Mapping[str, Any]]], metrics: Mapping[str, str]) -> dict[str, str]:
    """{task: "mean +- std"} of one metric per task, for a reader's first look at the JSON."""
    return {task: f"{summary[task][m]['mean']:.2f} +- {summary[task][m]['std'] or 0:.2f}"
            for task, m in metrics.items() if task in summary and m in summary[task]}


def evaluated(run: Path, cache: Path, *, split: str, limit: int | None = None) -> dict:
    """The demo sets' metrics of `run` on `split` ({task: {metric: value}}), read from `cache`
    when an earlier call wrote them."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from gemini_jax.evals.registry import EvalOptions, evaluate_run
    from gemini_jax.evals.tasks.demo import demo_sets

    results = evaluate_run(run, list(demo_sets(split=split)), EvalOptions(limit=limit, progress=False))
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(results, indent=2) + "\n")
    return results
