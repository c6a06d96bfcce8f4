"""Batches of random text for training tests: one document per row, every target scored."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np


def random_text_batch(vocab_size: int, seed: int = 0, *, rows: int = 2, length: int = 16) -> dict[str, np.ndarray]:
    """One row of random tokens (ids from 10, clear of the special ones) per batch row."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, vocab_size, (rows, length + 1)).astype(np.int32)
    return {
        "tokens": tokens[:, :-1], "targets": tokens[:, 1:],
        "loss_mask": np.ones((rows, length), np.float32),
        "segment_ids": np.ones((rows, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy(),
        "media_spans": np.zeros((rows, length), np.int32),
    }


def random_text_batches(vocab_size: int, *, rows: int = 2, length: int = 16) -> Iterator[dict[str, np.ndarray]]:
    """An endless stream of them, batch i drawn with seed i."""
    return (random_text_batch(vocab_size, i, rows=rows, length=length) for i in itertools.count())
