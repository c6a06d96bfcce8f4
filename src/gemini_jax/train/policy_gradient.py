"""Policy optimisation from a reward, group-relative (GRPO-style), with a KL penalty.

For each prompt the policy samples a group of G replies; each reply's advantage is its reward
minus the group's mean, divided by the group's standard deviation (Shao et al. 2024,
"DeepSeekMath"): no value network, and a reward's scale does not matter. Each row's loss is
the mean over its reply tokens of

    -A * log pi(y_t) + kl_coef * (exp(ref_t - logp_t) - (ref_t - logp_t) - 1)

the second term an unbiased, always non-negative estimate of KL(pi || ref) per token (Schulman's
"k3"), ref_t the frozen starting policy's log-probability. One update follows each batch of
rollouts, so the policy that sampled is the one being updated: the importance ratio of PPO is
1 and its clipping would never act. The loss is the mean over rows that score any token.

A reward that is not finite (NaN, inf) makes the loss non-finite, and the optimizer's guard
skips the update and counts it (`skipped_updates`), as it does any non-finite update.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemini_jax.config import ConfigError
from gemini_jax.model import Gemini
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.preference_loss import token_log_probs
from gemini_jax.train.trainer import Trainer, frozen_model


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyGradientConfig:
    kl_coef: float = 0.05  # the KL penalty's weight; 0 lets the policy drift freely

    def __post_init__(self):
        if not self.kl_coef >= 0:
            raise ConfigError(f"kl_coef must be >= 0, got {self.kl_coef}")


def group_advantages(rewards: np.ndarray, group_size: int, *, eps: float = 1e-6) -> np.ndarray:
    """float32[N * G] rewards, G consecutive per prompt -> (r - group mean) / (group std + eps).
    A group whose replies all earn the same reward teaches nothing: its advantages are 0."""
    groups = np.asarray(rewards, np.float64).reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    return (centred / (groups.std(axis=1, keepdims=True) + eps)).reshape(-1).astype(np.float32)


def best_of_group_advantages(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """float32[N * G] rewards, G consecutive per prompt -> 1 for each group's highest reward (the
    first of equals), 0 for the others: the update is then supervised training on the reply the
    reward prefers (rejection sampling, as in Llama 2's RLHF), and no reply is pushed down. A
    group whose replies all earn the same reward teaches nothing; one with a reward that is not
    finite gets NaN advantages, so that its update is skipped as group_advantages' would be."""
    groups = np.asarray(rewards, np.float64).reshape(-1, group_size)
    best = np.zeros(groups.shape, np.float32)
    finite = np.isfinite(groups).all(axis=1)
    varied = finite & (groups.max(axis=1) > groups.min(axis=1))
    best[np.flatnonzero(varied), groups[varied].argmax(axis=1)] = 1.0
    best[~finite] = np.nan
    return best.reshape(-1)


ADVANTAGES = {"group": group_advantages, "best": best_of_group_advantages}  # the CLI's --advantage


def policy_gradient_loss(log_probs: jax.Array, reference: jax.Array, weights: jax.Array, advantages: jax.Array,
                         *, kl_coef: float | jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """log_probs, reference, weights float32[R, K] (the scored tokens of each row), advantages
    float32[R] -> (the loss, {"kl": mean per-token KL estimate, "pg": the policy-gradient term})."""
    reference = jax.lax.stop_gradient(reference)
    advantages = jax.lax.stop_gradient(advantages)
    diff = reference - log_probs
    kl = jnp.exp(diff) - diff - 1.0  # [R, K]
    pg = -advantages[:, None] * log_probs
    tokens = weights.sum(axis=1)
    rows = (tokens > 0).astype(jnp.float32)

    def mean(per_token):  # over each row's tokens, then over the rows that have any
        per_row = (per_token * weights).sum(axis=1) / jnp.maximum(tokens, 1.0)
        return (per_row * rows).sum() / jnp.maximum(rows.sum(), 1.0)

    pg_term, kl_term = mean(pg), mean(kl)
    return pg_term + kl_coef * kl_term, {"kl": kl_term, "pg": pg_term}


class PolicyGradientTrainer(Trainer):
    """Trains the policy on batches of rollouts: rows of prompt + sampled reply (the reply
    scored), with "advantages" float32[R] and "rewards" float32[R] beside the usual keys.
    The reference (the starting policy) is a frozen input of the step, as DPO's is."""

    logged_metrics = ("reward", "kl", "pg")

    def __init__(self, model: Gemini, optimizer: OptimizerConfig, *, reference: Gemini,
                 policy_gradient: PolicyGradientConfig = PolicyGradientConfig(), mesh: jax.sharding.Mesh | None = None,
                 trainable: nnx.filterlib.Filter = nnx.Param):
        # trainable=nnx.LoRAParam trains a LoRA policy's adapters alone (train/lora.py).
        super().__init__(model, optimizer, mesh=mesh, trainable=trainable)
        self.policy_gradient = policy_gradient
        self.reference_graphdef, self.reference_state = frozen_model(reference, mesh)

    def frozen_inputs(self) -> dict[str, Any]:
        return {"reference": self.reference_state, "kl_coef": jnp.float32(self.policy_gradient.kl_coef),
                "rest": self.rest}

    def _loss(self, frozen, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        # The untrained rest (a LoRA policy's frozen base) is an input, not a constant of the
        # step; copied Variables, as LoraTrainer's, for the rematerialised blocks.
        log_probs, weights = token_log_probs(nnx.merge(self.graphdef, params, frozen["rest"], copy=True), batch)
        reference, _ = token_log_probs(nnx.merge(self.reference_graphdef, frozen["reference"]), batch)
        loss, parts = policy_gradient_loss(log_probs, reference, weights, batch["advantages"],
                                           kl_coef=frozen["kl_coef"])
        real = (weights.sum(axis=1) > 0).astype(jnp.float32)
        reward = (batch["rewards"] * real).sum() / jnp.maximum(real.sum(), 1.0)
        return loss, {"loss_tokens": weights.sum(), "reward": reward, **parts}
