"""A reward model: a run's decoder with a scalar head, trained on preference pairs.

The score of a reply is a linear head on the final hidden state at the reply's last scored
position (the one that predicts its <end_of_turn>): by then the decoder has read the prompt, its
media and the whole reply. The backbone starts from a trained run (`--init-from`), the head from
zero, so the first scores are all 0 and the first loss log 2. It trains with the pairwise
Bradley-Terry loss (train/preference_loss.py).

With `likelihood=True` the score also weighs the reply's log-probability under the backbone's
own language model head (its mean and its sum over the reply's tokens; the two weights start at
zero): a backbone that answers the prompt right puts its probability on the right answer, which
a head on one hidden state reads only in part (docs/post-training.md).

A reward run is a run directory like any other (config.json is the backbone's, with its
tokenizer) plus `reward.json` (where it came from, and `likelihood`); its checkpoints hold
{"backbone": ..., "head": ..., "bias": ...} and, with the likelihood, its two weights.
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
from gemini_jax.train.preference_loss import bradley_terry_loss, real_pairs, scored_log_probs
from gemini_jax.train.trainer import Trainer

REWARD_FILE = "reward.json"


class RewardModel(nnx.Module):
    def __init__(self, backbone: Gemini, *, likelihood: bool = False):
        self.backbone = backbone
        self.config: ModelConfig = backbone.config
        self.likelihood = likelihood
        self.head = param(jnp.zeros((backbone.config.width,), jnp.float32), "embed")
        self.bias = param(jnp.zeros((), jnp.float32))
        if likelihood:
            self.mean_log_prob_weight = param(jnp.zeros((), jnp.float32))
            self.log_prob_weight = param(jnp.zeros((), jnp.float32))

    def __call__(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        """float32[rows]: each row's score (0 for a row that scores no token)."""
        hidden = self.backbone(model_inputs(batch)).hidden  # [R, T, D]
        mask = batch["loss_mask"] > 0
        last = jnp.max(jnp.where(mask, jnp.arange(mask.shape[1])[None, :], 0), axis=1)  # [R]
        final = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0].astype(jnp.float32)  # [R, D]
        score = final @ self.head[...] + self.bias[...]
        if self.likelihood:
            total, count = self._reply_log_prob(hidden, batch)
            score += self.mean_log_prob_weight[...] * total / jnp.maximum(count, 1.0) + self.log_prob_weight[...] * total
        return jnp.where(mask.any(axis=1), score, 0.0)

    def _reply_log_prob(self, hidden: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """(float32[R] the summed log-probability of each row's scored tokens under the backbone's
        language model head, float32[R] how many there are), projected at the batch's
        `loss_positions` only (train/batches.py): a reply is a few tokens of its row."""
        if "loss_positions" not in batch:
            raise ValueError("a reward model with the likelihood scores batches with loss_positions "
                             "(train.batches.with_loss_positions)")
        log_probs, weights = scored_log_probs(self.backbone, hidden, batch)
        return (log_probs * weights).sum(axis=1), weights.sum(axis=1)


class RewardTrainer(Trainer):
    """Trains a RewardModel on batches of pairs (chosen rows, then rejected) with the
    Bradley-Terry loss; logs pairwise accuracy and the mean score margin."""

    logged_metrics = ("accuracy", "margin")

    def __init__(self, model: Gemini | RewardModel, optimizer: OptimizerConfig, *, mesh: jax.sharding.Mesh | None = None):
        # A bare backbone gets the plain head; pass a RewardModel for the likelihood's.
        super().__init__(model if isinstance(model, RewardModel) else RewardModel(model), optimizer, mesh=mesh)

    def _loss(self, frozen, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        del frozen
        scores = nnx.merge(self.graphdef, params, self.rest)(batch)
        real = real_pairs(batch)
        loss, metrics = bradley_terry_loss(scores, real)
        return loss, {"loss_tokens": real.sum(), **metrics}


def write_reward_record(run_dir: str | os.PathLike, *, init_from: str | os.PathLike, data: str | os.PathLike,
                        likelihood: bool = False) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    record = {"init_from": str(Path(init_from).resolve()), "data": str(Path(data).resolve()), "likelihood": likelihood}
    Path(run_dir, REWARD_FILE).write_text(json.dumps(record, indent=2) + "\n")


def is_reward_run(run_dir: str | os.PathLike) -> bool:
    return Path(run_dir, REWARD_FILE).is_file()


def load_reward_model(run_dir: str | os.PathLike) -> RewardModel:
    """The reward model of a `gemini-jax reward` run, from its latest checkpoint."""
    if not is_reward_run(run_dir):
        raise checkpoint.CheckpointError(f"{str(run_dir)!r} is not a reward model run (no {REWARD_FILE}); "
                                         "train one with `gemini-jax reward`")
    config = checkpoint.read_config(run_dir)
    # Runs written before the likelihood option record none: the plain head.
    likelihood = bool(json.loads(Path(run_dir, REWARD_FILE).read_text()).get("likelihood", False))
    model = nnx.eval_shape(lambda: RewardModel(Gemini(config, rngs=nnx.Rngs(0)), likelihood=likelihood))
    checkpoint.load_params(run_dir, model)
    return model

