"""What the training loop does after each step, one concern per hook: metrics logging (with
tokens/s and the progress bar), periodic evaluation, checkpoints, the in-memory replica.

A hook is called as `hook(step, outcome)` after every step, in the order the loop lists them,
and decides for itself whether this step is one of its own.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import numpy as np
from tqdm.auto import tqdm

from gemini_jax.model import Gemini
from gemini_jax.train.metrics import MetricsLog
from gemini_jax.train.replica import Replica
from gemini_jax.train.resume import RunCheckpoints, data_state
from gemini_jax.train.trainer import Trainer


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepOutcome:
    metrics: Mapping[str, jax.Array]  # the step's, still on the device
    tokens: int  # the batch's non-padding tokens


class Hook(Protocol):
    def __call__(self, step: int, outcome: StepOutcome) -> None: ...


class MetricsLogging:
    """Every `log_every` steps and at the last: the interval's mean loss (and the trainer's
    `logged_metrics`), the learning rate, the last gradient norm and skip counts, and the
    interval's tokens/s, written to the log and shown on the progress bar."""

    def __init__(self, *, log: MetricsLog, trainer: Trainer, log_every: int, start: int, end: int, total: int,
                 show_progress: bool):
        self.log, self.trainer, self.log_every, self.end = log, trainer, log_every, end
        self.bar = tqdm(total=total, initial=start, disable=not show_progress, unit="step", dynamic_ncols=True)
        self.started = time.perf_counter()
        self.pending: list[Mapping[str, jax.Array]] = []
        self.window_tokens, self.window_start = 0, time.perf_counter()
        self.total_tokens = 0  # every step's, replayed ones included: what the run processed
        self.last_loss = math.nan  # the mean loss of the last interval logged

    def __call__(self, step: int, outcome: StepOutcome) -> None:
        self.pending.append(outcome.metrics)
        self.window_tokens += outcome.tokens
        self.total_tokens += outcome.tokens
        self.bar.update(1)
        if step % self.log_every == 0 or step == self.end:
            self._write(step)

    def _write(self, step: int) -> None:
        # Reading metrics back waits for the device: once per log interval only.
        now = time.perf_counter()
        rate = self.window_tokens / max(now - self.window_start, 1e-9)
        self.last_loss = float(np.mean([float(m["loss"]) for m in self.pending]))
        with jax.numpy_dtype_promotion("standard"):
            lr = float(self.trainer.schedule(step))
        last = self.pending[-1]
        self.log.write({
            "kind": "train", "step": step, "loss": self.last_loss, "lr": lr, "grad_norm": float(last["grad_norm"]),
            # Both counts run since the run began (they are part of the checkpointed state).
            "skipped_updates": int(last["skipped_updates"]), "spike_skips": int(last["spike_skips"]),
            "tokens_per_second": rate, "elapsed_s": now - self.started,
            **{name: float(np.mean([float(m[name]) for m in self.pending])) for name in self.trainer.logged_metrics},
        })
        self.bar.set_postfix(loss=f"{self.last_loss:.3f}", tok_s=f"{rate:,.0f}")
        self.pending, self.window_tokens, self.window_start = [], 0, now

    def rewind(self, step: int) -> None:
        """Forgets the steps after `step` (the loop restarts from there) from the interval and the bar."""
        self.pending, self.window_tokens, self.window_start = [], 0, time.perf_counter()
        self.bar.n = step
        self.bar.refresh()

    def close(self) -> float:
        """Closes the bar; returns the seconds since logging began."""
        self.bar.close()
        return time.perf_counter() - self.started


class PeriodicEvaluation:
    """`evaluate(model)` every `every` steps before the last (0: never), logged; `run` evaluates
    at any step (the loop's final evaluation)."""

    def __init__(self, *, evaluate: Callable[[Gemini], dict[str, Any]] | None, every: int, end: int,
                 trainer: Trainer, log: MetricsLog):
        self.evaluate, self.every, self.end, self.trainer, self.log = evaluate, every, end, trainer, log
        self.last_metrics: dict[str, Any] = {}

    def __call__(self, step: int, outcome: StepOutcome) -> None:
        if self.every and step % self.every == 0 and step != self.end and self.evaluate:
            self.run(step)

    def run(self, step: int) -> None:
        self.last_metrics = self.evaluate(self.trainer.model)
        self.log.write({"kind": "eval", "step": step, **self.last_metrics})


class PeriodicCheckpoint:
    """Saves every `every` steps and at the last."""

    def __init__(self, checkpoints: RunCheckpoints, *, every: int, end: int):
        self.checkpoints, self.every, self.end = checkpoints, every, end

    def __call__(self, step: int, outcome: StepOutcome) -> None:
        if step % self.every == 0 or step == self.end:
            self.checkpoints.save(step)


class ReplicaRefresh:
    """Refreshes the in-memory copy of the state (replica.py) every `every` steps; `recover`
    puts it back after a failed step, once per copy."""

    def __init__(self, *, trainer: Trainer, data: Iterator[Any], every: int, log: MetricsLog):
        self.trainer, self.data, self.every, self.log = trainer, data, every, log
        self.replica = Replica()
        self.recovered_from: int | None = None  # the step of the copy last put back

    def __call__(self, step: int, outcome: StepOutcome) -> None:
        if step % self.every == 0:
            self.replica.refresh(self.trainer, step=step, data_state=data_state(self.data))

    def can_recover(self) -> bool:
        """Whether a copy exists that has not been put back yet: a failure that comes back
        before a fresh copy is not transient."""
        return self.replica.step is not None and self.replica.step != self.recovered_from

    def recover(self) -> int:
        """Puts the copy back into the trainer and the data iterator; logs it; returns its step."""
        started = time.perf_counter()
        step, position = self.replica.recover(self.trainer)
        if position is not None:
            self.data.set_state(position)
        self.recovered_from = step
        self.log.truncate_after(step)
        self.log.write({"kind": "recovery", "step": step, "source": "in-memory replica",
                        "seconds": time.perf_counter() - started})
        return step
