"""Log-likelihood of text under a model: the loss summed over scored tokens, in float32."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gemini_jax.model import Gemini

_TARGET_KEYS = ("targets", "loss_mask")


@dataclasses.dataclass(frozen=True)
class RowScores:
    """Per batch row: summed loss (nats) over its `loss_mask`, the number of scored tokens, and
    whether every scored target is the argmax of its logits (lm-eval's `is_greedy`)."""

    loss: np.ndarray  # float32[B]
    count: np.ndarray  # float32[B]
    greedy: np.ndarray  # bool[B]


class LossScorer:
    """Sums cross-entropy over the `loss_mask` positions of batches (one compiled shape each)."""

    def __init__(self, model: Gemini):
        self.graphdef, self.state = nnx.split(model)
        self._score = jax.jit(self._score_fn)

    def _score_fn(self, state, batch):
        model = nnx.merge(self.graphdef, state)
        out = model({k: v for k, v in batch.items() if k not in _TARGET_KEYS})
        logits = out.logits.astype(jnp.float32)  # [B, T, V]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])  # [B, T]
        weight = batch["loss_mask"].astype(jnp.float32)
        hits = (jnp.argmax(logits, axis=-1) == batch["targets"]) | (weight == 0)  # [B, T]
        return (losses * weight).sum(-1), weight.sum(-1), hits.all(-1)

    def rows(self, batch: Mapping[str, np.ndarray]) -> RowScores:
        loss, count, greedy = self._score(self.state, batch)
        return RowScores(np.asarray(loss), np.asarray(count), np.asarray(greedy))

    def total(self, batches: Iterable[Mapping[str, np.ndarray]]) -> tuple[float, float]:
        """(summed loss in nats, number of scored tokens) over all batches."""
        loss_sum, count = 0.0, 0.0
        for batch in batches:
            s = self.rows(batch)
            loss_sum, count = loss_sum + float(s.loss.sum()), count + float(s.count.sum())
        return loss_sum, count
