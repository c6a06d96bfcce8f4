"""Finite scalar quantization (Mentzer et al. 2023): the discrete bottleneck of an image tokenizer.

Each of a latent's channels is squashed into a bounded range and rounded to one of `levels[i]`
values; a latent vector's code is its rounded channels read as digits of a mixed-radix number, so
the codebook is every combination (prod(levels) codes) and has nothing to learn or collapse. The
rounding passes gradients straight through.

    fsq = FSQ(levels=(8, 5, 5, 5))             # 1,000 codes
    quantized, codes = fsq(latents)              # latents [..., 4] -> values in [-1, 1], int32 [...]
    fsq.decode(codes)                            # == quantized
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class FSQ:
    """Quantizes the last axis of latents, one channel per entry of `levels` (each >= 3: two levels
    leave the half-step shift of even levels outside tanh's range)."""

    levels: tuple[int, ...]
    eps: float = 1e-3  # keeps tanh's range strictly inside the outermost levels

    def __post_init__(self):
        if not self.levels or any(not isinstance(n, int) or n < 3 for n in self.levels):
            raise ValueError(f"FSQ levels must be integers >= 3, one per channel; got {self.levels!r}")

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def _per_channel(self, values, ndim: int, dtype=jnp.float32) -> jax.Array:
        """One value per channel, shaped to broadcast over latents of `ndim` axes."""
        return jnp.reshape(jnp.asarray(values, dtype), (1,) * (ndim - 1) + (len(self.levels),))

    def _bound(self, z: jax.Array) -> jax.Array:
        """z into (-(L-1)/2, (L-1)/2) per channel, shifted by half a step where L is even, so that
        rounding reaches exactly L integer values."""
        levels = np.asarray(self.levels, np.float64)
        half = (levels - 1) * (1 - self.eps) / 2
        offset = np.where(levels % 2 == 0, 0.5, 0.0)
        shift = np.arctanh(offset / half)
        per_channel = lambda v: self._per_channel(v, z.ndim)  # noqa: E731
        return jnp.tanh(z + per_channel(shift)) * per_channel(half) - per_channel(offset)

    def __call__(self, latents: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(quantized latents in [-1, 1], float32 like `latents`, and int32 codes of the leading axes)."""
        if latents.shape[-1] != len(self.levels):
            raise ValueError(f"latents have {latents.shape[-1]} channels, FSQ levels {self.levels} need "
                             f"{len(self.levels)}")
        ndim = latents.ndim
        half_width = [n // 2 for n in self.levels]
        bounded = self._bound(latents.astype(jnp.float32))
        rounded = bounded + jax.lax.stop_gradient(jnp.round(bounded) - bounded)  # straight-through
        digits = jnp.round(bounded).astype(jnp.int32) + self._per_channel(half_width, ndim, jnp.int32)
        codes = jnp.sum(digits * self._per_channel(self._basis, ndim, jnp.int32), axis=-1)
        return rounded / self._per_channel(half_width, ndim), codes

    def decode(self, codes: jax.Array) -> jax.Array:
        """Codes int32[...] -> their quantized latents [..., channels], as `__call__` returns them."""
        ndim = codes.ndim + 1
        digits = (codes[..., None] // self._per_channel(self._basis, ndim, jnp.int32)) % self._per_channel(
            self.levels, ndim, jnp.int32)
        half = self._per_channel([n // 2 for n in self.levels], ndim)
        return (digits.astype(jnp.float32) - half) / half

    @property
    def _basis(self) -> np.ndarray:  # the place value of each channel's digit
        return np.cumprod((1, *self.levels[:-1])).astype(np.int32)
