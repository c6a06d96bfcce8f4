"""`train()`: resume, then a flat loop of steps, each followed by the hooks (hooks.py).

With `replica_every`, a step that fails with a runtime error restarts from an in-memory copy
of the state instead of failing the run (replica.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from gemini_jax import sharding
from gemini_jax.checkpoint import check_trainable
from gemini_jax.config import ModelConfig
from gemini_jax.model import Gemini
from gemini_jax.train.batches import non_padding_tokens
from gemini_jax.train.config import TrainConfig
from gemini_jax.train.hooks import (
    Hook,
    MetricsLogging,
    PeriodicCheckpoint,
    PeriodicEvaluation,
    ReplicaRefresh,
    StepOutcome,
)
from gemini_jax.train.metrics import LOSS_PLOT_FILE, MetricsLog, plot_losses
from gemini_jax.train.replay import SilentDataCorruptionError, require_deterministic_backend
from gemini_jax.train.resume import RunCheckpoints
from gemini_jax.train.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class TrainResult:
    model: Gemini
    step: int
    final_loss: float
    tokens_per_second: float
    wall_seconds: float
    eval_metrics: dict[str, Any]
    # Seconds the loop waited for its next batch: the pipeline falling behind the step (the step
    # runs asynchronously, so a pipeline that keeps up hands its batch over at once).
    data_wait_seconds: float = 0.0

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait_seconds / max(self.wall_seconds, 1e-9)

    def summary(self) -> str:
        """One line for the log: steps, time, rate, time waiting for data and final loss."""
        return (f"trained {self.step} steps in {self.wall_seconds:.0f} s, {self.tokens_per_second:,.0f} tokens/s, "
                f"{100 * self.data_wait_fraction:.1f}% of the time waiting for data, final loss {self.final_loss:.4f}")


def build_trainer(*, config: ModelConfig, train_config: TrainConfig, make_trainer: Callable[..., Trainer]) -> Trainer:
    """A fresh model (seeded by `train_config.seed`) in a trainer, on the run's mesh if it has one."""
    model = Gemini(config, rngs=nnx.Rngs(train_config.seed))
    mesh = None if train_config.mesh is None else sharding.make_mesh(train_config.mesh)
    if train_config.sdc_check_every:
        require_deterministic_backend()  # now, not at the first checked step
    return make_trainer(model, train_config.optimizer, mesh=mesh)


def take_step(trainer: Trainer, batch: Mapping[str, np.ndarray], *, step: int, sdc_check_every: int,
              log: MetricsLog) -> dict[str, jax.Array]:
    """One update on `batch`; every `sdc_check_every` steps a checked one (replay.py), whose
    SilentDataCorruptionError is logged before it propagates."""
    if not (sdc_check_every and step % sdc_check_every == 0):
        return trainer.step(batch)
    try:
        return trainer.checked_step(batch, step=step)
    except SilentDataCorruptionError as error:
        log.write({"kind": "sdc", **error.record()})
        raise


def train(*, config: ModelConfig, run_dir: str | os.PathLike, data: Iterator[Mapping[str, np.ndarray]],
          train_config: TrainConfig, evaluate: Callable[[Gemini], dict[str, Any]] | None = None,
          stop_after: int | None = None, make_trainer: Callable[..., Trainer] = Trainer) -> TrainResult:
    """Trains (or resumes) the run in `run_dir` for `train_config.steps` steps.

    `data` is an iterator of batches (see batch.py); if it has `get_state`/`set_state` (a Grain
    iterator) its position is checkpointed. `evaluate(model)` returns metrics to log.
    `stop_after` ends the loop early at that step (to test resumption) without changing the
    schedule. `make_trainer(model, optimizer_config, mesh=mesh)` builds the Trainer: a
    subclass trains with another loss (train/distill.py) in this same loop.
    """
    run_dir = Path(run_dir)
    check_trainable(run_dir)
    train_config = train_config.resolved()
    trainer = build_trainer(config=config, train_config=train_config, make_trainer=make_trainer)
    # In a multi-host run every process trains; process 0 alone writes metrics and the plot
    # (Orbax coordinates the checkpoint writes itself).
    main = jax.process_index() == 0
    log = MetricsLog(run_dir, writes=main)
    checkpoints = RunCheckpoints(run_dir, model_config=config, train_config=train_config, trainer=trainer, data=data)
    start = checkpoints.resume(log)
    end = min(train_config.steps, stop_after if stop_after is not None else train_config.steps)
    logger = MetricsLogging(log=log, trainer=trainer, log_every=train_config.log_every, start=start, end=end,
                            total=train_config.steps, show_progress=train_config.progress and main)
    evaluation = PeriodicEvaluation(evaluate=evaluate, every=train_config.eval_every, end=end, trainer=trainer, log=log)
    replica = (ReplicaRefresh(trainer=trainer, data=data, every=train_config.replica_every, log=log)
               if train_config.replica_every else None)
    hooks: list[Hook] = [logger, evaluation, PeriodicCheckpoint(checkpoints, every=train_config.checkpoint_every,
                                                                   end=end)]
    hooks += [replica] if replica is not None else []

    step, data_wait = start, 0.0
    while step < end:
        step += 1
        try:
            asked = time.perf_counter()
            batch = next(data)
            data_wait += time.perf_counter() - asked
            tokens = non_padding_tokens(batch)
            metrics = take_step(trainer, batch, step=step, sdc_check_every=train_config.sdc_check_every, log=log)
            outcome = StepOutcome(metrics=metrics, tokens=tokens)
            for hook in hooks:
                hook(step, outcome)
        except jax.errors.JaxRuntimeError:
            # A failed step (a device fault, a lost primary copy) surfaces here, at the step or
            # when its metrics are read: restart from the in-memory copy, if there is one.
            if replica is None or not replica.can_recover():
                raise
            step = replica.recover()
            logger.rewind(step)

    wall = logger.close()
    checkpoints.close()
    if evaluate is not None and end == train_config.steps:
        evaluation.run(end)
    if main:
        plot_losses(log.read(), run_dir / LOSS_PLOT_FILE)
    return TrainResult(model=trainer.model, step=end, final_loss=logger.last_loss,
                       tokens_per_second=logger.total_tokens / max(wall, 1e-9), wall_seconds=wall,
                       eval_metrics=evaluation.last_metrics, data_wait_seconds=data_wait)
