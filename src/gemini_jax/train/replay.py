"""Deterministic replay: a check for silent data corruption (SDC).

A chip that computes wrongly without raising an error (a flipped bit in a multiplier, a bad
memory cell) poisons a run quietly. The same compiled program fed the same arrays gives the
same bits on healthy hardware, so a step computed twice and compared catches such a fault
in the act, at the step where it happened. (The Gemini report names deterministic replay as
how its training isolates incorrect computations at scale.)

Each array is compared through a fingerprint computed on its device: the sum of its
elements' bits read as unsigned integers, wrapping modulo 2**32. Integer addition is exact
and order-free, so healthy replays agree whatever order the reduction runs in, and one
flipped bit changes the sum by +-2**k, never 0 modulo 2**32: a single-bit fault is always
seen. Only these few scalars travel to the host.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gemini_jax.config import ConfigError

_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}
# On GPU, XLA's scatter-adds (the gradient of the token embedding) accumulate with atomics
# in an order that varies from run to run, so healthy replays differ without this flag
# (docs/training.md has the measurement). It slows those ops in every step, so only a run
# that asks for the check sets it (the CLI does).
GPU_DETERMINISM_FLAG = "--xla_gpu_deterministic_ops=true"


class SilentDataCorruptionError(RuntimeError):
    """Two runs of one step from the same inputs gave different bits."""

    def __init__(self, *, step: int, gradients: list[str], state: list[str]):
        self.step = step
        self.gradients = gradients  # paths of the differing gradient arrays, in tree order
        self.state = state  # and of the differing updated params/opt_state arrays
        where = "; ".join(
            f"{what}: {names[0]!r}" + (f" and {len(names) - 1} more" if len(names) > 1 else "")
            for what, names in (("gradient", gradients), ("updated state", state)) if names
        )
        super().__init__(
            f"silent data corruption at step {step}: replaying the step from the same parameters, optimizer "
            f"state and batch gave different results ({where}). Healthy hardware repeats a computation "
            f"bit for bit: resume from the last checkpoint, preferably on other devices.")

    def record(self) -> dict[str, Any]:
        """The fields of a metrics.jsonl record."""
        return {"step": self.step, "gradients": self.gradients, "state": self.state}


def require_deterministic_backend() -> None:
    """Raises ConfigError where replays could differ on healthy hardware (GPU without
    GPU_DETERMINISM_FLAG in XLA_FLAGS), so the check cannot cry wolf."""
    if jax.default_backend() == "gpu" and GPU_DETERMINISM_FLAG not in os.environ.get("XLA_FLAGS", ""):
        raise ConfigError(
            f"the silent-data-corruption check compares two runs of a step bit for bit, but on GPU XLA "
            f"sums scatter-adds in a varying order: start the process with XLA_FLAGS={GPU_DETERMINISM_FLAG} "
            f"(`gemini-jax train --sdc-check-every` sets it itself)")


def path_name(path: tuple[Any, ...]) -> str:
    """A pytree path as 'decoder/blocks/0/attn/q' (nnx's trailing '.value' left out)."""
    names = [str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))) for key in path]
    return "/".join(names[:-1] if names and names[-1] == "value" else names)


def fingerprint(tree: Any) -> Any:
    """uint32[] per array of `tree`: the wrapping sum of its elements' bits."""

    def checksum(x: jax.Array) -> jax.Array:
        if x.dtype == jnp.bool_:
            bits = x.astype(jnp.uint32)
        else:
            bits = jax.lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize]).astype(jnp.uint32)
        return jnp.sum(bits, dtype=jnp.uint32)

    return jax.tree.map(checksum, tree)


def differing(first: Any, second: Any) -> list[str]:
    """The paths whose fingerprints differ between two fingerprint trees of one structure."""
    first, second = jax.device_get((first, second))  # one transfer, not one per array
    pairs = zip(jax.tree_util.tree_flatten_with_path(first)[0], jax.tree.leaves(second), strict=True)
    return [path_name(path) for (path, a), b in pairs if not np.array_equal(a, b)]


def check_replay(step: int, first: dict[str, Any], replayed: dict[str, Any]) -> None:
    """Raises SilentDataCorruptionError unless the fingerprints of two runs of `step` agree.

    Both dicts hold fingerprint trees of the `gradients` and of the updated `params` and
    `opt_state` (Trainer.checked_step)."""
    gradients = differing(first["gradients"], replayed["gradients"])
    state = [f"{part}/{path}" for part in ("params", "opt_state") for path in differing(first[part], replayed[part])]
    if gradients or state:
        raise SilentDataCorruptionError(step=step, gradients=gradients, state=state)


def flip_bit(path: str, *, bit: int) -> Callable[[Any], Any]:
    """A fault to inject into a replay (tests): flips `bit` of the first element of the
    float32 array at `path` of the gradients, as a faulty chip would."""

    def corrupt(grads: Any) -> Any:
        def flip(leaf_path, leaf):
            if path_name(leaf_path) != path:
                return leaf
            bits = jax.lax.bitcast_convert_type(leaf, jnp.uint32)
            mask = jnp.zeros_like(bits).at[(0,) * bits.ndim].set(jnp.uint32(1 << bit))
            return jax.lax.bitcast_convert_type(bits ^ mask, leaf.dtype)

        flipped = jax.tree_util.tree_map_with_path(flip, grads)
        if not any(path_name(p) == path for p, _ in jax.tree_util.tree_flatten_with_path(grads)[0]):
            raise ValueError(f"no gradient at {path!r}")
        return flipped

    return corrupt
