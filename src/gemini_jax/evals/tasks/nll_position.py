"""Negative log-likelihood by token position on long held-out documents, as in the Gemini
report's long-context figure: does a token cost less when more of the document precedes it?

    documents = held_out_documents(tokenizer, length=1024, count=32)   # int32[32, 1024]
    nll = nll_by_position(model, documents)     # float64[1023]: nll[t] is the cost of token t + 1
    summary = position_buckets(nll)             # {"nll@ctx=1": ..., "nll@ctx=2-3": ..., "nll@ctx=512-1023": ...}
    plot_nll_by_position(nll, "nll_by_position.png")

The documents are the standard-library files the demo holds out (data/demo.py's split),
concatenated in a fixed order and cut into consecutive windows, each `<bos>` and `length - 1`
tokens: long documents the model never trained on, of exactly the length asked for. Position t
is scored with t + 1 tokens of context (<bos> included); the mean over documents at each
position is what is plotted (log-scaled positions, where the change happens), with the mean
over power-of-two buckets of positions beside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gemini_jax.data.corpora.kv_retrieval import standard_library_files
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.model import Gemini


def held_out_documents(tokenizer: Tokenizer, *, length: int, count: int, split: str = "test") -> np.ndarray:
    """int32[count, length]: `<bos>` then consecutive tokens of the held-out files of `split`
    (test, or validation while a recipe trains), concatenated."""
    text = "".join(standard_library_files(split))
    ids = np.asarray(tokenizer.encode(text), np.int32)
    available = len(ids) // (length - 1)
    if available < count:
        raise ValueError(f"the held-out text holds {len(ids)} tokens: {available} documents of {length}, "
                         f"not {count}; ask for fewer or shorter ones")
    windows = ids[: count * (length - 1)].reshape(count, length - 1)
    return np.concatenate([np.full((count, 1), tokenizer.bos_id, np.int32), windows], axis=1)


def nll_by_position(model: Gemini, documents: np.ndarray, *, batch_size: int = 8) -> np.ndarray:
    """float64[T - 1]: the mean over documents (rows of int32[N, T]) of each position's next-token
    cross-entropy in nats, every token of a row in one segment."""
    documents = np.asarray(documents, np.int32)
    count, length = documents.shape
    if length - 1 > model.config.max_seq_len:
        raise ValueError(f"documents of {length} tokens need {length - 1} positions; the model's context is "
                         f"{model.config.max_seq_len}")
    graphdef, state = nnx.split(model)

    @jax.jit
    def losses(state, tokens, targets):
        inputs = {"tokens": tokens, "segment_ids": jnp.ones_like(tokens),
                  "positions": jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape),
                  "media_spans": jnp.zeros_like(tokens)}
        logits = nnx.merge(graphdef, state)(inputs).logits.astype(jnp.float32)  # [B, T, V]
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, T]

    total = np.zeros(length - 1, np.float64)
    for start in range(0, count, batch_size):
        rows = documents[start : start + batch_size]
        padded = np.zeros((batch_size, length), np.int32)  # one batch shape: one compilation
        padded[: len(rows)] = rows
        total += np.asarray(losses(state, padded[:, :-1], padded[:, 1:]))[: len(rows)].sum(axis=0)
    return total / count


def position_buckets(nll: np.ndarray) -> dict[str, float]:
    """Mean NLL over positions whose context holds 1, 2-3, 4-7, ... tokens (the last bucket cut
    at the documents' end)."""
    out, low = {}, 1
    while low <= len(nll):
        high = min(2 * low - 1, len(nll))
        name = f"nll@ctx={low}" if low == high else f"nll@ctx={low}-{high}"
        out[name] = float(np.mean(nll[low - 1 : high]))
        low *= 2
    return out


def plot_nll_by_position(nll: np.ndarray, path: str | os.PathLike, *, title: str = "") -> None:
    """The per-position curve (log-scaled positions) and its power-of-two bucket means, as a PNG;
    the curve itself also goes to a JSON file beside it (same name, .json)."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    context = np.arange(1, len(nll) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(context, nll, linewidth=0.6, alpha=0.5, label="per position")
    buckets = position_buckets(nll)
    centres, means, low = [], [], 1
    for value in buckets.values():
        high = min(2 * low - 1, len(nll))
        centres.append(np.sqrt(low * high))
        means.append(value)
        low *= 2
    ax.plot(centres, means, "o-", label="mean over 1, 2-3, 4-7, ... tokens")
    ax.set_xscale("log")
    ax.set_xlabel("tokens of context (position in the document)")
    ax.set_ylabel("negative log-likelihood (nats/token)")
    ax.set_title(title or f"NLL by position, held-out documents of {len(nll) + 1} tokens")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    path.with_suffix(".json").write_text(json.dumps({"context_tokens": context.tolist(), "nll": nll.tolist(),
                                                     "buckets": buckets}) + "\n")
