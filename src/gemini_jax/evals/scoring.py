"""Log-likelihood of text under a model: the loss summed over scored tokens, in float32.

The loss is training's own (`train/loss.py`'s `cross_entropy`, with the projection training
uses), so a model is scored by the very computation it was trained to lower.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemini_jax.model import Gemini
from gemini_jax.model.layers import tied_logits
from gemini_jax.train.loss import Project, cross_entropy

_TARGET_KEYS = ("targets", "loss_mask")


@dataclasses.dataclass(frozen=True)
class RowScores:
    """Per batch row: summed loss (nats) over its `loss_mask`, the number of scored tokens, and
    whether every scored target is the argmax of its logits (lm-eval's `is_greedy`)."""

    loss: np.ndarray  # float32[B]
    count: np.ndarray  # float32[B]
    greedy: np.ndarray  # bool[B]


def position_losses(hidden: jax.Array, targets: jax.Array, weight: jax.Array, *, table: jax.Array,
                    project: Project) -> jax.Array:
    """weight x cross-entropy at every position [B, T], by `cross_entropy` called on each position
    alone (its mean over one position of weight 1 is that position's loss, exactly).

    hidden [B, T, D]; targets int32[B, T]; weight float32[B, T]; table and project as
    `cross_entropy` takes them. The weight multiplies last, as a full-logits loss would: the
    compiled row sums then come out bit for bit as before (docs/scoring.md)."""

    def one(h, t):
        return cross_entropy(h[None, None], t[None, None], jnp.ones((1, 1), jnp.float32), table=table,
                             project=project)[0]

    return jax.vmap(jax.vmap(one))(hidden, targets) * weight


class LossScorer:
    """Sums cross-entropy over the `loss_mask` positions of batches (one compiled shape each)."""

    def __init__(self, model: Gemini):
        self.graphdef, self.state = nnx.split(model)
        self._score = jax.jit(self._score_fn)

    def _score_fn(self, state, batch):
        model = nnx.merge(self.graphdef, state)
        out = model({k: v for k, v in batch.items() if k not in _TARGET_KEYS})
        weight = batch["loss_mask"].astype(jnp.float32)  # [B, T]
        project = functools.partial(tied_logits, dtype=model.embedder.dtype)
        losses = position_losses(out.hidden, batch["targets"], weight, table=model.embedder.table.get_value(),
                                 project=project)  # [B, T]
        hits = (jnp.argmax(out.logits.astype(jnp.float32), axis=-1) == batch["targets"]) | (weight == 0)  # [B, T]
        return losses.sum(-1), weight.sum(-1), hits.all(-1)

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
