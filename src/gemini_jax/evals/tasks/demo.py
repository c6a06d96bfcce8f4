"""Evaluation of a model on the embedded demo's held-out test sets.

Question answering (easy-VQA, video questions) and transcription are 0-shot greedy: the
prompt is the example's user turn, the answer is what the model writes before
<end_of_turn>, compared after normalisation (case, surrounding space and punctuation).
Transcription also reports word error rate (jiwer). Code is scored by perplexity per
token on the held-out standard-library files.

`DEMO_SETS` are these as registry tasks (registry.py): they share the demo corpus and one sampler.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import jiwer
import numpy as np

from gemini_jax.data.examples import Example
from gemini_jax.evals.eval_task import EvalContext, EvalTask, Family, TaskOutcome
from gemini_jax.sample.sampler import Sampler
from gemini_jax.sample.token_choice import SamplingParams

if TYPE_CHECKING:
    from gemini_jax.data.corpora.demo import DemoRecord

TASKS = ("vqa", "asr", "video", "text")
ANSWER_TOKENS = {"vqa": 8, "asr": 24, "video": 8}  # at most this many answer tokens sampled per question


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


def greedy_replies(
    sampler: Sampler, prompts: Sequence[Example], *, batch_size: int, max_new_tokens: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy replies to `prompts` (each ending on a user turn), in order; `on_batch(n)` after
    each chunk of n."""
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens)
    # Chunks of equal size (600 -> 3 x 200, not 256 + 256 + 88): the sampler rounds each up to
    # the same batch shape, so the last one compiles nothing new.
    size = math.ceil(len(prompts) / max(1, math.ceil(len(prompts) / batch_size)))
    outputs: list[str] = []
    for start in range(0, len(prompts), size):
        chunk = list(prompts[start : start + size])
        outputs += sampler.generate(chunk, [params] * len(chunk))
        if on_batch:
            on_batch(len(chunk))
    return outputs


def answer_questions(
    sampler: Sampler, examples: Sequence[Example], *, batch_size: int, max_new_tokens: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[Record]:
    if not examples:
        return []
    prompts, references = zip(*(split_prompt(e) for e in examples))
    outputs = greedy_replies(sampler, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             on_batch=on_batch)
    records = []
    for example, prompt, output, reference in zip(examples, prompts, outputs, references):
        question = " ".join(p.text for c in prompt.contents for p in c.parts if p.text)
        records.append(Record(
            task=example.task, prompt=question, output=output, reference=reference,
            correct=normalize_answer(output) == normalize_answer(reference),
        ))
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


def yes_no_by_presence(records: Sequence[DemoRecord], scored: Sequence[Record]) -> dict[str, float]:
    """VQA's yes/no exact match apart for questions about a shape or colour the picture holds and
    one it lacks: easy-VQA asks about an absent one four times in five, so the two together mostly
    measure that prior (docs/robustness.md)."""
    from gemini_jax.data.corpora.question_forms import about_present

    present = [about_present(r.meta["prompt"], r.meta["answer"]) for r in records]
    return {f"exact_match_yes/no_{name}": exact_match([s for s, p in zip(scored, present) if p is value])
            for name, value in (("present", True), ("absent", False)) if value in present}


def format_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'task':<8} {'metric':<22} {'value':>10}", "-" * 42]
    for task, metrics in results.items():
        for name, value in metrics.items():
            shown = f"{value:,.0f}" if name in ("examples", "tokens") else f"{value:.2f}"
            lines.append(f"{task:<8} {name:<22} {shown:>10}")
    return "\n".join(lines)



# --- the demo sets as registry tasks ----------------------------------------------------------


def demo_corpus(context: EvalContext):
    """The corpus the caller built, or the default one in --cache-dir."""
    from gemini_jax.data.corpora.demo import DemoCorpus

    return context.corpus or DemoCorpus.build(context.options.cache_dir, progress=context.options.progress)


def demo_sampler(context: EvalContext) -> Sampler:
    from gemini_jax.data.encode import MediaCache

    return Sampler(context.model, context.tokenizer, media_cache=MediaCache(max_bytes=1 << 30))


class _DemoSet(EvalTask):
    family: ClassVar[Family] = Family.DEMO_SETS
    reads: ClassVar[frozenset[str]] = frozenset({"cache_dir", "records"})
    default_batch_size: ClassVar[int] = 256

    split: str  # "test" for the final evaluation; "validation" while a recipe trains and chooses

    def test_records(self, context: EvalContext) -> list:
        return context.shared(demo_corpus).records(self.name, self.split)[: context.options.limit]


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuestionSet(_DemoSet):
    """A media set (vqa, asr, video): 0-shot greedy answers, exact match (and WER for asr)."""

    name: str
    max_new_tokens: int
    split: str = "test"

    def run(self, context: EvalContext) -> TaskOutcome:
        from tqdm.auto import tqdm

        records = self.test_records(context)
        bar = tqdm(total=len(records), desc=f"eval {self.name}", disable=not context.options.progress, unit="ex",
                   leave=False)
        scored = answer_questions(context.shared(demo_sampler), [r.example for r in records],
                                  batch_size=self.batch_size(context.options), max_new_tokens=self.max_new_tokens,
                                  on_batch=bar.update)
        bar.close()
        metrics = summarize(self.name, scored, [r.kind for r in records])
        if self.name == "vqa":
            metrics |= yes_no_by_presence(records, scored)
        return TaskOutcome(metrics,
                           [dataclasses.asdict(dataclasses.replace(s, kind=r.kind)) for s, r in zip(scored, records)])


@dataclasses.dataclass(frozen=True, kw_only=True)
class CodePerplexity(_DemoSet):
    """The text set: loss and perplexity per token of held-out code, packed into rows of `seq_len`."""

    name: str = "text"
    split: str = "test"
    seq_len: int = 128  # the row length of the text source in recipes/demo.yaml
    rows_per_batch: int = 16  # fixed: --batch-size is the number of questions sampled together

    def run(self, context: EvalContext) -> TaskOutcome:
        from gemini_jax.data import pipeline
        from gemini_jax.evals.scoring import LossScorer

        documents = [r.example for r in self.test_records(context)]
        batches = pipeline.packed_text(documents, tokenizer=context.tokenizer, seq_len=self.seq_len,
                                       batch_size=self.rows_per_batch, seed=0, shuffle=False, num_epochs=1,
                                       drop_remainder=False)
        loss_sum, count = LossScorer(context.model).total(batches)
        return TaskOutcome({**perplexity(loss_sum, count), "documents": len(documents)})


def demo_sets(*, text_seq_len: int = 128, split: str = "test") -> tuple[EvalTask, ...]:
    """The four demo sets, in TASKS's order, on `split`; `text_seq_len` is the recipe's text row length."""
    questions = [QuestionSet(name=name, max_new_tokens=ANSWER_TOKENS[name], split=split)
                 for name in TASKS if name != "text"]
    return (*questions, CodePerplexity(seq_len=text_seq_len, split=split))
