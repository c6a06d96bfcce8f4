"""Vocabulary-chunked cross-entropy: the same values and gradients as the plain one, with a
fraction of its memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini_jax.model.layers import tied_logits
from gemini_jax.model.quant import quantize_array
from gemini_jax.train.loss import (
    TiedProjection,
    cross_entropy,
    even_chunks,
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


def _tied_loss(hidden, table, targets, mask, chunk, projection):
    return cross_entropy(hidden, targets, mask, table=table, project=projection, chunk_tokens=chunk)[0]


@pytest.mark.parametrize("chunk", [1, 4, 5, 21])
def test_the_tied_projections_chunked_gradients_are_autodiffs_of_the_plain_loss(chunk):
    hidden, table, targets, mask = _problem()
    projection = TiedProjection(jnp.float32)
    grad = jax.value_and_grad(_tied_loss, argnums=(0, 1))
    value, (d_hidden, d_table) = grad(hidden, table, targets, mask, chunk, projection)
    plain = lambda h, t: masked_cross_entropy(tied_logits(t, h, dtype=jnp.float32), targets, mask)[0]  # noqa: E731
    ref_value, (ref_hidden, ref_table) = jax.value_and_grad(plain, argnums=(0, 1))(hidden, table)
    np.testing.assert_allclose(value, ref_value, rtol=1e-6)
    np.testing.assert_allclose(d_hidden, ref_hidden, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d_table, ref_table, rtol=1e-5, atol=1e-7)


def test_the_tied_projection_in_bfloat16_matches_float32_within_its_rounding():
    hidden, table, targets, mask = _problem(batch=4, length=16, width=32, vocab=300)
    grad = jax.value_and_grad(_tied_loss, argnums=(0, 1))
    value, (d_hidden, d_table) = grad(hidden.astype(jnp.bfloat16), table, targets, mask, 8,
                                      TiedProjection(jnp.bfloat16))
    ref_value, (ref_hidden, ref_table) = grad(hidden, table, targets, mask, 8, TiedProjection(jnp.float32))
    assert d_hidden.dtype == jnp.bfloat16 and d_table.dtype == jnp.float32  # as the master weights
    np.testing.assert_allclose(value, ref_value, rtol=2e-2)
    for got, want in ((d_hidden, ref_hidden), (d_table, ref_table)):
        got, want = np.asarray(got, np.float32), np.asarray(want)
        assert np.abs(got - want).max() < 0.03 * np.abs(want).max()


def test_the_tied_projections_gradient_matmuls_are_16_bit():
    """A float32 master table in a bfloat16 model: no matmul of the chunked loss's gradient reads
    a float32 table (autodiff of the float32 logits would: two float32 matmuls and two
    conversions of the whole table per chunk)."""
    hidden, table, targets, mask = _problem(batch=2, length=16, width=32, vocab=300)
    grad = jax.grad(_tied_loss, argnums=(0, 1))
    jaxpr = jax.make_jaxpr(grad, static_argnums=(4, 5))(hidden.astype(jnp.bfloat16), table, targets, mask, 8,
                                                       TiedProjection(jnp.bfloat16))

    def dots(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                yield eqn
            for param in eqn.params.values():
                if hasattr(param, "jaxpr"):  # a scan's or custom_vjp's body
                    yield from dots(param.jaxpr)

    found = list(dots(jaxpr.jaxpr))
    assert len(found) == 3  # logits, the hidden states' gradient and the table's, in the scan
    for eqn in found:
        assert all(v.aval.dtype == jnp.bfloat16 for v in eqn.invars), eqn


def test_a_frozen_tied_projection_gives_the_table_no_gradient():
    hidden, table, targets, mask = _problem()
    for chunk in (4, 10**6):
        d_hidden, d_table = jax.grad(_tied_loss, argnums=(0, 1))(hidden, table, targets, mask, chunk,
                                                                  TiedProjection(jnp.float32, train_table=False))
        ref_hidden = jax.grad(_tied_loss)(hidden, table, targets, mask, chunk, TiedProjection(jnp.float32))
        assert not np.any(d_table)
        np.testing.assert_allclose(d_hidden, ref_hidden, rtol=1e-6, atol=1e-7)


def test_a_quantized_table_is_projected_dequantized_and_never_trained():
    hidden, table, targets, mask = _problem(width=32)
    quantized = quantize_array(table, axis=1, group_size=32)
    projection = TiedProjection(jnp.float32, train_table=False)
    loss = _tied_loss(hidden, quantized, targets, mask, 4, projection)
    want = _tied_loss(hidden, quantized.dequantize(jnp.float32), targets, mask, 4, projection)
    np.testing.assert_allclose(loss, want, rtol=1e-6)


@pytest.mark.parametrize("tokens, most, expected", [(16_384, 1048, 1024), (21, 4, 4), (21, 5, 5), (7, 7, 7), (8, 3, 3)])
def test_even_chunks_pad_less_than_one_token_per_chunk(tokens, most, expected):
    chunk = even_chunks(tokens, most)
    chunks = -(-tokens // chunk)
    assert chunk == expected and chunk <= most and chunks * chunk - tokens < chunks


def test_unchunked_the_tied_projection_is_the_models_tied_logits_bit_for_bit():
    """The demo's vocabulary is never chunked: its loss and gradients are those of `tied_logits`."""
    hidden, table, targets, mask = _problem()
    for dtype in (jnp.float32, jnp.bfloat16):
        ours = jax.jit(jax.value_and_grad(_tied_loss, argnums=(0, 1)), static_argnums=(4, 5))(
            hidden, table, targets, mask, 10**6, TiedProjection(dtype))
        plain = jax.jit(jax.value_and_grad(
            lambda h, t: masked_cross_entropy(tied_logits(t, h, dtype=dtype), targets, mask)[0], argnums=(0, 1)))(
            hidden, table)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
