"""The long-context recipes: a demo-size decoder trained on key-value retrieval or on long
documents, and the Gemini report's two long-context evaluations (section 5.1.5).

    gemini-jax train --task kv_retrieval --seq-len 512        # RetrievalRecipe, on 2 CPU cores
    gemini-jax train --task long_text --seq-len 2048          # LongTextRecipe
    gemini-jax eval --checkpoint runs/kv_retrieval --tasks kv_retrieval,nll_by_position --output results.json

Each recipe's training data is a mixture file (recipes/kv_retrieval.yaml, recipes/long_text.yaml)
over the training half of the standard library, prepared once as a text source
(data/corpora/stdlib_prepared.py), streamed as any mixture is (recipes/custom.py). For
kv_retrieval: rows of `seq_len` tokens (half as long, twice as many, for the first three quarters
of the steps) packed with retrieval examples of random length (pairs, filler from that text, then
queries; the loss on the answers only; data/corpora/kv_retrieval.py). `long_text` trains on rows
of `seq_len` consecutive tokens of the same text, every token scored (data/corpora/text_windows.py),
and is evaluated by NLL by position alone.
Evaluation: exact match on held-out keys and filler, by context length and by the queried pair's
position (evals/tasks/retrieval.py); and the mean negative log-likelihood of each token position
of held-out long documents, as JSON and a PNG (evals/tasks/nll_position.py).
The tokenizer is trained on the same training text as the demo's (digits split, so a digit is a
token), once per run directory. docs/long-context.md has the measurements behind the defaults.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from gemini_jax import checkpoint
from gemini_jax.config import ConfigError, ModelConfig, get_preset, override
from gemini_jax.data.corpora.kv_retrieval import FillerSource, standard_library_files
from gemini_jax.data.tokenizer import Tokenizer, train_tokenizer
from gemini_jax.evals.registry import EvalOptions, EvalTask, evaluate, format_results
from gemini_jax.evals.tasks import nll_position, retrieval
from gemini_jax.evals.tasks.long_context import (
    PLOT_FILE,
    KvRetrieval,
    NllByPosition,
    default_lengths,
)
from gemini_jax.model import Gemini
from gemini_jax.recipes.runner import Setup, Timings
from gemini_jax.train.config import TrainConfig
from gemini_jax.train.optimizer import OptimizerConfig

QUICK_RETRIEVAL_PER_CELL = 10  # held-out examples per position at seq_len, every `train.eval_every` steps
QUICK_NLL_DOCUMENTS = 4  # held-out documents whose mean NLL is logged likewise


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LongContextRecipe:
    """What both long-context recipes share: the preset's decoder, text only, `depth` blocks deep,
    with a context of `seq_len` tokens, trained on one device."""

    multi_device: ClassVar[bool] = False
    run_dir: str | None = None  # None: runs/<name>
    preset: str = "demo"
    depth: int = 3
    seq_len: int = 512
    batch_size: int = 8  # rows of seq_len tokens a step (a mixture's float batch_size is a multiple of it)
    dtype: str | None = None  # the compute dtype; None: the model's
    model: ModelConfig | None = None  # replaces the preset's decoder (tests)
    train: TrainConfig = TrainConfig(steps=2_600, optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=100))
    eval_documents: int = 32  # held-out documents of seq_len tokens for NLL by position
    # The training data: a mixture file over the prepared `stdlib` source (paths relative to the
    # folder holding it); None: the recipe's own, recipes/<name>.yaml.
    mixture: str | None = None
    cache_dir: str | None = None  # where `stdlib` is prepared; None: $GEMINI_JAX_CACHE or ~/.cache/gemini-jax
    evaluate_at_end: bool = True

    def __post_init__(self):
        if self.train.mesh is not None:
            raise ConfigError(f"{self.name} trains on one device: drop the mesh (--mesh) and the multi-host flags")

    def model_config(self) -> ModelConfig:
        """The preset's decoder with a context of `seq_len`; past 1,024 tokens, blockwise
        attention, whose memory grows linearly with the length."""
        if self.model is not None:
            config = self.model
        else:
            impl = "blockwise" if self.seq_len > 1024 else "auto"
            config = override(get_preset(self.preset).text_only, depth=self.depth, max_seq_len=self.seq_len,
                              attention_impl=impl)
        config = config if self.dtype is None else override(config, dtype=self.dtype)
        if config.max_seq_len < self.seq_len:
            raise ConfigError(f"seq_len {self.seq_len} exceeds the model's context of {config.max_seq_len}")
        return config

    def _final_evaluation(self, tasks: Sequence[EvalTask], tokenizer: Tokenizer, run_dir: Path,
                          lengths: Sequence[int]) -> Callable[[Gemini], dict[str, Any]]:
        """The evaluation after training: `tasks` at `lengths`, the NLL plot into the run."""
        options = EvalOptions(lengths=tuple(lengths), plot=str(run_dir / PLOT_FILE), progress=self.train.progress)
        return lambda model: evaluate(model, tokenizer, tasks, options)

    def _training_data(self, config: ModelConfig, tokenizer: Tokenizer, timings: Timings) -> Iterator[dict[str, Any]]:
        """The batches of the recipe's mixture file, over the standard library prepared once."""
        from gemini_jax.data.corpora.stdlib_prepared import prepare_stdlib_source
        from gemini_jax.data.mixture_file import load_mixture
        from gemini_jax.recipes.custom import DataRecipe, mixture_stream, open_sources

        with timings.phase("prepare_s"):
            base = prepare_stdlib_source(self.cache_dir, progress=self.train.progress)
        mixture = load_mixture(self.mixture or shipped_mixture(self.name), base=base)
        recipe = DataRecipe(mixture=str(mixture.path), run_dir=self.run_dir, model=config, train=self.train,
                            batch_size=self.batch_size, seq_len=self.seq_len)
        with timings.phase("data_setup_s"):
            return mixture_stream(mixture, open_sources(mixture), tokenizer=tokenizer, config=config, recipe=recipe)

    def _prepare(self, run_dir: Path) -> tuple[ModelConfig, Tokenizer]:
        config = self.model_config()
        tokenizer = prepare_tokenizer(run_dir, config)
        if tokenizer.vocab_size > config.vocab_size:
            raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} pieces, more than vocab_size "
                              f"{config.vocab_size}")
        return config, tokenizer


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetrievalRecipe(_LongContextRecipe):
    """Key-value retrieval: 8 pairs of 4-digit keys and values, filler, then queries. Three
    blocks give the room to compose previous-token heads that matching a 4-token key takes."""

    name: ClassVar[str] = "kv_retrieval"
    eval_limit_field: ClassVar[str] = "eval_per_cell"
    eval_per_cell: int = 100  # held-out examples per (length, position) in the final table

    def setup(self, run_dir: Path, timings: Timings) -> Setup:
        config, tokenizer = self._prepare(run_dir)
        data = self._training_data(config, tokenizer, timings)
        held_out = FillerSource.standard_library("validation", tokenizer) if self.train.eval_every else None

        def quick(model: Gemini) -> dict[str, float]:
            scores = retrieval.evaluate(model, tokenizer, lengths=[self.seq_len], per_cell=QUICK_RETRIEVAL_PER_CELL,
                                        source=held_out)
            return {"exact_match": scores["exact_match"]}

        tasks = (KvRetrieval(per_cell=self.eval_per_cell), NllByPosition(documents=self.eval_documents))
        return Setup(config=config, tokenizer=tokenizer, data=data, quick_evaluate=quick,
                     evaluate=self._final_evaluation(tasks, tokenizer, run_dir, default_lengths(self.seq_len)),
                     format_results=format_results)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LongTextRecipe(_LongContextRecipe):
    """Language modelling of long documents: the NLL-by-position curve of a model that has
    seen whole `seq_len`-token windows, where the report's loss keeps falling with position."""

    name: ClassVar[str] = "long_text"
    eval_limit_field: ClassVar[str] = "eval_documents"
    depth: int = 2
    seq_len: int = 2_048
    batch_size: int = 4
    # About a step a second on 2 CPU cores (blockwise attention).
    train: TrainConfig = TrainConfig(steps=800, optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=100))

    def setup(self, run_dir: Path, timings: Timings) -> Setup:
        config, tokenizer = self._prepare(run_dir)
        data = self._training_data(config, tokenizer, timings)
        held_out = (nll_position.held_out_documents(tokenizer, length=self.seq_len, count=QUICK_NLL_DOCUMENTS,
                                                    split="validation") if self.train.eval_every else None)

        def quick(model: Gemini) -> dict[str, float]:
            return {"nll": float(nll_position.nll_by_position(model, held_out, batch_size=4).mean())}

        tasks = (NllByPosition(documents=self.eval_documents),)
        return Setup(config=config, tokenizer=tokenizer, data=data, quick_evaluate=quick,
                     evaluate=self._final_evaluation(tasks, tokenizer, run_dir, [self.seq_len]),
                     format_results=format_results)


def shipped_mixture(name: str) -> Path:
    """The mixture file a long-context recipe ships with (recipes/<name>.yaml)."""
    return Path(str(resources.files("gemini_jax.recipes") / f"{name}.yaml"))


def prepare_tokenizer(run_dir: Path, config: ModelConfig) -> Tokenizer:
    """The run's tokenizer: trained on the training half of the standard library when the run is new."""
    if (run_dir / checkpoint.TOKENIZER_FILE).exists():
        return Tokenizer.load(run_dir / checkpoint.TOKENIZER_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.model"
        train_tokenizer(standard_library_files("train"), vocab_size=config.vocab_size, path=path)
        checkpoint.write_run_files(run_dir, config=config, tokenizer_path=path)
    return Tokenizer.load(run_dir / checkpoint.TOKENIZER_FILE)
