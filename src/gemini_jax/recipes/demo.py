"""The embedded demo, end to end: corpus -> tokenizer -> one model trained on a task mixture -> evaluation.

    gemini-jax train        # this recipe with its defaults; about 20 minutes on 2 CPU cores

One multimodal model learns four tasks at once: easy-VQA questions about images, transcription
of synthesized speech, questions about short videos, and language modelling of Python code.
Training starts with short stages of one task each (speech, then shape questions), then
interleaves the tasks by weight (recipes/demo_streams.py). On 2 CPU cores small matrices and many
updates learn more per minute than a wider model; docs/demo-recipe.md has the measurements behind
each of the recipe's choices.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from gemini_jax import checkpoint
from gemini_jax.config import ModelConfig, get_preset, override
from gemini_jax.data.corpora.demo import DemoCorpus, DemoSizes
from gemini_jax.data.tokenizer import Tokenizer, train_tokenizer
from gemini_jax.model import Gemini
from gemini_jax.recipes.demo_streams import demo_data
from gemini_jax.recipes.runner import Setup, Timings
from gemini_jax.train.config import TrainConfig
from gemini_jax.train.optimizer import OptimizerConfig

TOKENIZER_RECIPE = 2  # DemoCorpus.tokenizer_corpus's version: a change trains a new tokenizer
QUICK_EVAL_LIMIT = 200  # validation examples per task in the evaluations every `train.eval_every` steps


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoRecipe:
    """The demo: its model, corpus, training schedule and task mixture, and its evaluation."""

    name: ClassVar[str] = "demo"
    multi_device: ClassVar[bool] = True
    eval_limit_field: ClassVar[str] = "eval_limit"
    run_dir: str | None = None  # None: runs/demo
    preset: str = "demo"
    model: ModelConfig | None = None  # replaces the preset (quick runs, tests)
    dtype: str | None = None  # the compute dtype; None: the model's
    train: TrainConfig = TrainConfig(
        steps=10_000, optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=100, weight_decay=0.01))
    batch_size: int = 32
    # Share of batches per stream. A stream is a task ("vqa") or some kinds of a task's examples
    # ("vqa:shape", "video:order_first+size"), drawn as a stream of its own beside the task's.
    weights: tuple[tuple[str, float], ...] = (
        ("vqa", 3.0), ("asr", 3.0), ("video", 2.0), ("text", 0.5), ("vqa:shape", 1.0))
    text_seq_len: int = 128
    text_batch_size: int = 16  # a text batch scores every token: 16 x 128 costs about a 32-row VQA batch
    # Stages before the mixture: (stream, share of the steps), each stream trained alone in
    # turn; what a stage taught is kept while its stream keeps a share in `weights`. Speech
    # aligns fast only from initialisation, and the vision encoder learns shape only from shape
    # questions alone (docs/demo-recipe.md).
    stages: tuple[tuple[str, float], ...] = (("asr", 0.09), ("vqa:shape", 0.09))
    corpus: DemoSizes = DemoSizes()
    cache_dir: str | None = None  # None: $GEMINI_JAX_CACHE or ~/.cache/gemini-jax
    tokenizer_file: str | None = None  # None: the demo's own, trained on its corpus
    eval_limit: int | None = None  # test examples per task in the final evaluation; None: all
    evaluate_at_end: bool = True

    def __post_init__(self):
        shares = [share for _, share in self.stages]
        if any(not 0 < share < 1 for share in shares) or sum(shares) >= 1:
            raise ValueError(f"DemoRecipe.stages need shares of the steps in (0, 1) summing below 1, got {shares}")

    def stage_steps(self) -> list[int]:
        return [int(self.train.steps * share) for _, share in self.stages]

    def model_config(self) -> ModelConfig:
        config = self.model or get_preset(self.preset)
        return config if self.dtype is None else override(config, dtype=self.dtype)

    def setup(self, run_dir: Path, timings: Timings) -> Setup:
        from gemini_jax.evals.registry import EvalOptions, evaluate, format_results
        from gemini_jax.evals.tasks.demo import demo_sets

        config = self.model_config()
        with timings.phase("corpus_s"):
            corpus = DemoCorpus.build(self.cache_dir, sizes=self.corpus, progress=self.train.progress)
        with timings.phase("tokenizer_s"):
            tokenizer_file = self.tokenizer_file or prepare_tokenizer(corpus, vocab_size=config.vocab_size)
            tokenizer = Tokenizer.load(tokenizer_file)
        checkpoint.write_run_files(run_dir, config=config, tokenizer_path=tokenizer_file)
        with timings.phase("data_setup_s"):
            data = demo_data(corpus, tokenizer=tokenizer, config=config, recipe=self)
        tests = demo_sets(text_seq_len=self.text_seq_len)  # read once, by the final evaluation
        validation = demo_sets(text_seq_len=self.text_seq_len, split="validation")

        def final(model: Gemini) -> dict[str, Any]:
            options = EvalOptions(limit=self.eval_limit, progress=self.train.progress)
            return evaluate(model, tokenizer, tests, options, corpus=corpus)

        def quick(model: Gemini) -> dict[str, Any]:
            options = EvalOptions(limit=QUICK_EVAL_LIMIT, progress=False)
            return evaluate(model, tokenizer, validation, options, corpus=corpus)

        return Setup(config=config, tokenizer=tokenizer, data=data, quick_evaluate=quick, evaluate=final,
                     format_results=format_results)


def prepare_tokenizer(corpus: DemoCorpus, *, vocab_size: int) -> Path:
    """The demo tokenizer, trained once per corpus, recipe and vocabulary size and cached beside it."""
    path = corpus.root / f"tokenizer-v{TOKENIZER_RECIPE}-{vocab_size}.model"
    if not path.exists():
        train_tokenizer(corpus.tokenizer_corpus(), vocab_size=vocab_size, path=path)
    return path
