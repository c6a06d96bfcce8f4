"""A run's checkpoints as training sees them: resume from the latest, save a step with its metadata.

Resuming restores parameters, optimizer state and the data iterator's position, so a resumed
run reproduces the losses of an uninterrupted one, after a clean stop or a kill -9 alike
(checkpoints are atomic: see checkpoint.py). The data pipeline's shuffling and augmentation
are seeded and part of the iterator's state.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

from gemini_jax.checkpoint import Checkpointer, another_model_error, model_differences
from gemini_jax.config import ModelConfig, config_to_dict
from gemini_jax.train.config import TrainConfig
from gemini_jax.train.metrics import MetricsLog
from gemini_jax.train.trainer import Trainer


def json_safe(state: Any) -> Any:
    """Grain iterator states are JSON-able dicts; bytes (if any) become latin-1 strings."""
    return json.loads(json.dumps(state, default=lambda b: {"__bytes__": b.decode("latin-1")}))


def from_json_safe(state: Any) -> Any:
    return json.loads(
        json.dumps(state),
        object_hook=lambda d: d["__bytes__"].encode("latin-1") if set(d) == {"__bytes__"} else d,
    )


def data_state(data: Iterator[Any]) -> Any:
    """The iterator's position, where it has one (a Grain iterator's `get_state`); else None."""
    return data.get_state() if hasattr(data, "get_state") else None


class RunCheckpoints:
    """Saves a trainer's state with the run's metadata (model and training configs, data
    position) into `run_dir`'s checkpoints, and restores the latest on resume."""

    def __init__(self, run_dir: str | os.PathLike, *, model_config: ModelConfig, train_config: TrainConfig,
                 trainer: Trainer, data: Iterator[Any]):
        self.run_dir = run_dir
        self.model_config, self.train_config = model_config, train_config
        self.trainer, self.data = trainer, data
        self.checkpointer = Checkpointer(run_dir)

    def resume(self, log: MetricsLog) -> int:
        """Restores the latest checkpoint, if any, into the trainer and the data iterator and
        returns its step (0: a fresh run). The log keeps the records up to that step."""
        latest = self.checkpointer.latest_step()
        if latest is None:
            log.clear()
            return 0
        # Another model's parameters would fail to restore with a shape error deep in Orbax.
        saved = self.checkpointer.read_meta(latest).get("model_config")
        if saved is not None and (differences := model_differences(saved, self.model_config)):
            self.checkpointer.close()
            raise another_model_error(self.run_dir, differences)
        state, meta = self.checkpointer.restore(latest, state_like=self.trainer.state())
        self.trainer.load_state(state)
        if meta.get("data_state") is not None and hasattr(self.data, "set_state"):
            self.data.set_state(from_json_safe(meta["data_state"]))
        log.truncate_after(latest)
        return latest

    def save(self, step: int) -> None:
        position = data_state(self.data)
        meta = {
            "step": step,
            "model_config": config_to_dict(self.model_config),
            "train_config": json.loads(json.dumps(dataclasses.asdict(self.train_config))),
            "data_state": json_safe(position) if position is not None else None,
        }
        self.checkpointer.save(step, state=self.trainer.state(), meta=meta)

    def close(self) -> None:
        """Waits for the saves in flight, then releases the checkpointer."""
        self.checkpointer.wait()
        self.checkpointer.close()
