"""The one runner every recipe shares: set the run up, train it, evaluate it, write results.json.

A recipe is a frozen config object with a nested `TrainConfig` (`recipe.train`) that knows how
to build its model config, tokenizer, training stream and evaluations (`Recipe.setup`); the
runner does the rest the same way for all of them:

    results = train_and_evaluate(DemoRecipe())
    results = train_and_evaluate(dataclasses.replace(RetrievalRecipe(), seq_len=256))
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import resource
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from gemini_jax import checkpoint, host_memory
from gemini_jax.config import ModelConfig
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.model import Gemini
from gemini_jax.train import TrainConfig, Trainer, train

RESULTS_FILE = "results.json"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Timings(dict):
    """Wall seconds of a run's phases, by name ("corpus_s", "training_s", ...)."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self[name] = time.perf_counter() - start


@dataclasses.dataclass(frozen=True, kw_only=True)
class Setup:
    """What a recipe hands the runner: the model to train and how to feed and score it."""

    config: ModelConfig
    tokenizer: Tokenizer
    data: Iterator[Mapping[str, Any]]
    # Scores logged every `train.eval_every` steps (None: none).
    quick_evaluate: Callable[[Gemini], dict[str, Any]] | None
    # The final evaluation: {task: {metric: value}} of the trained model.
    evaluate: Callable[[Gemini], dict[str, dict[str, Any]]]
    # Prints the final evaluation's tables.
    format_results: Callable[[dict[str, dict[str, Any]]], str]


class Recipe(Protocol):
    name: str  # the `--task` that trains it, and its default run directory under runs/
    multi_device: bool  # whether it may train on a mesh of many devices and hosts
    eval_limit_field: str  # its field that `--eval-limit` sets
    run_dir: str | None
    train: TrainConfig
    evaluate_at_end: bool

    def setup(self, run_dir: Path, timings: Timings) -> Setup: ...


def start_backend(train_config: TrainConfig, *, coordinator: str | None = None, num_processes: int | None = None,
                  process_id: int | None = None) -> None:
    """Readies this process for training before anything starts JAX's backend: joins the cluster
    (a multi-host run), sets the GPU determinism flag that SDC replays need, and checks that the
    mesh fits the devices (now, not after the corpus is built)."""
    import os

    from gemini_jax.sharding import make_mesh
    from gemini_jax.train import distributed
    from gemini_jax.train.replay import GPU_DETERMINISM_FLAG

    if train_config.sdc_check_every and GPU_DETERMINISM_FLAG not in os.environ.get("XLA_FLAGS", ""):
        # Read when the backend starts (below): replays on GPU agree only with it.
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {GPU_DETERMINISM_FLAG}".strip()
    distributed.initialize(coordinator=coordinator, num_processes=num_processes, process_id=process_id)
    if train_config.mesh is not None:
        make_mesh(train_config.mesh)


def run_dir_of(recipe: Recipe) -> Path:
    """Where the recipe's run lives: its `run_dir`, by default runs/<name>."""
    return Path(recipe.run_dir or f"runs/{recipe.name}")


def _peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_and_evaluate(recipe: Recipe, *, make_trainer: Callable[..., Trainer] = Trainer) -> dict[str, Any]:
    """Trains (or resumes) the recipe's run, evaluates it and writes results.json into it.

    Returns the final evaluation, {task: {metric: value}} ({} without one). `make_trainer`
    replaces the Trainer (distillation trains another loss in the same loop).
    """
    try:
        return _train_and_evaluate(recipe, make_trainer=make_trainer)
    finally:
        # The run's host buffers are garbage now; without this a process training several runs keeps
        # much of each one's peak memory (host_memory.py).
        host_memory.release()


def _train_and_evaluate(recipe: Recipe, *, make_trainer: Callable[..., Trainer]) -> dict[str, Any]:
    run_dir = run_dir_of(recipe)
    checkpoint.check_trainable(run_dir)  # before anything is written into it
    timings = Timings()
    setup = recipe.setup(run_dir, timings)
    result = train(config=setup.config, run_dir=run_dir, data=setup.data, train_config=recipe.train,
                   evaluate=setup.quick_evaluate if recipe.train.eval_every else None, make_trainer=make_trainer)
    timings["training_s"] = result.wall_seconds
    log(result.summary())
    results: dict[str, Any] = {}
    if recipe.evaluate_at_end:
        with timings.phase("evaluation_s"):
            results = setup.evaluate(result.model)
        print(setup.format_results(results))
    timings["peak_memory_mb"] = _peak_memory_mb()
    timings["training_tokens_per_s"] = result.tokens_per_second
    timings["data_wait_percent"] = 100 * result.data_wait_fraction
    log("phases: " + ", ".join(f"{k} {v:,.1f}" for k, v in timings.items()))
    summary = {**results, "task": recipe.name, "recipe": recipe_as_json(recipe), "run": dict(timings)}
    Path(run_dir, RESULTS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return results


def recipe_as_json(recipe: Recipe) -> Any:
    """The recipe's fields as JSON (enums and paths as their strings)."""
    return json.loads(json.dumps(dataclasses.asdict(recipe), default=str))

