"""`gemini-jax eval --tasks ... --data-dir DIR`: benchmark tasks on a checkpoint, a results table,
and optionally every example's record.

    results = evaluate_checkpoint("runs/demo", tasks=["mmlu", "gsm8k"], data_dir="benchmarks",
                                  settings=Settings(limit=100), records_path="records.jsonl")
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemini_jax.evals.checkpoint_model import CheckpointModel
from gemini_jax.evals.protocols import Model
from gemini_jax.evals.tasks import Settings, get_task, run_task


def evaluate(model: Model, *, tasks: Sequence[str], data_dir: str | None, settings: Settings = Settings(),
             records_path: str | None = None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """{task: {metric: value}} for each task; records (one JSON line per example) to `records_path`."""
    from tqdm.auto import tqdm

    chosen = [get_task(name) for name in tasks]  # every name checked before any work
    results: dict[str, dict[str, Any]] = {}
    records: list[dict[str, Any]] = []
    for task in chosen:
        bar = tqdm(desc=f"eval {task.name}", disable=not progress, unit="ex", leave=False)
        outcome = run_task(task, model, data_dir, settings, on_progress=bar.update,
                           on_loaded=lambda n, bar=bar: bar.reset(total=n))
        bar.close()
        results[task.name] = outcome.metrics
        records += outcome.records
    if records_path:
        Path(records_path).parent.mkdir(parents=True, exist_ok=True)
        Path(records_path).write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    return results


def format_table(results: dict[str, dict[str, Any]]) -> str:
    width = max([4, *map(len, results)])
    lines = [f"{'task':<{width}}  {'metric':<18} {'value':>10}", "-" * (width + 31)]
    for task, values in results.items():
        for name, value in values.items():
            shown = f"{value:,d}" if isinstance(value, int) else ("nan" if math.isnan(value) else f"{value:.2f}")
            lines.append(f"{task:<{width}}  {name:<18} {shown:>10}")
    return "\n".join(lines)


def evaluate_checkpoint(run_dir: str, *, tasks: Sequence[str], data_dir: str | None, settings: Settings = Settings(),
                        batch_size: int = 16, records_path: str | None = None,
                        progress: bool = True) -> dict[str, dict[str, Any]]:
    for name in tasks:
        get_task(name)  # an unknown task fails before the checkpoint is loaded
    model = CheckpointModel.load(run_dir, batch_size=batch_size)
    results = evaluate(model, tasks=tasks, data_dir=data_dir, settings=settings, records_path=records_path,
                       progress=progress)
    print(format_table(results))
    if model.truncated:
        print(f"note: {model.truncated} prompt(s) or context(s) were cut from the left to fit the model's context "
              f"of {model.config.max_seq_len} tokens")
    return results
