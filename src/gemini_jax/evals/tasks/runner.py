"""Asking a model one task's questions with the task's protocol; per-example records and the
task's metrics (in percent, except BLEU and chrF, which sacrebleu already gives in [0, 100]).

A question the model cannot be asked (a media file that does not decode, a media prompt longer
than the model's context) counts as wrong: its record holds the error, and the task's metrics
hold the count as "errors"."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gemini_jax.data.pipeline import RECORD_ERRORS
from gemini_jax.evals import humaneval, metrics
from gemini_jax.evals.protocols import Model, majority_vote, pass_at_k
from gemini_jax.evals.tasks.base import Asking, Item, Prompt, Task, TaskDataError, letter

CHUNK = 32  # questions handed to the model at once (it batches them further)


@dataclasses.dataclass(frozen=True)
class Settings:
    shots: int | None = None  # None: the task's default (fewer when fewer shots exist)
    samples: int = 1  # 1: greedy; k > 1: maj@k for answers, pass@k for code, at `temperature`
    temperature: float = 0.7
    limit: int | None = None  # at most this many questions
    seed: int = 0

    def __post_init__(self):
        if self.shots is not None and self.shots < 0:
            raise TaskDataError(f"--shots must be >= 0, got {self.shots}")
        if self.samples < 1:
            raise TaskDataError(f"--samples must be >= 1, got {self.samples}")
        if self.limit is not None and self.limit < 1:
            raise TaskDataError(f"--limit must be >= 1, got {self.limit}")


@dataclasses.dataclass(frozen=True)
class TaskResult:
    metrics: dict[str, float]
    records: list[dict[str, Any]]


def describe(prompt: Prompt) -> str:
    """A prompt as text for the records: media parts as <image: path> and so on."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for turn in prompt.contents:
        for part in turn.parts:
            value = getattr(part, part.kind)
            parts.append(value if part.kind == "text" else
                         f"<{part.kind}: {os.fspath(value) if isinstance(value, (str, os.PathLike)) else 'array'}>")
    return "\n".join(parts)


def _choice(task: Task, model: Model, items: Sequence[Item], prompts: Sequence[Prompt]) -> list[dict]:
    pairs = [(p, f" {c}") for p, item in zip(prompts, items) for c in item.choices]
    scores = model.loglikelihood(pairs)
    out, at = [], 0
    for item in items:
        s = scores[at : at + len(item.choices)]
        at += len(item.choices)
        ranked = [v / max(len(c), 1) for v, c in zip(s, item.choices)] if task.per_char else s
        pick = max(range(len(ranked)), key=lambda i: (ranked[i], -i))  # ties: the first
        out.append({"output": item.choices[pick], "answer": item.choices[pick], "loglikelihoods": s,
                    "scores": {"accuracy": 100.0 * (pick == item.label)}})
    return out


def _generate(task: Task, model: Model, items: Sequence[Item], prompts: Sequence[Prompt],
              settings: Settings) -> list[dict]:
    temperature = 0.0 if settings.samples == 1 else settings.temperature
    outputs = model.generate(list(prompts), temperature=temperature, num_samples=settings.samples,
                             seed=settings.seed, max_tokens=task.max_tokens, stop=task.stop)
    out = []
    for item, samples in zip(items, outputs):
        extract: Callable[[str], str | None] = letter if item.choices else task.extract
        answer, share = majority_vote([extract(s) for s in samples])
        record = {"output": samples[0] if len(samples) == 1 else samples, "answer": answer,
                  "scores": {m: 100.0 * metrics.PER_EXAMPLE[m](answer or "", item.golds) for m in task.metrics
                             if m in metrics.PER_EXAMPLE}}
        if settings.samples > 1:
            record["consensus"] = share
        out.append(record)
    return out


def _code(task: Task, model: Model, items: Sequence[Item], prompts: Sequence[Prompt], settings: Settings,
          workers: int) -> list[dict]:
    n = settings.samples
    temperature = 0.0 if n == 1 else settings.temperature
    outputs = model.generate(list(prompts), temperature=temperature, num_samples=n, seed=settings.seed,
                             max_tokens=task.max_tokens, stop=task.stop)
    problems = [item.meta["problem"] for item in items for _ in range(n)]
    results = humaneval.check_completions(problems, [s for samples in outputs for s in samples], workers=workers)
    out = []
    for i, samples in enumerate(outputs):
        passed = [r.passed for r in results[i * n : (i + 1) * n]]
        scores = {f"pass@{k}": 100.0 * pass_at_k(n, sum(passed), k) for k in sorted({1, n})}
        out.append({"output": samples[0] if n == 1 else samples, "answer": None, "passed": sum(passed),
                    "scores": scores})
    return out


def _corpus_metrics(task: Task, predictions: list[str], golds: list[tuple[str, ...]]) -> dict[str, float]:
    result = {}
    for m in task.metrics:
        if m in ("wer", "cer"):  # case and punctuation are not what a transcript is judged on
            result[m] = 100.0 * metrics.compute(m, [metrics.normalize_text(p) for p in predictions],
                                                [metrics.normalize_text(g[0]) for g in golds])
        else:
            result[m] = metrics.compute(m, predictions, [list(g[:1]) for g in golds])
    return result


def run_task(task: Task, model: Model, data_dir: str | os.PathLike | None, settings: Settings = Settings(), *,
             on_progress: Callable[[int], None] | None = None, workers: int = 2,
             on_loaded: Callable[[int], None] | None = None) -> TaskResult:
    """Loads the task from `data_dir / task.folder`, asks `model` its questions, scores them."""
    if task.folder:
        if data_dir is None:
            raise TaskDataError(f"task {task.name} reads its files from --data-dir/{task.folder}/; give --data-dir")
        data = task.load(Path(data_dir) / task.folder)
    else:
        data = task.load(Path("."))
    items = data.items[: settings.limit]
    if not items:
        raise TaskDataError(f"task {task.name}: the data holds no questions")
    if on_loaded:
        on_loaded(len(items))
    few_shot = task.default_shots > 0 or bool(data.shots)  # the others are 0-shot by design: --shots skips them
    k = settings.shots if settings.shots is not None and few_shot else (task.default_shots if data.shots else 0)
    if k and not data.shots:
        raise TaskDataError(f"task {task.name}: {k}-shot prompts asked for, but its data has no shots to draw from")
    def ask(chunk: Sequence[Item], prompts: Sequence[Prompt]) -> list[dict]:
        if task.protocol is Asking.CHOICE:
            return _choice(task, model, chunk, prompts)
        if task.protocol is Asking.CODE:
            return _code(task, model, chunk, prompts, settings, workers)
        return _generate(task, model, chunk, prompts, dataclasses.replace(settings, samples=1)
                         if task.protocol is Asking.CORPUS else settings)

    records: list[dict[str, Any]] = []
    errors = 0
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        prompts = [task.prompt(item, data.shots, k) for item in chunk]
        try:
            scored = ask(chunk, prompts)
        except RECORD_ERRORS:  # find the bad questions: they count as wrong, with their error
            scored = []
            for item, prompt in zip(chunk, prompts):
                try:
                    scored += ask([item], [prompt])
                except RECORD_ERRORS as e:
                    errors += 1
                    scored.append({"output": "", "answer": None, "error": str(e),
                                   "scores": {m: 0.0 for m in task.metrics if m in metrics.PER_EXAMPLE}})
        for item, prompt, result in zip(chunk, prompts, scored):
            records.append({"task": task.name, "id": item.id, "prompt": describe(prompt), **result,
                            "golds": list(item.golds)})
        if on_progress:
            on_progress(len(chunk))
    if task.protocol is Asking.CORPUS:
        predictions = [r["answer"] or "" for r in records]
        for record, prediction, item in zip(records, predictions, items):
            record["scores"] = _corpus_metrics(task, [prediction], [item.golds])
        summary = _corpus_metrics(task, predictions, [item.golds for item in items])
    else:
        names = list(records[0]["scores"])
        summary = {m: sum(r["scores"][m] for r in records) / len(records) for m in names}
    return TaskResult(metrics={**summary, "examples": len(records), "shots": k, **({"errors": errors} if errors else {})},
                      records=records)
