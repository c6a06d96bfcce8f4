"""Finite scalar quantization: every code is reachable and decodes to what quantizing gives, values
stay on the grid, and gradients pass the rounding straight through."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini_jax.model.fsq import FSQ


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (4, 3), (7,)])
def test_codes_decode_to_the_quantized_latents_on_the_grid(levels):
    fsq = FSQ(levels)
    latents = jax.random.uniform(jax.random.key(0), (100_000, len(levels)), minval=-4, maxval=4)
    quantized, codes = fsq(latents)
    assert codes.dtype == jnp.int32 and codes.shape == (100_000,)
    assert 0 <= codes.min() and codes.max() < fsq.codebook_size
    np.testing.assert_allclose(fsq.decode(codes), quantized, atol=1e-6)
    for channel, n in enumerate(levels):  # n values per channel, within [-1, 1]
        values = np.unique(np.round(np.asarray(quantized[:, channel]) * (n // 2)))
        assert len(values) == n and np.abs(quantized[:, channel]).max() <= 1


def test_each_codes_grid_point_quantizes_back_to_that_code():
    fsq = FSQ((4, 3, 5))
    codes = jnp.arange(fsq.codebook_size, dtype=jnp.int32)
    levels = np.asarray(fsq.levels, np.float64)
    half = (levels - 1) * (1 - fsq.eps) / 2
    offset = np.where(levels % 2 == 0, 0.5, 0.0)
    grid = np.asarray(fsq.decode(codes)) * (levels // 2)  # integers, per channel
    latents = np.arctanh((grid + offset) / half * 0.99) - np.arctanh(offset / half)  # through the bounding tanh
    np.testing.assert_array_equal(fsq(jnp.asarray(latents, jnp.float32))[1], codes)


def test_gradients_pass_straight_through_the_rounding():
    fsq = FSQ((8, 5))
    latents = jnp.asarray([[0.3, -0.7], [1.2, 0.05]])
    grad = jax.grad(lambda z: fsq(z)[0].sum())(latents)
    bound = jax.grad(lambda z: (fsq._bound(z) / jnp.asarray([[4.0, 2.0]])).sum())(latents)
    np.testing.assert_allclose(grad, bound, rtol=1e-6)
    assert np.all(np.asarray(grad) > 0)


def test_bad_levels_and_shapes_are_refused():
    with pytest.raises(ValueError, match="integers >= 3"):
        FSQ((8, 2))
    with pytest.raises(ValueError, match="latents have 3 channels"):
        FSQ((8, 5))(jnp.zeros((2, 3)))
