"""Asking a model one task's questions with a protocol (protocols.py: greedy, log-likelihood
choice, maj@K, pass@K, uncertainty-routed CoT@K; code_clustering.py: cluster@N/K); per-example
records and the task's metrics (in percent, except BLEU and chrF, which sacrebleu already gives in
[0, 100]).

Without a protocol each task keeps its own (by its `Asking`): multiple choice by log-likelihood,
generation greedy (maj@k with `samples`), corpus tasks greedy, code pass@k. A protocol or setting
that would do nothing for a task is refused (`check`), never silently ignored.

A question the model cannot be asked (a media file that does not decode, a media prompt longer
than the model's context) counts as wrong: its record holds the error, and the task's metrics
hold the count as "errors"."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gemini_jax.data.pipeline import RECORD_ERRORS
from gemini_jax.evals import code_clustering, humaneval, metrics
from gemini_jax.evals.protocols import (
    Method,
    Model,
    ProtocolSpec,
    ValidationItem,
    answer_after,
    choices_by_loglikelihood,
    choose_threshold,
    greedy,
    majority_vote,
    pass_at_k,
    read_choice,
    route,
    sample,
)
from gemini_jax.evals.tasks.base import Asking, Item, Prompt, Task, TaskData, TaskDataError, letter

CHUNK = 32  # questions handed to the model at once (it batches them further)
# A chain of thought needs room a direct answer does not; it ends at a blank line (the shots' separator).
COT_MAX_TOKENS = 256
COT_STOP = ("\n\n",)


@dataclasses.dataclass(frozen=True)
class Settings:
    shots: int | None = None  # None: the task's default (fewer when fewer shots exist)
    samples: int = 1  # without a protocol: 1 greedy; k > 1 maj@k for answers, pass@k for code
    temperature: float = 0.7  # of every sampled protocol
    limit: int | None = None  # at most this many questions (and as many of the dev split, for cot-routed)
    seed: int = 0
    protocol: ProtocolSpec | None = None  # None: the task's own (`protocol_of`); a name ("maj@8") is parsed

    def __post_init__(self):
        if self.shots is not None and self.shots < 0:
            raise TaskDataError(f"--shots must be >= 0, got {self.shots}")
        if self.samples < 1:
            raise TaskDataError(f"--samples must be >= 1, got {self.samples}")
        if self.limit is not None and self.limit < 1:
            raise TaskDataError(f"--limit must be >= 1, got {self.limit}")
        if isinstance(self.protocol, str):
            try:
                object.__setattr__(self, "protocol", ProtocolSpec.parse(self.protocol))
            except ValueError as e:
                raise TaskDataError(f"--protocol: {e}") from None


@dataclasses.dataclass(frozen=True)
class TaskResult:
    metrics: dict[str, float]
    records: list[dict[str, Any]]


# --- which protocol asks a task, and what would do nothing ----------------------------------------


def protocol_of(task: Task, settings: Settings) -> ProtocolSpec:
    """The protocol `task` is asked with: the settings' own, else the task's (as before protocols
    could be named: `samples` > 1 is maj@k for generation, pass@k for code)."""
    if settings.protocol is not None:
        return settings.protocol
    match task.protocol:
        case Asking.CHOICE:
            return ProtocolSpec(Method.LOGLIKELIHOOD)
        case Asking.GENERATE if settings.samples > 1:
            return ProtocolSpec(Method.MAJORITY, settings.samples)
        case Asking.CODE if settings.samples > 1:
            return ProtocolSpec(Method.PASS, settings.samples)
        case _:
            return ProtocolSpec(Method.GREEDY)


def why_not(task: Task, method: Method) -> str | None:
    """Why `method` cannot ask `task`'s questions; None when it can."""
    unlettered = task.protocol is Asking.CHOICE and not task.lettered
    match method:
        case Method.LOGLIKELIHOOD:
            return None if task.protocol is Asking.CHOICE else "it has no choices to score; its answers are generated"
        case Method.GREEDY | Method.MAJORITY if unlettered:
            return "its prompt does not name the choices by letter, so a generation cannot pick one"
        case Method.MAJORITY if task.protocol is Asking.CORPUS:
            return "its metric scores whole outputs over the corpus; there is no short answer to vote on"
        case Method.MAJORITY if task.protocol is Asking.CODE:
            return "programs are judged by their tests, not voted on (pass@K, cluster@N/K)"
        case Method.PASS | Method.CLUSTER if task.protocol is not Asking.CODE:
            spelled = "pass@K" if method is Method.PASS else "cluster@N/K"
            return f"{spelled} judges programs by their tests, and it asks for no program"
        case Method.COT_ROUTED if not task.cot_cue:
            return "it has no chain-of-thought prompt"
    return None


def accepted(task: Task) -> str:
    """The protocols that can ask `task`, as --protocol spells them."""
    return ", ".join("cluster@N/K" if m is Method.CLUSTER else f"{m.value}@K" if ProtocolSpec(m).samples else m.value
                     for m in Method if why_not(task, m) is None)


def refusals(task: Task, settings: Settings) -> list[str]:
    """Each setting that would do nothing for `task`, with why."""
    spec = protocol_of(task, settings)
    out = []
    if settings.protocol is not None:
        if why := why_not(task, spec.method):
            out.append(f"--protocol {spec} does not apply to {task.name}: {why} (it takes {accepted(task)})")
        if settings.samples != 1:
            out.append(f"--samples does nothing with --protocol {spec}, which sets the samples per question")
    elif settings.samples != 1 and task.protocol in (Asking.CHOICE, Asking.CORPUS):
        asked = ("by the log-likelihood of its choices" if task.protocol is Asking.CHOICE
                 else "greedily, scored over the corpus")
        out.append(f"--samples does nothing for {task.name}: it is asked {asked} (it takes --protocol "
                   f"{accepted(task)})")
    if settings.shots is not None and not task.takes_shots:
        out.append(f"--shots does nothing for {task.name}: it is asked 0-shot, its prompt is the question alone")
    if settings.temperature != Settings.temperature and not spec.samples:
        out.append(f"--temperature does nothing for {task.name}: asked {spec}, it samples nothing")
    return out


def check(tasks: Sequence[Task], settings: Settings) -> None:
    """TaskDataError naming every setting that would do nothing for one of `tasks`."""
    refused = [r for task in tasks for r in refusals(task, settings)]
    if refused:
        raise TaskDataError("; ".join(dict.fromkeys(refused)) + "; drop those options, or ask those tasks apart")


# --- asking ------------------------------------------------------------------------------------


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


def _extractor(task: Task, item: Item) -> Callable[[str], str | None]:
    """Reads an answer out of a generation: a lettered choice's letter, else the task's answer."""
    if task.protocol is Asking.CHOICE:
        return lambda output: None if (i := read_choice(output, len(item.choices))) is None else item.choices[i]
    return letter if item.choices else task.extract


def _scores(task: Task, item: Item, answer: str | None) -> dict[str, float]:
    if task.protocol is Asking.CHOICE:
        return {"accuracy": 100.0 * (answer == item.choices[item.label])}
    return {m: 100.0 * metrics.PER_EXAMPLE[m](answer or "", item.golds) for m in task.metrics if m in metrics.PER_EXAMPLE}


def _gold(task: Task, item: Item) -> str:
    return item.choices[item.label] if task.protocol is Asking.CHOICE else item.golds[0]


def _choice(task: Task, model: Model, items: Sequence[Item], prompts: Sequence[Prompt]) -> list[dict]:
    chosen = choices_by_loglikelihood(model, prompts, [item.choices for item in items], per_char=task.per_char)
    return [{"output": item.choices[c.index], "answer": item.choices[c.index], "loglikelihoods": c.loglikelihoods,
             "scores": {"accuracy": 100.0 * (c.index == item.label)}} for item, c in zip(items, chosen)]


def _outputs(task: Task, model: Model, prompts: Sequence[Prompt], spec: ProtocolSpec,
             settings: Settings) -> list[list[str]]:
    """One greedy generation per prompt, or the protocol's k samples."""
    if spec.method is Method.GREEDY:
        return [[output] for output in greedy(model, prompts, max_tokens=task.max_tokens, stop=task.stop)]
    return sample(model, prompts, k=spec.k, temperature=settings.temperature, seed=settings.seed,
                  max_tokens=task.max_tokens, stop=task.stop)


def _generate(task: Task, model: Model, items: Sequence[Item], prompts: Sequence[Prompt], spec: ProtocolSpec,
              settings: Settings) -> list[dict]:
    out = []
    for item, samples in zip(items, _outputs(task, model, prompts, spec, settings)):
        extract = _extractor(task, item)
        answer, share = majority_vote([extract(s) for s in samples])
        record = {"output": samples[0] if len(samples) == 1 else samples, "answer": answer,
                  "scores": _scores(task, item, answer)}
        if spec.method is Method.MAJORITY:
            record["consensus"] = share
        out.append(record)
    return out


def _code(task: Task, model: Model, items: Sequence[Item], prompts: Sequence[Prompt], spec: ProtocolSpec,
          settings: Settings, workers: int) -> list[dict]:
    outputs = _outputs(task, model, prompts, spec, settings)
    n = len(outputs[0])
    problems = [item.meta["problem"] for item in items for _ in range(n)]
    results = humaneval.check_completions(problems, [s for samples in outputs for s in samples], workers=workers)
    out = []
    for i, (item, samples) in enumerate(zip(items, outputs)):
        passed = [r.passed for r in results[i * n : (i + 1) * n]]
        scores = {f"pass@{k}": 100.0 * pass_at_k(n, sum(passed), k) for k in sorted({1, n})}
        record = {"output": samples[0] if n == 1 else samples, "answer": None, "passed": sum(passed)}
        if spec.method is Method.CLUSTER:  # AlphaCode 2: filter by the examples, cluster, submit K
            chosen = code_clustering.choose(item.meta["problem"], samples, k=spec.submitted, workers=workers)
            scores = code_clustering.scores(chosen, passed, k=spec.submitted)
            record |= {"passed_examples": chosen.passed_examples, "clusters": [len(c) for c in chosen.clusters],
                       "submitted": list(chosen.submitted)}
        out.append({**record, "scores": scores})
    return out


def _votes(task: Task, model: Model, items: Sequence[Item], prompts: Sequence[Prompt], spec: ProtocolSpec,
           settings: Settings) -> list[dict]:
    """What uncertainty routing needs of each question: the majority answer of k chains of thought
    and its consensus, and the direct answer: the task's own without a chain of thought (for
    multiple choice the most likely choice, the report's "maximum likelihood choice")."""
    if not all(isinstance(p, str) for p in prompts):
        raise TaskDataError(f"task {task.name}: chain-of-thought prompts are text only")
    chains = sample(model, [p + task.cot_cue for p in prompts], k=spec.k, temperature=settings.temperature,
                    seed=settings.seed, max_tokens=COT_MAX_TOKENS, stop=COT_STOP)
    if task.protocol is Asking.CHOICE:
        direct = [r["answer"] for r in _choice(task, model, items, prompts)]
    else:
        direct = [r["answer"] for r in _generate(task, model, items, prompts, ProtocolSpec(Method.GREEDY), settings)]
    out = []
    after = answer_after()
    for item, samples, answer in zip(items, chains, direct):
        extract = _extractor(task, item)
        majority, consensus = majority_vote([None if (a := after(s)) is None else extract(a) for s in samples])
        out.append({"output": samples, "majority": majority, "consensus": consensus, "direct": answer})
    return out


def _ask_all(task: Task, items: Sequence[Item], prompts: Callable[[Item], Prompt],
             ask: Callable[[Sequence[Item], Sequence[Prompt]], list[dict]],
             on_progress: Callable[[int], None] | None) -> tuple[list[dict[str, Any]], int]:
    """Records of every item, asked CHUNK at a time, and the number that could not be asked."""
    records: list[dict[str, Any]] = []
    errors = 0
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        chunk_prompts = [prompts(item) for item in chunk]
        try:
            scored = ask(chunk, chunk_prompts)
        except RECORD_ERRORS:  # find the bad questions: they count as wrong, with their error
            scored = []
            for item, prompt in zip(chunk, chunk_prompts):
                try:
                    scored += ask([item], [prompt])
                except RECORD_ERRORS as e:
                    errors += 1
                    scored.append({"output": "", "answer": None, "error": str(e), "scores": {
                        m: 0.0 for m in task.metrics if m in metrics.PER_EXAMPLE or task.protocol is Asking.CHOICE}})
        for item, prompt, result in zip(chunk, chunk_prompts, scored):
            records.append({"task": task.name, "id": item.id, "prompt": describe(prompt), **result,
                            "golds": list(item.golds)})
        if on_progress:
            on_progress(len(chunk))
    return records, errors


def _dev_prompt(task: Task, item: Item, pool: Sequence[Item], k: int) -> Prompt:
    """A dev question's prompt: k shots from the rest of its split (one fewer where the rest holds
    fewer than k, as MMLU's 5 dev questions per subject do)."""
    others = [s for s in pool if s is not item]
    try:
        return task.prompt(item, others, k)
    except TaskDataError:
        if k == 0:
            raise
        return task.prompt(item, others, k - 1)


def _routed(task: Task, records: list[dict[str, Any]], items: Sequence[Item], threshold: float) -> None:
    """Each record's answer: the chains' majority or the direct answer, by `threshold`."""
    for record, item in zip(records, items):
        if "error" in record:
            continue
        routed = route(record["majority"], record["consensus"], record["direct"], threshold)
        record.update(answer=routed.answer, route=routed.route, scores=_scores(task, item, routed.answer))


def _corpus_metrics(task: Task, predictions: list[str], golds: list[tuple[str, ...]]) -> dict[str, float]:
    result = {}
    for m in task.metrics:
        if m in ("wer", "cer"):  # case and punctuation are not what a transcript is judged on
            result[m] = 100.0 * metrics.compute(m, [metrics.normalize_text(p) for p in predictions],
                                                [metrics.normalize_text(g[0]) for g in golds])
        elif m == "cider_d":  # every reference caption counts; words without punctuation, as COCO's tokenizer
            words = lambda text: " ".join(re.findall(r"\w+", text.lower()))  # noqa: E731
            result[m] = 100.0 * metrics.compute(m, [words(p) for p in predictions], [[words(r) for r in g] for g in golds])
        else:
            result[m] = metrics.compute(m, predictions, [list(g[:1]) for g in golds])
    return result


def run_task(task: Task, model: Model, data_dir: str | os.PathLike | None, settings: Settings = Settings(), *,
             on_progress: Callable[[int], None] | None = None, workers: int = 2,
             on_loaded: Callable[[int], None] | None = None) -> TaskResult:
    """Loads the task from `data_dir / task.folder`, asks `model` its questions, scores them.
    cot-routed@K first asks the dev split (the task's shot pool) to choose its threshold."""
    check([task], settings)
    spec = protocol_of(task, settings)
    if task.folder:
        if data_dir is None:
            raise TaskDataError(f"task {task.name} reads its files from --data-dir/{task.folder}/; give --data-dir")
        data = task.load(Path(data_dir) / task.folder)
    else:
        data = task.load(Path("."))
    items = data.items[: settings.limit]
    if not items:
        raise TaskDataError(f"task {task.name}: the data holds no questions")
    dev = data.shots[: settings.limit] if spec.method is Method.COT_ROUTED else []
    if spec.method is Method.COT_ROUTED and not dev:
        raise TaskDataError(f"task {task.name}: --protocol {spec} chooses its threshold on the dev split (the "
                            "questions shots are drawn from), but the data has none")
    if on_loaded:
        on_loaded(len(dev) + len(items))
    k = _shots(task, data, settings)

    def ask(chunk: Sequence[Item], prompts: Sequence[Prompt]) -> list[dict]:
        match spec.method:
            case Method.LOGLIKELIHOOD:
                return _choice(task, model, chunk, prompts)
            case Method.COT_ROUTED:
                return _votes(task, model, chunk, prompts, spec, settings)
            case _ if task.protocol is Asking.CODE:
                return _code(task, model, chunk, prompts, spec, settings, workers)
            case _:
                return _generate(task, model, chunk, prompts, spec, settings)

    routing = {}
    if dev:
        dev_records, _ = _ask_all(task, dev, lambda item: _dev_prompt(task, item, data.shots, k), ask, on_progress)
        threshold, dev_accuracy = choose_threshold([
            ValidationItem(r.get("majority"), r.get("consensus", 0.0), r.get("direct"), _gold(task, item))
            for r, item in zip(dev_records, dev)])
    records, errors = _ask_all(task, items, lambda item: task.prompt(item, data.shots, k), ask, on_progress)
    if dev:
        _routed(task, records, items, threshold)
        routing = {"threshold": threshold, "dev_accuracy": 100.0 * dev_accuracy, "dev_examples": len(dev),
                   "routed_to_cot": 100.0 * sum(r.get("route") == "cot" for r in records) / len(records)}
    if task.protocol is Asking.CORPUS:
        predictions = [r["answer"] or "" for r in records]
        for record, prediction, item in zip(records, predictions, items):
            record["scores"] = _corpus_metrics(task, [prediction], [item.golds])
        summary = _corpus_metrics(task, predictions, [item.golds for item in items])
    else:
        names = list(records[0]["scores"])
        summary = {m: sum(r["scores"][m] for r in records) / len(records) for m in names}
    return TaskResult(metrics={**summary, **routing, "examples": len(records), "shots": k,
                               **({"errors": errors} if errors else {})}, records=records)


def _shots(task: Task, data: TaskData, settings: Settings) -> int:
    """k of the k-shot prompts: --shots for the few-shot tasks, else the task's default."""
    few_shot = task.default_shots > 0 or bool(data.shots)  # DROP without its train file: 0-shot
    k = settings.shots if settings.shots is not None and few_shot else (task.default_shots if data.shots else 0)
    if k and not data.shots:
        raise TaskDataError(f"task {task.name}: {k}-shot prompts asked for, but its data has no shots to draw from")
    return k
