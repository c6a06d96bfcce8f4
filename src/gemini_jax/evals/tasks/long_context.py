"""The long-context probes as registry tasks: key-value retrieval by context length and position
(retrieval.py) and NLL by token position (nll_position.py), at the lengths of `--lengths` or, by
default, every power of two from SHORTEST_LENGTH up to the model's context."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from gemini_jax.data.corpora.kv_retrieval import POSITIONS, RetrievalSpec, fixed_tokens
from gemini_jax.evals.eval_task import EvalContext, EvalTask, Family, TaskOutcome
from gemini_jax.evals.tasks.base import TaskDataError

SHORTEST_LENGTH = 128  # 8 pairs and a query take about 100 tokens
PLOT_FILE = "nll_by_position.png"  # written into the run directory unless --plot says where


def default_lengths(max_len: int) -> list[int]:
    """Powers of two from SHORTEST_LENGTH up to `max_len`, and `max_len` itself."""
    lengths, length = [], SHORTEST_LENGTH
    while length < max_len:
        lengths.append(length)
        length *= 2
    return [*lengths, max_len]


def lengths(context: EvalContext) -> list[int]:
    """The context lengths every long-context task of the call evaluates at."""
    return list(context.options.lengths or default_lengths(context.model.config.max_seq_len))


def _check_lengths(context: EvalContext, *, shortest: int, needs: str) -> None:
    chosen, limit = lengths(context), context.model.config.max_seq_len
    too_long = [n for n in chosen if n > limit]
    if too_long:
        raise TaskDataError(f"lengths {too_long} exceed the model's context of {limit} tokens")
    if min(chosen) < shortest:
        raise TaskDataError(f"length {min(chosen)} is too short: {needs} take {shortest} tokens")


class _LongContext(EvalTask):
    family: ClassVar[Family] = Family.LONG_CONTEXT
    reads: ClassVar[frozenset[str]] = frozenset({"lengths", "plot"})
    default_batch_size: ClassVar[int] = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class KvRetrieval(_LongContext):
    """Exact match on held-out key-value retrieval, `per_cell` examples per (length, position)."""

    name: str = "kv_retrieval"
    per_cell: int = 100  # --limit replaces it
    spec: RetrievalSpec = RetrievalSpec()

    def check(self, context: EvalContext) -> None:
        _check_lengths(context, shortest=fixed_tokens(context.tokenizer, spec=self.spec),
                       needs=f"{self.spec.num_pairs} pairs and a query")

    def run(self, context: EvalContext) -> TaskOutcome:
        from tqdm.auto import tqdm

        from gemini_jax.evals.tasks import retrieval

        chosen, per_cell = lengths(context), context.options.limit or self.per_cell
        bar = tqdm(total=len(chosen) * len(POSITIONS) * per_cell, desc="eval kv_retrieval",
                   disable=not context.options.progress, unit="ex", leave=False)
        metrics = retrieval.evaluate(context.model, context.tokenizer, lengths=chosen, per_cell=per_cell,
                                     spec=self.spec, batch_size=self.batch_size(context.options), on_batch=bar.update)
        bar.close()
        return TaskOutcome(metrics)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NllByPosition(_LongContext):
    """Mean NLL by power-of-two buckets of token positions over `documents` held-out documents
    of the longest length; the whole curve goes to the plot (and a JSON file beside it)."""

    name: str = "nll_by_position"
    documents: int = 32  # --limit replaces it
    max_batch_size: int = 8  # rows of the longest length scored together, at most

    def check(self, context: EvalContext) -> None:
        _check_lengths(context, shortest=2, needs="a token and its successor")

    def plot_path(self, context: EvalContext):
        if context.options.plot is not None:
            return context.options.plot
        return None if context.run_dir is None else context.run_dir / PLOT_FILE

    def run(self, context: EvalContext) -> TaskOutcome:
        from gemini_jax.evals.tasks import nll_position

        length, count = max(lengths(context)), context.options.limit or self.documents
        documents = nll_position.held_out_documents(context.tokenizer, length=length, count=count)
        nll = nll_position.nll_by_position(context.model, documents,
                                           batch_size=min(self.batch_size(context.options), self.max_batch_size))
        path = self.plot_path(context)
        if path is not None:
            nll_position.plot_nll_by_position(nll, path)
        return TaskOutcome({**nll_position.position_buckets(nll), "documents": count, "length": length})


def format_results(results: dict[str, dict]) -> str:
    """The retrieval grid and the NLL buckets, for those of the two in `results`."""
    from gemini_jax.evals.tasks import retrieval

    lines = []
    if "kv_retrieval" in results:
        lines += ["kv_retrieval: exact match (%) by context length (rows) and the queried pair's position (columns)",
                  retrieval.format_grid(results["kv_retrieval"])]
    if "nll_by_position" in results:
        lines.append("nll_by_position: mean NLL (nats/token) by tokens of context")
        lines += [f"  {name:<20} {value:.3f}" if isinstance(value, float) else f"  {name:<20} {value}"
                  for name, value in results["nll_by_position"].items()]
    return "\n".join(lines)
