"""The embedded demo, end to end: corpus -> tokenizer -> prepared data -> one model trained on
a mixture of tasks -> evaluation.

    gemini-jax train        # this recipe with its defaults; about 20 minutes on 2 CPU cores

One multimodal model learns four tasks at once: easy-VQA questions about images, transcription
of synthesized speech, questions about short videos, and language modelling of Python code.
The corpus is built offline (data/corpora/demo.py), prepared like anyone's data
(data/corpora/demo_prepared.py), and trained on through a mixture file, recipes/demo.yaml: its
stages, weights and evaluation tasks are the recipe. On 2 CPU cores small matrices and many
updates learn more per minute than a wider model; docs/demo-recipe.md has the measurements
behind each of the recipe's choices.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path
from typing import ClassVar

from gemini_jax.config import ModelConfig, get_preset, override
from gemini_jax.data.corpora.demo import DemoCorpus, DemoSizes
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.recipes.runner import Setup, Timings
from gemini_jax.train.config import TrainConfig
from gemini_jax.train.optimizer import OptimizerConfig

TOKENIZER_RECIPE = 3  # DemoCorpus.tokenizer_corpus's version: a change trains a new tokenizer
MIXTURE = "demo.yaml"  # in this package


def demo_mixture() -> Path:
    """The shipped mixture file of the demo."""
    return Path(str(resources.files("gemini_jax.recipes") / MIXTURE))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DemoRecipe:
    """The demo: its model, corpus, training schedule and mixture, and its evaluation."""

    name: ClassVar[str] = "demo"
    multi_device: ClassVar[bool] = True
    eval_limit_field: ClassVar[str] = "eval_limit"
    run_dir: str | None = None  # None: runs/demo
    preset: str = "demo"
    model: ModelConfig | None = None  # replaces the preset (quick runs, tests)
    dtype: str | None = None  # the compute dtype; None: the model's
    train: TrainConfig = TrainConfig(
        steps=10_000, optimizer=OptimizerConfig(learning_rate=3e-3, warmup_steps=100, weight_decay=0.01))
    batch_size: int = 32  # a mixture source's own batch_size replaces it
    mixture: str | None = None  # a mixture file over the demo's prepared tasks; None: recipes/demo.yaml
    corpus: DemoSizes = DemoSizes()
    cache_dir: str | None = None  # None: $GEMINI_JAX_CACHE or ~/.cache/gemini-jax
    tokenizer_file: str | None = None  # None: the demo's own, trained on its corpus
    eval_limit: int | None = None  # test examples per task in the final evaluation; None: all
    evaluate_at_end: bool = True

    def model_config(self) -> ModelConfig:
        config = self.model or get_preset(self.preset)
        return config if self.dtype is None else override(config, dtype=self.dtype)

    def setup(self, run_dir: Path, timings: Timings) -> Setup:
        from gemini_jax.data.corpora.demo_prepared import prepare_demo_sources
        from gemini_jax.data.mixture_file import load_mixture
        from gemini_jax.recipes.custom import DataRecipe, mixture_setup

        config = self.model_config()
        with timings.phase("corpus_s"):
            corpus = DemoCorpus.build(self.cache_dir, sizes=self.corpus, progress=self.train.progress)
        with timings.phase("tokenizer_s"):
            tokenizer_file = self.tokenizer_file or prepare_tokenizer(corpus, vocab_size=config.vocab_size)
        with timings.phase("prepare_s"):
            sources = prepare_demo_sources(corpus, progress=self.train.progress)
        mixture = load_mixture(self.mixture or demo_mixture(), base=sources)
        recipe = DataRecipe(mixture=str(mixture.path), run_dir=self.run_dir, model=config, train=self.train,
                            batch_size=self.batch_size, eval_limit=self.eval_limit)
        return mixture_setup(recipe, mixture, run_dir=run_dir, timings=timings, tokenizer_file=tokenizer_file,
                             corpus=corpus)


def prepare_tokenizer(corpus: DemoCorpus, *, vocab_size: int) -> Path:
    """The demo tokenizer, trained once per corpus, recipe and vocabulary size and cached beside it."""
    path = corpus.root / f"tokenizer-v{TOKENIZER_RECIPE}-{vocab_size}.model"
    if not path.exists():
        train_tokenizer(corpus.tokenizer_corpus(), vocab_size=vocab_size, path=path, case_markers=True)
    return path
