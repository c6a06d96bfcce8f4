"""Vocabulary-chunked cross-entropy: the same values and gradients as the plain one, with a
fraction of its memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini_jax.train.loss import (
    cross_entropy,
    logits_chunk_tokens,
    masked_cross_entropy,
)


def _problem(batch=3, length=7, width=8, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    hidden = jnp.asarray(rng.normal(size=(batch, length, width)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(vocab, width)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, (batch, length)), jnp.int32)
    mask = jnp.asarray(rng.random((batch, length)) < 0.7, jnp.float32)
    return hidden, table, targets, mask


def _project(table, h):
    return jnp.einsum("BTD,VD->BTV", h, table)


def _loss(hidden, table, targets, mask, chunk):
    return cross_entropy(hidden, targets, mask, table=table, project=_project, chunk_tokens=chunk)[0]


@pytest.mark.parametrize("chunk", [1, 4, 5, 21, 1000])  # 21 tokens: chunks that divide, don't, and one
def test_chunked_equals_plain_values_and_gradients(chunk):
    hidden, table, targets, mask = _problem()
    plain = masked_cross_entropy(jnp.einsum("BTD,VD->BTV", hidden, table), targets, mask)[0]
    value, (d_hidden, d_table) = jax.value_and_grad(_loss, argnums=(0, 1))(hidden, table, targets, mask, chunk)
    ref_hidden, ref_table = jax.grad(_loss, argnums=(0, 1))(hidden, table, targets, mask, 10**6)
    np.testing.assert_allclose(value, plain, rtol=1e-6)
    np.testing.assert_allclose(d_hidden, ref_hidden, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d_table, ref_table, rtol=1e-5, atol=1e-7)


def test_chunked_counts_scored_positions():
    hidden, table, targets, mask = _problem()
    _, count = cross_entropy(hidden, targets, mask, table=table, project=_project, chunk_tokens=4)
    assert float(count) == float(mask.sum())


def test_chunking_bounds_the_backward_pass_memory():
    """Compiled (not run): the gradient of the chunked loss needs a small fraction of the
    temporaries of the plain one, whose [tokens, V] logits dominate."""
    batch, length, width, vocab = 4, 512, 16, 4096  # 2,048 tokens: 32 MiB of float32 logits
    hidden, table, targets, mask = _problem(batch, length, width, vocab)
    logits_bytes = batch * length * vocab * 4

    def temp_bytes(chunk):
        grad = jax.jit(jax.grad(_loss, argnums=(0, 1)), static_argnums=4)
        return grad.lower(hidden, table, targets, mask, chunk).compile().memory_analysis().temp_size_in_bytes

    assert temp_bytes(10**6) >= logits_bytes
    # Chunks of 128 tokens, 1/16 of the logits each: a chunk's logits, log-softmax and
    # logits gradient live at once.
    assert temp_bytes(128) < logits_bytes / 3


def test_default_chunk_is_a_bounded_logits_block():
    assert logits_chunk_tokens(256_000) == 1048
    assert logits_chunk_tokens(1024) == 262_144  # the demo's vocabulary is never chunked in practice
