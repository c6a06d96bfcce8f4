"""Packing changes nothing a document sees: each document's loss in a packed row equals
its loss when it has a row to itself (segment ids keep attention apart, positions
restart at 0 in every segment so RoPE sees the same positions)."""

import dataclasses
import inspect
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from gemini_jax.config import PRESETS
from gemini_jax.data import pipeline as P
from gemini_jax.data.tokenizer import train_tokenizer

CONFIG = dataclasses.replace(PRESETS["test"].text_only, vocab_size=500)
DOCS = ["a red circle. " * 5, "a blue square", "What colour is the shape? " * 2, "short", "x = 1\n" * 6]


@pytest.fixture(scope="module")
def packed_batch(tmp_path_factory):
    corpus = [inspect.getsource(textwrap), "What colour is the shape? A red circle. A blue square.\n" * 30]
    tok = train_tokenizer(corpus, vocab_size=500, path=tmp_path_factory.mktemp("tok") / "t.model")
    batches = P.packed_text(DOCS, tokenizer=tok, seq_len=40, batch_size=2, seed=0, shuffle=False, num_epochs=1)
    return next(iter(batches))


def _token_losses(model, batch) -> np.ndarray:
    """float32[B, T] cross-entropy of every position (the loss mask is applied by the caller)."""
    inputs = {k: jnp.asarray(batch[k]) for k in ("tokens", "segment_ids", "positions", "media_spans")}
    logits = nnx.jit(lambda m, b: m(b).logits)(model, inputs)
    return np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(batch["targets"])))


def _alone(batch) -> tuple[dict[str, np.ndarray], list[tuple[int, np.ndarray]]]:
    """Each segment of the packed batch in a row of its own (right-padded with segment 0),
    and where each came from: (packed row, its positions in that row)."""
    seq_len = batch["tokens"].shape[1]
    rows, origin = {k: [] for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions", "media_spans")}, []
    for b, segments in enumerate(batch["segment_ids"]):
        for s in np.unique(segments[segments > 0]):
            where = np.flatnonzero(segments == s)
            n = where.size
            for key in ("tokens", "targets", "loss_mask"):
                rows[key].append(np.pad(batch[key][b, where], (0, seq_len - n)))
            rows["segment_ids"].append(np.pad(np.ones(n, np.int32), (0, seq_len - n)))
            rows["positions"].append(np.pad(np.arange(n, dtype=np.int32), (0, seq_len - n)))
            rows["media_spans"].append(np.zeros(seq_len, np.int32))
            origin.append((b, where))
    return {k: np.stack(v) for k, v in rows.items()}, origin


@pytest.mark.parametrize("attention_impl", ["auto", "blockwise"])
def test_packed_documents_lose_what_they_lose_alone(build_model, packed_batch, attention_impl):
    batch = packed_batch
    segments, positions = batch["segment_ids"], batch["positions"]
    assert (segments.max(axis=1) >= 2).all()  # several documents share each row
    for b in range(segments.shape[0]):  # positions restart at 0 in every segment
        for s in np.unique(segments[b][segments[b] > 0]):
            np.testing.assert_array_equal(positions[b, segments[b] == s], np.arange((segments[b] == s).sum()))

    model = build_model(CONFIG)
    if attention_impl != "auto":
        config = dataclasses.replace(CONFIG, attention_impl=attention_impl, attention_block=16)
        model = nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0)))),
                          nnx.state(model))
    alone, origin = _alone(batch)
    packed_losses, alone_losses = _token_losses(model, batch), _token_losses(model, alone)
    for i, (b, where) in enumerate(origin):
        mask = batch["loss_mask"][b, where]
        packed = np.sum(packed_losses[b, where] * mask) / mask.sum()
        single = np.sum(alone_losses[i, : where.size] * alone["loss_mask"][i, : where.size]) / mask.sum()
        np.testing.assert_allclose(packed, single, rtol=1e-5)
        np.testing.assert_allclose(packed_losses[b, where], alone_losses[i, : where.size], atol=1e-5, rtol=1e-5)
    assert jax.tree.leaves(alone)  # the comparison covered every segment of the batch
    assert len(origin) >= 4
