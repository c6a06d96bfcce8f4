"""Key-value retrieval accuracy by context length and by the queried pair's position.

    results = evaluate(model, tokenizer, lengths=[256, 512, 1024], per_cell=100)
    results["exact_match"], results["exact_match@len=1024"], results["exact_match@len=1024,pos=0.50"]
    print(format_grid(results))

An answer is right when greedy decoding after the prompt writes exactly " value" and then the
newline that ends it. That is checked in one forward pass over prompt and answer (teacher
forcing): greedy decoding writes a given continuation exactly when each of its tokens is the
argmax after the ones before it, so no decode loop is needed, and a long prompt costs one
prefill. The examples come from `data/kv_retrieval.py`'s test set: held-out keys, held-out filler.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from gemini_jax.data.corpora.kv_retrieval import (
    POSITIONS,
    FillerSource,
    RetrievalExample,
    RetrievalSpec,
    encode_row,
    test_set,
)
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.evals.scoring import LossScorer
from gemini_jax.model import Gemini

LENGTH_BUCKET = 64  # batch lengths are rounded up to this: one compilation per bucket


def answered(model: Gemini, tokenizer: Tokenizer, examples: Sequence[RetrievalExample], *, batch_size: int = 16,
             on_batch: Callable[[int], None] | None = None) -> list[bool]:
    """Per example: whether greedy decoding after its prompt writes its answer and newline."""
    longest = max(e.tokens for e in examples)
    if longest > model.config.max_seq_len + 1:
        raise ValueError(f"examples of {longest} tokens do not fit the model's context of "
                         f"{model.config.max_seq_len} (an example of n tokens needs n - 1 positions)")
    scorer = LossScorer(model)
    correct = [False] * len(examples)
    order = sorted(range(len(examples)), key=lambda i: examples[i].tokens)  # similar lengths batch together
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = [encode_row(examples[i], tokenizer) for i in chunk]
        most = max(r["tokens"].shape[0] for r in rows)
        seq_len = min(LENGTH_BUCKET * math.ceil(most / LENGTH_BUCKET), model.config.max_seq_len)
        greedy = scorer.rows(_batch(rows, seq_len=seq_len, batch_size=batch_size)).greedy
        for row, i in enumerate(chunk):
            correct[i] = bool(greedy[row])
        if on_batch:
            on_batch(len(chunk))
    return correct


def _batch(rows: Sequence[dict[str, np.ndarray]], *, seq_len: int, batch_size: int) -> dict[str, np.ndarray]:
    """Text rows right-padded to seq_len (segment 0), and all-padding rows up to batch_size: a few
    fixed shapes, so a few compilations."""
    batch = {k: np.zeros((batch_size, seq_len), np.float32 if k == "loss_mask" else np.int32)
             for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions", "media_spans")}
    for b, row in enumerate(rows):
        n = row["tokens"].shape[0]
        for key in ("tokens", "targets", "loss_mask"):
            batch[key][b, :n] = row[key]
        batch["segment_ids"][b, :n] = 1
        batch["positions"][b, :n] = np.arange(n)
    return batch


def accuracy_by_bucket(lengths: Sequence[int], positions: Sequence[float], correct: Sequence[bool]) -> dict[str, float]:
    """Exact match in percent: overall, by length, by position and by (length, position), as flat
    metric names (`exact_match@len=512`, `exact_match@pos=0.25`, `exact_match@len=512,pos=0.25`),
    and the number of examples."""
    if not (len(lengths) == len(positions) == len(correct)) or not correct:
        raise ValueError("need one length, position and outcome per example, and at least one example")
    groups: dict[str, list[bool]] = defaultdict(list)
    for length, position, right in zip(lengths, positions, correct):
        for name in ("exact_match", f"exact_match@len={length}", f"exact_match@pos={position:.2f}",
                     f"exact_match@len={length},pos={position:.2f}"):
            groups[name].append(bool(right))
    return {**{name: 100.0 * sum(v) / len(v) for name, v in groups.items()}, "examples": len(correct)}


def evaluate(model: Gemini, tokenizer: Tokenizer, *, lengths: Sequence[int], per_cell: int,
             positions: Sequence[float] = POSITIONS, seed: int = 0, spec: RetrievalSpec = RetrievalSpec(),
             source: FillerSource | None = None, batch_size: int = 16,
             on_batch: Callable[[int], None] | None = None) -> dict[str, float]:
    """`accuracy_by_bucket` over `per_cell` held-out examples per (length, position)."""
    source = source or FillerSource.standard_library("test", tokenizer)
    examples = test_set(source, lengths=lengths, positions=positions, per_cell=per_cell, seed=seed, spec=spec)
    correct = answered(model, tokenizer, examples, batch_size=batch_size, on_batch=on_batch)
    return accuracy_by_bucket([e.length for e in examples], [e.position for e in examples], correct)


def format_grid(metrics: dict[str, float]) -> str:
    """A Markdown table of exact match: a row per length, a column per position, and "all"."""
    lengths = sorted({int(k.split("=")[1]) for k in metrics if k.startswith("exact_match@len=") and "," not in k})
    positions = sorted({k.split("=")[1] for k in metrics if k.startswith("exact_match@pos=")}, key=float)
    lines = ["| length | " + " | ".join(f"pos {p}" for p in positions) + " | all |",
             "|---:|" + "---:|" * (len(positions) + 1)]
    for length in lengths:
        cells = [f"{metrics[f'exact_match@len={length},pos={p}']:.1f}" for p in positions]
        lines.append(f"| {length} | " + " | ".join(cells) + f" | {metrics[f'exact_match@len={length}']:.1f} |")
    cells = [f"{metrics[f'exact_match@pos={p}']:.1f}" for p in positions]
    lines.append("| all | " + " | ".join(cells) + f" | {metrics['exact_match']:.1f} |")
    return "\n".join(lines)
