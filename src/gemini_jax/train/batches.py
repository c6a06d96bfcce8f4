"""What a training step reads from a batch: the model's inputs, and the positions the loss scores."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from gemini_jax import batch as batch_keys

MODEL_INPUT_KEYS = tuple(k for k in batch_keys.ALL_KEYS if k not in ("targets", "loss_mask"))


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """The batch without what only the loss reads (targets, loss_mask, loss_positions)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}


def loss_positions_width(loss_mask: np.ndarray) -> int:
    """K of `with_loss_positions`: the most scored tokens of any row, rounded up to a power of
    two (at least 4) so that a task compiles a few shapes, not one per batch."""
    loss_mask = np.asarray(loss_mask)
    most = int((loss_mask > 0).sum(axis=1).max(initial=1))
    return min(loss_mask.shape[1], max(4, 1 << math.ceil(math.log2(max(most, 1)))))


def with_loss_positions(batch: Mapping[str, np.ndarray], *, width: int | None = None) -> dict[str, np.ndarray]:
    """Adds `loss_positions` int32[B, K]: each row's scored positions first, in order.

    K is `width`, by default `loss_positions_width` of this batch (processes that each hold
    part of a global batch must agree on one K: see `trainer.device_batch`).
    """
    loss_mask = np.asarray(batch["loss_mask"])
    k = loss_positions_width(loss_mask) if width is None else width
    order = np.argsort(-(loss_mask > 0).astype(np.int8), axis=1, kind="stable")[:, :k]
    return {**batch, "loss_positions": order.astype(np.int32)}


def non_padding_tokens(batch: Mapping[str, np.ndarray]) -> int:
    """The batch's real tokens (not padding): what tokens/s counts."""
    return int(np.count_nonzero(batch["segment_ids"]))
