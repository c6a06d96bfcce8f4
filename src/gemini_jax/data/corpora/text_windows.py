"""Language-model rows cut from one long token stream: every token scored, one document a row.

    rows = TextWindows(tokenizer.encode(text), seq_len=2048, batch_size=4, bos_id=tokenizer.bos_id)
    batch = next(rows)  # batch.py's keys, [4, 2048] each

A row is `<bos>` followed by seq_len - 1 consecutive tokens from a random offset, the layout
of `evals/nll_position.held_out_documents`, so a model trained on these rows is scored on
held-out rows of the same shape. Step n draws its offsets from the seed and n alone: the
state is one counter and a resumed run sees the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class TextWindows:
    def __init__(self, ids: Sequence[int] | np.ndarray, *, seq_len: int, batch_size: int, bos_id: int,
                 seed: int = 0):
        self.ids = np.asarray(ids, np.int32)
        if seq_len < 2 or batch_size < 1:
            raise ValueError(f"TextWindows needs seq_len >= 2 and batch_size >= 1, got {seq_len} and {batch_size}")
        if self.ids.ndim != 1 or len(self.ids) < seq_len:
            raise ValueError(f"the text holds {self.ids.size} tokens: too few for rows of {seq_len}")
        self.seq_len, self.batch_size, self.bos_id, self.seed = seq_len, batch_size, bos_id, seed
        self.step = 0

    def __iter__(self) -> TextWindows:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([1, self.seed, self.step])
        self.step += 1
        n, length = self.batch_size, self.seq_len
        starts = rng.integers(0, len(self.ids) - length + 1, size=n)
        windows = np.stack([self.ids[s:s + length] for s in starts])  # [n, length]: the targets
        tokens = np.concatenate([np.full((n, 1), self.bos_id, np.int32), windows[:, :-1]], axis=1)
        return {
            "tokens": tokens, "targets": windows, "loss_mask": np.ones((n, length), np.float32),
            "segment_ids": np.ones((n, length), np.int32),
            "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (n, length)).copy(),
            "media_spans": np.zeros((n, length), np.int32),
        }

    def get_state(self) -> dict[str, Any]:
        return {"step": self.step}

    def set_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
