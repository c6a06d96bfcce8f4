"""Evaluation of a model on the embedded demo's held-out test sets.

Question answering (easy-VQA, video questions) and transcription are 0-shot greedy: the
prompt is the example's user turn, the answer is what the model writes before
<end_of_turn>, compared after normalisation (case, surrounding space and punctuation).
Transcription also reports word error rate (jiwer). Code is scored by perplexity per
token on the held-out standard-library files.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jiwer
import numpy as np

from gemini_jax.data.examples import Example
from gemini_jax.sample.sampler import Sampler
from gemini_jax.sample.token_choice import SamplingParams

TASKS = ("vqa", "asr", "video", "text")


def normalize_answer(text: str) -> str:
    text = text.lower().strip()
    text = re.sub(r"\s+", " ", text)
    return text.strip(" .,!?;:\"'")


def split_prompt(example: Example) -> tuple[Example, str]:
    """The example up to its last model turn, and that turn's text (the reference answer)."""
    *prompt, answer = example.contents
    if answer.role != "model" or not prompt:
        raise ValueError(f"a {example.task or 'demo'} example must end with a model turn after a user turn")
    reference = "".join(p.text or "" for p in answer.parts)
    return dataclasses.replace(example, contents=tuple(prompt)), reference


@dataclasses.dataclass(frozen=True)
class Record:
    task: str
    prompt: str
    output: str
    reference: str
    correct: bool
    kind: str = ""


def answer_questions(
    sampler: Sampler, examples: Sequence[Example], *, batch_size: int, max_new_tokens: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[Record]:
    records = []
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    # Chunks of equal size (600 -> 3 x 200, not 256 + 256 + 88): the sampler rounds each up to
    # the same batch shape, so the last one compiles nothing new.
    size = math.ceil(len(examples) / max(1, math.ceil(len(examples) / batch_size)))
    for start in range(0, len(examples), size):
        chunk = examples[start : start + size]
        prompts, references = zip(*(split_prompt(e) for e in chunk))
        outputs = sampler.generate(list(prompts), [params] * len(prompts))
        for example, prompt, output, reference in zip(chunk, prompts, outputs, references):
            question = " ".join(p.text for c in prompt.contents for p in c.parts if p.text)
            records.append(Record(
                task=example.task, prompt=question, output=output, reference=reference,
                correct=normalize_answer(output) == normalize_answer(reference),
            ))
        if on_batch:
            on_batch(len(chunk))
    return records


def exact_match(records: Sequence[Record]) -> float:
    return 100.0 * float(np.mean([r.correct for r in records])) if records else math.nan


def word_error_rate(records: Sequence[Record]) -> float:
    refs = [normalize_answer(r.reference) for r in records]
    hyps = [normalize_answer(r.output) for r in records]
    return 100.0 * jiwer.wer(refs, hyps) if records else math.nan


def perplexity(loss_sum: float, token_count: float) -> dict[str, float]:
    loss = loss_sum / max(token_count, 1.0)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": token_count}


def summarize(task: str, records: Sequence[Record], kinds: Sequence[str]) -> dict[str, Any]:
    """Per-task metrics, with exact match per kind of question (colour, shape, ...) or of
    utterance (number, digits, ...); ASR also reports the word error rate."""
    result: dict[str, Any] = {"exact_match": exact_match(records)}
    if task == "asr":
        result["wer"] = word_error_rate(records)
    for kind in sorted(set(kinds)) if len(set(kinds)) > 1 else ():
        subset = [r for r, k in zip(records, kinds) if k == kind]
        result[f"exact_match_{kind}"] = exact_match(subset)
    result["examples"] = len(records)
    return result


def format_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'task':<8} {'metric':<22} {'value':>10}", "-" * 42]
    for task, metrics in results.items():
        for name, value in metrics.items():
            shown = f"{value:,.0f}" if name in ("examples", "tokens") else f"{value:.2f}"
            lines.append(f"{task:<8} {name:<22} {shown:>10}")
    return "\n".join(lines)

