"""The benchmarks of tasks/ (text.py, multimodal.py) as registry tasks: each read from
`--data-dir/<task>/` and asked through one `CheckpointModel` that the call's benchmarks share."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from gemini_jax.evals.eval_task import EvalContext, EvalOptions, EvalTask, Family, TaskOutcome
from gemini_jax.evals.tasks import Settings, Task, TaskDataError, run_task
from gemini_jax.evals.tasks.runner import check as check_settings


def settings(options: EvalOptions) -> Settings:
    """How the benchmarks are asked, from the eval options."""
    return Settings(shots=options.shots, samples=options.samples, temperature=options.temperature,
                    limit=options.limit, seed=options.seed, protocol=options.protocol)


def checkpoint_model(context: EvalContext):
    """The benchmarks' model; what it had to cut to fit the context is noted at the end."""
    from gemini_jax.evals.checkpoint_model import CheckpointModel

    model = CheckpointModel(context.model, context.tokenizer,
                            batch_size=context.options.batch_size or Benchmark.default_batch_size)
    context.notes.append(lambda: model.truncated and (
        f"note: {model.truncated} prompt(s) or context(s) were cut from the left to fit the model's context "
        f"of {model.config.max_seq_len} tokens"))
    return model


@dataclasses.dataclass(frozen=True)
class Benchmark(EvalTask):
    """One benchmark `Task` (tasks/base.py), asked with its protocol."""

    task: Task
    family: ClassVar[Family] = Family.BENCHMARKS
    reads: ClassVar[frozenset[str]] = frozenset({"data_dir", "shots", "samples", "temperature", "seed", "records",
                                                 "protocol"})
    default_batch_size: ClassVar[int] = 16
    workers: int = 2  # sandbox processes running HumanEval's tests at once

    @property
    def name(self) -> str:
        return self.task.name

    def check(self, context: EvalContext) -> None:
        if self.task.folder and context.options.data_dir is None:
            raise TaskDataError(f"task {self.name} reads its files from --data-dir/{self.task.folder}/; "
                                "give --data-dir")
        check_settings([self.task], settings(context.options))

    def run(self, context: EvalContext) -> TaskOutcome:
        from tqdm.auto import tqdm

        options = context.options
        bar = tqdm(desc=f"eval {self.name}", disable=not options.progress, unit="ex", leave=False)
        outcome = run_task(self.task, context.shared(checkpoint_model), options.data_dir, settings(options),
                           on_progress=bar.update, on_loaded=lambda n: bar.reset(total=n), workers=self.workers)
        bar.close()
        return TaskOutcome(outcome.metrics, outcome.records)


def format_table(results: dict[str, dict[str, Any]]) -> str:
    width = max([4, *map(len, results)])
    lines = [f"{'task':<{width}}  {'metric':<18} {'value':>10}", "-" * (width + 31)]
    for task, values in results.items():
        for name, value in values.items():
            shown = f"{value:,d}" if isinstance(value, int) else ("nan" if math.isnan(value) else f"{value:.2f}")
            lines.append(f"{task:<{width}}  {name:<18} {shown:>10}")
    return "\n".join(lines)
