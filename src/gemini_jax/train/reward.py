"""A reward model: a run's decoder with a scalar head, trained on preference pairs.

The score of a reply is a linear head on the final hidden state at the reply's last scored
position (the one that predicts its <end_of_turn>): by then the decoder has read the prompt, its
media and the whole reply. The backbone starts from a trained run (`--init-from`), the head from
zero, so the first scores are all 0 and the first loss log 2. It trains with the pairwise
Bradley-Terry loss (train/preference_loss.py).

A reward run is a run directory like any other (config.json is the backbone's, with its
tokenizer) plus `reward.json`; its checkpoints hold {"backbone": ..., "head": ...}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax import checkpoint
from gemini_jax.config import ModelConfig
from gemini_jax.model import Gemini
from gemini_jax.model.layers import param
from gemini_jax.train.batches import model_inputs
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.preference_loss import bradley_terry_loss, real_pairs
from gemini_jax.train.trainer import Trainer

REWARD_FILE = "reward.json"


class RewardModel(nnx.Module):
    def __init__(self, backbone: Gemini):
        self.backbone = backbone
        self.config: ModelConfig = backbone.config
        self.head = param(jnp.zeros((backbone.config.width,), jnp.float32), "embed")
        self.bias = param(jnp.zeros((), jnp.float32))

    def __call__(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """float32[rows]: each row's score (0 for a row that scores no token)."""
        hidden = self.backbone(model_inputs(batch)).hidden  # [R, T, D]
        mask = batch["loss_mask"] > 0
        last = jnp.max(jnp.where(mask, jnp.arange(mask.shape[1])[None, :], 0), axis=1)  # [R]
        final = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)  # [R, D]
        return jnp.where(mask.any(axis=1), final @ self.head[...] + self.bias[...], 0.0)


class RewardTrainer(Trainer):
    """Trains a RewardModel on batches of pairs (chosen rows, then rejected) with the
    Bradley-Terry loss; logs pairwise accuracy and the mean score margin."""

    logged_metrics = ("accuracy", "margin")

    def __init__(self, model: Gemini | RewardModel, optimizer: OptimizerConfig, *, mesh: jax.sharding.Mesh | None = None):
        super().__init__(model if isinstance(model, RewardModel) else RewardModel(model), optimizer, mesh=mesh)

    def _loss(self, frozen, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        del frozen
        scores = nnx.merge(self.graphdef, params, self.rest)(batch)
        real = real_pairs(batch)
        loss, metrics = bradley_terry_loss(scores, real)
        return loss, {"loss_tokens": real.sum(), **metrics}


def write_reward_record(run_dir: str | os.PathLike, *, init_from: str | os.PathLike, data: str | os.PathLike) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    record = {"init_from": str(Path(init_from).resolve()), "data": str(Path(data).resolve())}
    Path(run_dir, REWARD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def is_reward_run(run_dir: str | os.PathLike) -> bool:
    return Path(run_dir, REWARD_FILE).is_file()


def load_reward_model(run_dir: str | os.PathLike) -> RewardModel:
    """The reward model of a `gemini-jax reward` run, from its latest checkpoint."""
    if not is_reward_run(run_dir):
        raise checkpoint.CheckpointError(f"{str(run_dir)!r} is not a reward model run (no {REWARD_FILE}); "
                                         "train one with `gemini-jax reward`")
    config = checkpoint.read_config(run_dir)
    model = nnx.eval_shape(lambda: RewardModel(Gemini(config, rngs=nnx.Rngs(0))))
    checkpoint.load_params(run_dir, model)
    return model

