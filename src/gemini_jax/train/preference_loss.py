"""The losses that learn from preference pairs, as pure functions of per-row numbers.

A batch of B pairs is 2B rows, the B chosen replies first (data/preferences.py). A pair whose
chosen row scores no token is padding: it counts in no loss, accuracy or mean.

- `bradley_terry_loss`: a reward model's, -log sigmoid(r_chosen - r_rejected) (Bradley and
  Terry 1952; the pairwise loss of Ouyang et al. 2022).
- `dpo_loss`: Direct Preference Optimization (Rafailov et al. 2023),
  -log sigmoid(beta * ((log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r)))), where
  log pi(y) sums the policy's log-probabilities over the reply's tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from gemini_jax.model import Gemini
from gemini_jax.model.layers import tied_logits
from gemini_jax.train.batches import model_inputs


def split_pairs(values: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[2B, ...] -> ([B, ...] chosen, [B, ...] rejected)."""
    half = values.shape[0] // 2
    return values[:half], values[half:]


def real_pairs(batch: Mapping[str, jax.Array]) -> jax.Array:
    """float32[B]: 1 for a pair whose chosen reply has scored tokens, 0 for a padding pair."""
    chosen, _ = split_pairs(batch["loss_mask"])
    return (chosen.sum(axis=1) > 0).astype(jnp.float32)


def _mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    return (values * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def token_log_probs(model: Gemini, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(float32[R, K] log-probability of each scored target, float32[R, K] its weight) at the
    batch's `loss_positions` (weight 0 where a row has fewer than K scored tokens).

    Logits are projected at those positions only (a reply is a few tokens of its row), whole:
    fine for replies of a few hundred tokens over a vocabulary of 256K."""
    return scored_log_probs(model, model(model_inputs(batch)).hidden, batch)


def scored_log_probs(model: Gemini, hidden: jax.Array, batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """`token_log_probs` from the decoder's final hidden states [R, T, D], already computed."""
    positions = batch["loss_positions"]  # [R, K]
    hidden = jnp.take_along_axis(hidden, positions[:, :, None], axis=1)  # [R, K, D]
    targets = jnp.take_along_axis(batch["targets"], positions, axis=1)
    weights = jnp.take_along_axis(batch["loss_mask"], positions, axis=1).astype(jnp.float32)
    project = functools.partial(tied_logits, dtype=model.embedder.dtype)
    log_probs = jax.nn.log_softmax(project(model.embedder.table.get_value(), hidden).astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0], weights


def reply_log_probs(model: Gemini, batch: Mapping[str, jax.Array]) -> jax.Array:
    """float32[R]: each row's summed log-probability of its scored tokens (its reply)."""
    log_probs, weights = token_log_probs(model, batch)
    return (log_probs * weights).sum(axis=1)


def bradley_terry_loss(scores: jax.Array, real: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """scores float32[2B] (chosen rows, then rejected), real float32[B] -> (mean loss over real
    pairs, {"accuracy": share with chosen > rejected, "margin": mean r_c - r_r})."""
    chosen, rejected = split_pairs(scores.astype(jnp.float32))
    margin = chosen - rejected
    loss = _mean(-jax.nn.log_sigmoid(margin), real)
    return loss, {"accuracy": _mean((margin > 0).astype(jnp.float32), real), "margin": _mean(margin, real)}


def dpo_loss(policy: jax.Array, reference: jax.Array, real: jax.Array, *, beta: float | jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """policy, reference float32[2B]: each row's reply log-probability under the policy and the
    frozen reference -> (mean loss over real pairs, {"accuracy": share whose implicit reward
    beta * (log pi - log ref) is higher for the chosen reply, "margin": its mean difference}).
    """
    ratios = policy.astype(jnp.float32) - jax.lax.stop_gradient(reference.astype(jnp.float32))
    chosen, rejected = split_pairs(beta * ratios)
    margin = chosen - rejected
    loss = _mean(-jax.nn.log_sigmoid(margin), real)
    return loss, {"accuracy": _mean((margin > 0).astype(jnp.float32), real), "margin": _mean(margin, real)}
