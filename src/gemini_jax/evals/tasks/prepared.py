"""Evaluation on the user's own held-out examples: a prepared data directory's split
(`gemini-jax data prepare`) or a contents-format JSONL file.

    gemini-jax eval --checkpoint runs/digits --tasks prepared --data-dir data/prepared   # its test split
    gemini-jax eval --checkpoint runs/digits --tasks prepared --data-dir data/test.jsonl
    gemini-jax eval --checkpoint runs/digits --tasks prepared_validation --data-dir data/prepared

Metrics: `exact_match` (%), the greedy answer to an example's turns up to its last model turn
against that turn's text, normalised as the demo's VQA is (case, surrounding space and
punctuation), over the examples that end with a model turn after a user turn; `loss` and
`perplexity` per scored token (the tokens training puts its loss on: model turns, or all of
a raw-text document). A recipe passes its own instances (`PreparedSet(examples=...)`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from gemini_jax.data.examples import Example, ExampleError, from_json
from gemini_jax.evals.eval_task import EvalContext, EvalTask, Family, TaskOutcome
from gemini_jax.evals.tasks.base import TaskDataError
from gemini_jax.evals.tasks.demo import answer_questions, demo_sampler, exact_match, perplexity, split_prompt

METRICS = ("exact_match", "loss", "perplexity")
MAX_ANSWER_TOKENS = 64  # answers are sampled up to the longest reference plus one, at most this


def read_jsonl(path: str | Path) -> list[Example]:
    """The examples of a contents-format JSONL file, media paths relative to its folder."""
    path = Path(path)
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            examples.append(from_json(json.loads(line), base_dir=path.parent, where=f"{path}:{number}"))
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}:{number}: not valid JSON: {e.msg}") from None
        except ExampleError as e:
            raise TaskDataError(str(e)) from None
    return examples


def load_examples(path: str | Path, split: str) -> Sequence[Example]:
    """A .jsonl file's examples, or a prepared data directory's `split`."""
    from gemini_jax.data.prepared import PreparedDataError, open_prepared

    if Path(path).suffix == ".jsonl" and Path(path).is_file():
        return read_jsonl(path)
    try:
        data = open_prepared(path)
        examples = data.split(split)
    except PreparedDataError as e:
        raise TaskDataError(f"{e} (--data-dir takes a prepared data directory or a .jsonl file)") from None
    if not len(examples):
        raise TaskDataError(f"{path}: its {split} split is empty"
                            + (" (prepare it with --test-fraction above 0)" if split == "test" else ""))
    return examples


def has_answer(example: Example) -> bool:
    """Whether exact match applies: a conversation that ends with a model turn after a user turn."""
    roles = [c.role for c in example.contents]
    return not example.raw_text and len(roles) >= 2 and roles[-1] == "model" and roles[-2] == "user"


def loss_sum(model: Any, tokenizer: Any, examples: Sequence[Example], *, batch_size: int) -> tuple[float, float]:
    """(summed loss in nats, scored tokens) over `examples`, each encoded as training encodes it;
    batches share one shape (the longest example, the most media slots). Documents longer than
    the model's context are scored in context-sized windows (packed, as training reads them)."""
    from gemini_jax.data import pipeline
    from gemini_jax.data.encode import MediaCache, encode_example
    from gemini_jax.data.row_shapes import pad_row, stack_rows
    from gemini_jax.evals.scoring import LossScorer

    scorer = LossScorer(model)
    config = model.config
    documents = [e for e in examples if e.raw_text]
    total, count = 0.0, 0.0
    if documents:
        batches = pipeline.packed_text(documents, tokenizer=tokenizer, seq_len=config.max_seq_len,
                                       batch_size=batch_size, seed=0, shuffle=False, num_epochs=1,
                                       drop_remainder=False, num_threads=1, prefetch_batches=0)
        total, count = scorer.total(batches)
    cache = MediaCache(max_bytes=256 << 20)
    rows = [encode_example(e, tokenizer=tokenizer, config=config, media_cache=cache)
            for e in examples if not e.raw_text]
    if rows:
        # Every batch padded to one shape (the longest row, the most media slots): one compilation.
        shapes = _shapes(rows, config=config)
        for start in range(0, len(rows), batch_size):
            batch = stack_rows(batch_size)([pad_row(r, shapes) for r in rows[start:start + batch_size]])
            s, n = scorer.total([batch])
            total, count = total + s, count + n
    return total, count


def _shapes(rows: Sequence[dict], *, config: Any):
    from gemini_jax.data.row_shapes import media_shapes

    def most(key: str) -> int:
        return max((r[key].shape[0] for r in rows if key in r), default=0)

    mel_frames = max((r["audio_mels"].shape[1] for r in rows if "audio_mels" in r), default=None)
    return media_shapes(seq_len=8 * math.ceil(most("tokens") / 8), config=config, max_images=most("image_patches"),
                        max_frames=most("frame_patches"), max_audio_clips=most("audio_mels"),
                        max_mel_frames=mel_frames)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreparedSet(EvalTask):
    """Held-out examples: given (`examples`), or read from `path` (default --data-dir), a .jsonl
    file or a prepared data directory's `split`; scored by `metrics`."""

    name: str = "prepared"
    split: str = "test"
    path: str | None = None  # None: --data-dir
    examples: Sequence[Example] | None = dataclasses.field(default=None, repr=False)
    metrics: tuple[str, ...] = METRICS
    family: ClassVar[Family] = Family.YOUR_DATA
    reads: ClassVar[frozenset[str]] = frozenset({"data_dir", "records"})
    default_batch_size: ClassVar[int] = 64

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise TaskDataError(f"unknown metric(s) {unknown}; known: {list(METRICS)}")

    def check(self, context: EvalContext) -> None:
        if self.examples is None and (self.path or context.options.data_dir) is None:
            raise TaskDataError(f"task {self.name} reads a prepared data directory or a .jsonl file: give --data-dir")

    def _examples(self, context: EvalContext) -> Sequence[Example]:
        examples = self.examples
        if examples is None:
            examples = load_examples(self.path or context.options.data_dir, self.split)
        limit = context.options.limit
        return examples if limit is None or limit >= len(examples) else [examples[i] for i in range(limit)]

    def run(self, context: EvalContext) -> TaskOutcome:
        examples = list(self._examples(context))
        metrics: dict[str, Any] = {}
        records: list[dict[str, Any]] = []
        batch_size = self.batch_size(context.options)
        questions = [e for e in examples if has_answer(e)]
        if "exact_match" in self.metrics and questions:
            longest = max(len(context.tokenizer.encode(split_prompt(e)[1])) for e in questions)
            scored = answer_questions(context.shared(demo_sampler), questions, batch_size=batch_size,
                                      max_new_tokens=min(longest + 1, MAX_ANSWER_TOKENS))
            metrics["exact_match"] = exact_match(scored)
            records = [dataclasses.asdict(r) for r in scored]
        if {"loss", "perplexity"} & set(self.metrics):
            total, count = loss_sum(context.model, context.tokenizer, examples, batch_size=batch_size)
            scores = perplexity(total, count)
            metrics |= {k: v for k, v in scores.items() if k in self.metrics or k == "tokens"}
        metrics["examples"] = len(examples)
        return TaskOutcome(metrics, records)


def prepared_sets() -> tuple[PreparedSet, ...]:
    """The registry's tasks: `prepared` reads --data-dir's test split (or a .jsonl file),
    `prepared_validation` its validation split."""
    return PreparedSet(), PreparedSet(name="prepared_validation", split="validation")
