"""`TrainConfig`: how long a run trains and how often it logs, evaluates, saves and checks itself.

Two settings default to values derived from `steps`, so that a recipe (or a command line)
that replaces `steps` keeps them consistent: `checkpoint_every` (None: four checkpoints per
run) and the optimizer's `total_steps` (None: the schedule ends with the run). `train()`
fills both in through `resolved()` before it builds anything.
"""

from __future__ import annotations

import dataclasses

from gemini_jax import sharding
from gemini_jax.config import ConfigError
from gemini_jax.train.optimizer import OptimizerConfig

CHECKPOINTS_PER_RUN = 4  # checkpoint_every's default: max(1, steps // CHECKPOINTS_PER_RUN)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 2_000
    optimizer: OptimizerConfig = OptimizerConfig()
    log_every: int = 25
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int | None = None  # None: max(1, steps // 4)
    seed: int = 0
    progress: bool = True
    # None: one device, no mesh. A MeshShape shards over every device of every process
    # (sharding.py); `data` then yields this process's share of each batch.
    mesh: sharding.MeshShape | None = None
    # Every this many steps the step is computed twice and the results compared bit for bit
    # (replay.py); a difference raises SilentDataCorruptionError. 0: never.
    sdc_check_every: int = 0
    # Steps between refreshes of the in-memory copy of the state (replica.py) that a step
    # failing with a runtime error restarts from, without reading storage; 0: no copy.
    replica_every: int = 0

    def __post_init__(self):
        at_least_one = {"steps": self.steps, "log_every": self.log_every}
        if self.checkpoint_every is not None:
            at_least_one["checkpoint_every"] = self.checkpoint_every
        for name, value in at_least_one.items():
            if value < 1:
                default = " (or None: max(1, steps // 4))" if name == "checkpoint_every" else ""
                raise ConfigError(f"TrainConfig.{name} must be at least 1{default}, got {value!r}")
        for name in ("eval_every", "sdc_check_every", "replica_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name} must be 0 (off) or a positive number of steps, "
                                  f"got {getattr(self, name)!r}")

    def resolved(self) -> TrainConfig:
        """This config with its derived defaults filled in from `steps`: `checkpoint_every` and
        `optimizer.total_steps` (a value given explicitly stays as it is)."""
        optimizer = self.optimizer
        if optimizer.total_steps is None:
            optimizer = dataclasses.replace(optimizer, total_steps=self.steps)
        checkpoint_every = self.checkpoint_every
        if checkpoint_every is None:
            checkpoint_every = max(1, self.steps // CHECKPOINTS_PER_RUN)
        return dataclasses.replace(self, optimizer=optimizer, checkpoint_every=checkpoint_every)
