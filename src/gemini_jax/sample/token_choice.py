"""Choosing the next token from logits: greedy, temperature, top-k and top-p, per row.

Each row of a batch carries its own settings (arrays of shape [B]), so requests with
different sampling parameters share one compiled decode step. `guided_logits` combines the rows
of a batch in pairs for classifier-free guidance (docs/image-output.md).
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = no limit
    top_p: float = 1.0  # 1 = no limit
    max_new_tokens: int = 32
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


def filter_logits(logits: jax.Array, *, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Sets to -inf every logit outside each row's top-k and top-p (nucleus) sets.

    logits float32[B, V]; top_k int32[B] (0 = all); top_p float32[B] (1 = all).
    The nucleus is the smallest set of most likely tokens whose probability reaches top_p;
    the most likely token always stays.
    """
    vocab = logits.shape[-1]
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V], descending
    k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)  # [B]
    kth = jnp.take_along_axis(sorted_logits, (k - 1)[:, None], axis=-1)  # [B, 1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Probability mass strictly before each sorted token: a token stays while that is < top_p.
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # [B, V]
    keep_sorted = mass_before < top_p[:, None]
    num_keep = jnp.maximum(keep_sorted.sum(axis=-1), 1)  # [B]
    pth = jnp.take_along_axis(sorted_logits, (num_keep - 1)[:, None], axis=-1)  # [B, 1]
    threshold = jnp.maximum(kth, pth)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_tokens(
    logits: jax.Array, key: jax.Array, *, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array
) -> jax.Array:
    """int32[B] next tokens; rows with temperature 0 take the argmax. `key` is [B] keys.

    A batch whose rows are all greedy skips the sort and the random draw, most of a small
    model's decode step on a CPU (docs/serving.md has the measurement); the branch is taken at
    run time, so greedy and sampled requests still share one compiled step.
    """
    logits = logits.astype(jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw() -> jax.Array:
        scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
        sampled = jax.vmap(jax.random.categorical)(key, filter_logits(scaled, top_k=top_k, top_p=top_p))
        return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)

    return jax.lax.cond(jnp.any(temperature > 0), draw, lambda: greedy)


def sample_next(
    logits: jax.Array, *, seeds: jax.Array, steps: jax.Array, sampling: dict[str, jax.Array], vocab_size: int
) -> jax.Array:
    """int32[B] next tokens from logits [B, V], row b drawn with key fold_in(key(seeds[b]), steps[b]).

    The key depends only on the request's own seed and its own step (0 for the token after
    the prompt), never on its row or on the other rows, so a request's sample is the same
    alone or in any batch. Ids past `vocab_size` (an embedding table padded beyond the
    tokenizer, as imported checkpoints often are) are never drawn: nothing could decode them.
    """
    if vocab_size < logits.shape[-1]:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_size, logits, -jnp.inf)
    keys = jax.vmap(lambda s, t: jax.random.fold_in(jax.random.key(s), t))(seeds, steps)  # [B] keys
    return sample_tokens(logits, keys, **sampling)


def check_guidance(guidance: object, *, error: type[Exception] = ValueError) -> float:
    """`guidance` as a float, or `error` unless it is a finite real number >= 0 (not a bool)."""
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not 0 <= guidance < math.inf:
        raise error(f"guidance must be a finite number >= 0 (1: unguided), got {guidance!r}")
    return float(guidance)


def guided_logits(logits: jax.Array, *, scale: jax.Array, guide: jax.Array) -> jax.Array:
    """float32[P, V]: the logits of P pairs of rows, rows (2p, 2p + 1) being a request's prompt
    and its unconditional prompt, combined by classifier-free guidance (Ho & Salimans 2022) where
    `guide` (bool[P]) holds and the prompt's own elsewhere.

    logits [2P, V]; scale: a float32 scalar s. Written (1 - s) u + s c, which is u + s (c - u)
    and gives c exactly at s = 1 and u exactly at s = 0: those two reproduce unguided sampling
    of one prompt or the other token for token.
    """
    pairs = logits.astype(jnp.float32).reshape(-1, 2, logits.shape[-1])  # [P, 2, V]
    cond, uncond = pairs[:, 0], pairs[:, 1]
    return jnp.where(guide[:, None], (1.0 - scale) * uncond + scale * cond, cond)


def params_arrays(params: list[SamplingParams]) -> dict[str, np.ndarray]:
    return {
        "temperature": np.array([p.temperature for p in params], np.float32),
        "top_k": np.array([p.top_k for p in params], np.int32),
        "top_p": np.array([p.top_p for p in params], np.float32),
    }
