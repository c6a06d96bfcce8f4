"""Log-likelihood of text under a model: the loss summed over scored tokens, in float32."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gemini_jax.model import Gemini

_TARGET_KEYS = ("targets", "loss_mask")


class LossScorer:
    """Sums cross-entropy over the `loss_mask` positions of batches (one compiled shape each)."""

    def __init__(self, model: Gemini):
        self.graphdef, self.state = nnx.split(model)
        self._score = jax.jit(self._score_fn)

    def _score_fn(self, state, batch):
        model = nnx.merge(self.graphdef, state)
        out = model({k: v for k, v in batch.items() if k not in _TARGET_KEYS})
        losses = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["targets"])  # [B, T]
        weight = batch["loss_mask"].astype(jnp.float32)
        return (losses * weight).sum(), weight.sum()

    def total(self, batches: Iterable[Mapping[str, np.ndarray]]) -> tuple[float, float]:
        """(summed loss in nats, number of scored tokens) over all batches."""
        loss_sum, count = 0.0, 0.0
        for batch in batches:
            s, c = self._score(self.state, batch)
            loss_sum, count = loss_sum + float(s), count + float(c)
        return loss_sum, count
