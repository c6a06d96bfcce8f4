"""The long-context recipes: a demo-size decoder trained on key-value retrieval or on long
documents, and the Gemini report's two long-context evaluations (section 5.1.5).

    gemini-jax train --task kv_retrieval --seq-len 512        # RetrievalRecipe, on 2 CPU cores
    gemini-jax train --task long_text --seq-len 2048          # LongTextRecipe
    gemini-jax eval --checkpoint runs/kv_retrieval --tasks kv_retrieval,nll_by_position --output results.json

Training: rows of `seq_len` tokens (half as long, twice as many, for the first `short_share` of
the steps) packed with retrieval examples of random length (pairs, filler from the training half
of the standard library, then queries; the loss on the answers only; `data/kv_retrieval.py`).
`long_text` trains on rows of `seq_len` consecutive tokens of the same training text, every
token scored (`data/text_windows.py`), and is evaluated by NLL by position alone.
Evaluation: exact match on held-out keys and filler, by context length and by the queried pair's
position (`evals/retrieval.py`); and the mean negative log-likelihood of each token position of
held-out long documents, as JSON and a PNG (`evals/nll_position.py`).
The tokenizer is trained on the same training text as the demo's (digits split, so a digit is a
token), once per run directory.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemini_jax import checkpoint
from gemini_jax.config import ConfigError, ModelConfig, get_preset, override
from gemini_jax.data.corpora.kv_retrieval import (
    POSITIONS,
    FillerSource,
    RetrievalSpec,
    TrainingRows,
    fixed_tokens,
    standard_library_files,
)
from gemini_jax.data.corpora.text_windows import TextWindows
from gemini_jax.data.tokenizer import Tokenizer, train_tokenizer
from gemini_jax.evals.tasks import nll_position, retrieval
from gemini_jax.model import Gemini
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.trainer import TrainConfig, train

TASKS = ("kv_retrieval", "nll_by_position")
PLOT_FILE = "nll_by_position.png"
SHORTEST_LENGTH = 128  # evaluation lengths are powers of two from here: 8 pairs and a query take ~100 tokens


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetrievalRecipe:
    preset: str = "demo"  # its decoder, text only, with `depth` blocks
    # Learning goes in two jumps: first copying a value (the loss falls from 1.8, chance, to about
    # 0.7), then matching the 4-digit key among 8 (to below 0.1). Measured on 2 cores at 256 tokens:
    # 2 blocks (16 rows a step) copied but stayed at ~5% exact match with 8 pairs after 1,250 steps;
    # 3 blocks reached 44% / 74% / 90% / 96% after 500 / 750 / 1,000 / 1,250; 4 blocks at 8 rows a
    # step still sat at the copying plateau after 1,600. Matching a key of 4 digit tokens takes
    # composing previous-token heads, which a third block gives room for.
    depth: int = 3
    seq_len: int = 512
    steps: int = 2_600
    batch_size: int = 8  # rows of seq_len tokens a step
    # The first share of the steps trains on rows of half the length, twice as many (16 x 256):
    # the key matching forms there. Measured, 3 blocks: at 512 x 8 from the start, the loss was
    # still 1.02 after 800 steps; 600 steps at 256 x 16 then 600 at 512 x 8 ended on the copying
    # plateau (0.44, 7% exact match at 512). These defaults: matching from step ~850 (loss 0.27 ->
    # 0.085 in 75 steps), 42% at 512 before any 512-token row, 84% 50 steps after the switch, and
    # 98.4% at the end (1,194 s of training on 2 shared cores).
    short_share: float = 0.75
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    queries: int = 8  # questions per training example, each answer scored: more signal per token read
    spec: RetrievalSpec = RetrievalSpec()
    seed: int = 0
    eval_per_cell: int = 100  # held-out examples per (length, position) in the final table
    eval_documents: int = 32  # held-out documents of seq_len tokens for NLL by position


@dataclasses.dataclass(frozen=True, kw_only=True)
class LongTextRecipe:
    """Language modelling of long documents: the NLL-by-position curve of a model that has
    seen whole `seq_len`-token windows, where the report's loss keeps falling with position."""

    preset: str = "demo"  # its decoder, text only, with `depth` blocks
    depth: int = 2
    seq_len: int = 2_048
    steps: int = 800  # about 1 step a second on 2 CPU cores (blockwise attention)
    batch_size: int = 4  # rows of seq_len tokens a step
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    seed: int = 0
    eval_documents: int = 32  # held-out documents of seq_len tokens for NLL by position


Recipe = RetrievalRecipe | LongTextRecipe
RECIPES: dict[str, type[Recipe]] = {"kv_retrieval": RetrievalRecipe, "long_text": LongTextRecipe}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def task_name(recipe: Recipe) -> str:
    """The `--task` that trains this recipe ("kv_retrieval" or "long_text")."""
    return next(name for name, kind in RECIPES.items() if isinstance(recipe, kind))


def model_config(recipe: Recipe) -> ModelConfig:
    """The preset's decoder with a context of `seq_len`; past 1,024 tokens, blockwise attention,
    whose memory grows linearly with the length."""
    impl = "blockwise" if recipe.seq_len > 1024 else "auto"
    return override(get_preset(recipe.preset).text_only, depth=recipe.depth, max_seq_len=recipe.seq_len,
                    attention_impl=impl)


def prepare_tokenizer(run_dir: str | Path, config: ModelConfig) -> Tokenizer:
    """The run's tokenizer: trained on the training half of the standard library when the run is new."""
    run_dir = Path(run_dir)
    if (run_dir / checkpoint.TOKENIZER_FILE).exists():
        return Tokenizer.load(run_dir / checkpoint.TOKENIZER_FILE)
    texts = standard_library_files("train")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.model"
        train_tokenizer(texts, vocab_size=config.vocab_size, path=path)
        checkpoint.write_run_files(run_dir, config=config, tokenizer_path=path)
    return Tokenizer.load(run_dir / checkpoint.TOKENIZER_FILE)


def default_lengths(max_len: int) -> list[int]:
    """Powers of two from SHORTEST_LENGTH up to the context, and the context itself."""
    lengths, length = [], SHORTEST_LENGTH
    while length < max_len:
        lengths.append(length)
        length *= 2
    return [*lengths, max_len]


def evaluate(model: Gemini, tokenizer: Tokenizer, *, tasks: Sequence[str] = TASKS, lengths: Sequence[int] | None = None,
             per_cell: int = 100, documents: int = 32, plot_path: str | Path | None = None,
             spec: RetrievalSpec = RetrievalSpec(), batch_size: int = 16, progress: bool = True,
             ) -> dict[str, dict[str, Any]]:
    """{task: {metric: value}}: retrieval exact match by length and position; mean NLL by
    power-of-two buckets of token positions (the whole curve goes to `plot_path` and beside it)."""
    from tqdm.auto import tqdm

    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ConfigError(f"unknown long-context task(s) {unknown}; choose from {', '.join(TASKS)}")
    context = model.config.max_seq_len
    lengths = list(lengths or default_lengths(context))
    too_long = [n for n in lengths if n > context]
    if too_long:
        raise ConfigError(f"lengths {too_long} exceed the model's context of {context} tokens")
    shortest = fixed_tokens(tokenizer, spec=spec) if "kv_retrieval" in tasks else 2
    if min(lengths) < shortest:
        raise ConfigError(f"length {min(lengths)} is too short: {spec.num_pairs} pairs and a query take {shortest} "
                          f"tokens")
    results: dict[str, dict[str, Any]] = {}
    if "kv_retrieval" in tasks:
        bar = tqdm(total=len(lengths) * len(POSITIONS) * per_cell, desc="eval kv_retrieval", disable=not progress, unit="ex",
                   leave=False)
        results["kv_retrieval"] = retrieval.evaluate(model, tokenizer, lengths=lengths, per_cell=per_cell, spec=spec,
                                                     batch_size=batch_size, on_batch=bar.update)
        bar.close()
    if "nll_by_position" in tasks:
        docs = nll_position.held_out_documents(tokenizer, length=max(lengths), count=documents)
        nll = nll_position.nll_by_position(model, docs, batch_size=min(batch_size, 8))
        results["nll_by_position"] = {**nll_position.position_buckets(nll), "documents": documents,
                                      "length": max(lengths)}
        if plot_path is not None:
            nll_position.plot_nll_by_position(nll, plot_path)
    return results


def print_results(results: dict[str, dict[str, Any]]) -> None:
    if "kv_retrieval" in results:
        print("kv_retrieval: exact match (%) by context length (rows) and the queried pair's position (columns)")
        print(retrieval.format_grid(results["kv_retrieval"]))
    if "nll_by_position" in results:
        print("nll_by_position: mean NLL (nats/token) by tokens of context")
        for name, value in results["nll_by_position"].items():
            print(f"  {name:<20} {value:.3f}" if isinstance(value, float) else f"  {name:<20} {value}")


def training_rows(recipe: Recipe, tokenizer: Tokenizer) -> TrainingRows | TextWindows:
    """The recipe's training batches, from the training half of the standard library."""
    if isinstance(recipe, LongTextRecipe):
        return TextWindows(tokenizer.encode("".join(standard_library_files("train"))), seq_len=recipe.seq_len,
                           batch_size=recipe.batch_size, bos_id=tokenizer.bos_id, seed=recipe.seed)
    return TrainingRows(FillerSource.standard_library("train", tokenizer), seq_len=recipe.seq_len,
                        batch_size=recipe.batch_size, seed=recipe.seed, spec=recipe.spec, queries=recipe.queries,
                        short_steps=int(recipe.short_share * recipe.steps))


def train_and_evaluate(*, run_dir: str | None = None, recipe: Recipe = RetrievalRecipe(),
                       evaluate_at_end: bool = True, eval_every: int = 0, progress: bool = True,
                       config: ModelConfig | None = None, sdc_check_every: int = 0, replica_every: int = 0,
                       loss_spike_factor: float = 0.0) -> dict[str, Any]:
    """`gemini-jax train --task kv_retrieval|long_text`: trains (or resumes) the run, then
    evaluates it (retrieval at every power-of-two length up to `seq_len`, and NLL by position;
    a long_text run by NLL by position alone); writes results.json and the NLL plot into the run.
    `eval_every` steps, a quick score goes to the metrics log: retrieval exact match (10 examples
    per position at `seq_len`) or the mean NLL of 4 held-out documents. `config` replaces the
    recipe's model (for tests). `sdc_check_every`, `replica_every` and `loss_spike_factor` are
    the training guards of `gemini-jax train` (TrainConfig's and OptimizerConfig's)."""
    run_dir = run_dir or f"runs/{task_name(recipe)}"
    checkpoint.check_trainable(run_dir)
    config = config or model_config(recipe)
    if config.max_seq_len < recipe.seq_len:
        raise ConfigError(f"seq_len {recipe.seq_len} exceeds the model's context of {config.max_seq_len}")
    tokenizer = prepare_tokenizer(run_dir, config)
    if tokenizer.vocab_size > config.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} pieces, more than vocab_size {config.vocab_size}")
    retrieval_task = isinstance(recipe, RetrievalRecipe)
    timings = {}
    start = time.perf_counter()
    data = training_rows(recipe, tokenizer)
    timings["data_setup_s"] = time.perf_counter() - start
    train_config = TrainConfig(
        steps=recipe.steps, seed=recipe.seed, progress=progress, checkpoint_every=max(1, recipe.steps // 4),
        eval_every=eval_every, sdc_check_every=sdc_check_every, replica_every=replica_every,
        optimizer=OptimizerConfig(learning_rate=recipe.learning_rate, warmup_steps=recipe.warmup_steps,
                                  total_steps=recipe.steps, loss_spike_factor=loss_spike_factor),
    )

    if eval_every and retrieval_task:
        held_out = FillerSource.standard_library("test", tokenizer)
    elif eval_every:
        held_out = nll_position.held_out_documents(tokenizer, length=recipe.seq_len, count=4)

    def quick(model: Gemini) -> dict[str, float]:
        if not retrieval_task:
            return {"nll": float(nll_position.nll_by_position(model, held_out, batch_size=4).mean())}
        scores = retrieval.evaluate(model, tokenizer, lengths=[recipe.seq_len], per_cell=10, spec=recipe.spec,
                                    source=held_out)
        return {"exact_match": scores["exact_match"]}

    result = train(config=config, run_dir=run_dir, data=data, train_config=train_config,
                   evaluate=quick if eval_every else None)
    timings["training_s"] = result.wall_seconds
    _log(result.summary())
    results: dict[str, Any] = {}
    if evaluate_at_end:
        start = time.perf_counter()
        if retrieval_task:
            tasks, lengths = TASKS, default_lengths(recipe.seq_len)
            retrieval_options = {"per_cell": recipe.eval_per_cell, "spec": recipe.spec}
        else:
            tasks, lengths, retrieval_options = ("nll_by_position",), [recipe.seq_len], {}
        results = evaluate(result.model, tokenizer, tasks=tasks, lengths=lengths, documents=recipe.eval_documents,
                           plot_path=Path(run_dir) / PLOT_FILE, progress=progress, **retrieval_options)
        timings["evaluation_s"] = time.perf_counter() - start
        print_results(results)
    summary = {**results, "recipe": json.loads(json.dumps(dataclasses.asdict(recipe))),
               "task": task_name(recipe), "run": timings}
    Path(run_dir, "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return results


def evaluate_checkpoint(run_dir: str, *, tasks: Sequence[str] = TASKS, lengths: Sequence[int] | None = None,
                        per_cell: int = 100, documents: int = 32, plot_path: str | None = None,
                        batch_size: int = 16, progress: bool = True) -> dict[str, dict[str, Any]]:
    """`gemini-jax eval --tasks kv_retrieval,nll_by_position`: a run's long-context tables."""
    from flax import nnx

    # An abstract model filled from the checkpoint: running the initialisers first costs more.
    model = nnx.eval_shape(lambda: Gemini(checkpoint.read_config(run_dir), rngs=nnx.Rngs(0)))
    checkpoint.load_params(run_dir, model)
    tokenizer = Tokenizer.load(checkpoint.tokenizer_path(run_dir))
    results = evaluate(model, tokenizer, tasks=tasks, lengths=lengths, per_cell=per_cell, documents=documents,
                       plot_path=plot_path or Path(run_dir) / PLOT_FILE, batch_size=batch_size, progress=progress)
    print_results(results)
    return results
