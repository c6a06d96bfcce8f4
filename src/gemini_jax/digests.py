"""Digests of a tree of arrays, written with each checkpoint and checked when it is read back.

A digest is two 32-bit checksums of an array's bits, computed where the array lives (sharded
arrays included, so every host of a multi-host run agrees without gathering anything): the
wrapping sum of its elements' bits, and the wrapping sum of each element's bits times an odd
multiplier that depends on its position, so that moved bytes are caught as well as changed ones.
It guards against storage damage (flipped, zeroed or swapped bytes), not against forgery.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}
_GOLDEN = np.uint32(0x9E3779B1)  # an odd multiplier: every position gets a distinct weight mod 2**32


def path_name(path: tuple[Any, ...]) -> str:
    """"params/decoder/layers/0/attn/q" for a tree path."""
    parts = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                parts.append(str(getattr(key, attribute)))
                break
        else:
            parts.append(str(key))
    return "/".join(parts)


def _bits(x: jax.Array) -> jax.Array:
    """uint32[N]: each element's bits (8-byte elements as their two 32-bit halves)."""
    if x.dtype == jnp.bool_ or (jnp.issubdtype(x.dtype, jnp.integer) and jnp.iinfo(x.dtype).bits < 8):
        return x.reshape(-1).astype(jnp.uint32)  # booleans and sub-byte integers (int4): their values
    if x.dtype.itemsize == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    return jax.lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize]).reshape(-1).astype(jnp.uint32)


@jax.jit
def _checksums(leaves: list[jax.Array]) -> list[jax.Array]:
    sums = []
    for x in leaves:
        bits = _bits(x)
        weights = jnp.arange(bits.shape[0], dtype=jnp.uint32) * _GOLDEN + jnp.uint32(1)
        sums.append(jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weights, dtype=jnp.uint32)]))
    return sums


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray)) and (x.dtype == jnp.bool_ or x.dtype.itemsize in _UNSIGNED)


def digests(tree: Any) -> dict[str, str]:
    """{array path: 16 hex digits} for every array of `tree` (other leaves have none)."""
    flat = [(path_name(path), x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0] if _is_array(x)]
    if not flat:
        return {}
    sums = jax.device_get(_checksums([jnp.asarray(x) if isinstance(x, np.ndarray) else x for _, x in flat]))
    return {name: f"{int(s[0]):08x}{int(s[1]):08x}" for (name, _), s in zip(flat, sums)}


def mismatches(tree: Any, expected: dict[str, str]) -> list[str]:
    """The paths of `tree`'s arrays whose digest differs from `expected` (paths it lacks are skipped)."""
    found = digests(tree)
    return [name for name, digest in found.items() if name in expected and expected[name] != digest]
