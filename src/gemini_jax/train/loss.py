"""Cross-entropy over the vocabulary, in chunks of tokens when the logits would be large.

A 256K vocabulary over 16K tokens is 16 GB of float32 logits, and autodiff keeps another
copy of their softmax for the backward pass. `cross_entropy` instead projects
`chunk_tokens` hidden states at a time inside a scan and, when differentiated, computes
each chunk's gradients (for the hidden states and the output table) right there in the
forward scan, while its logits exist: only one chunk's logits are ever alive, and no
logits are computed twice (rematerialising the chunks instead would redo a third of the
projection's work). Small problems (the demo's 1K vocabulary) take one chunk: the plain
computation, differentiated by autodiff.

The model's own projection is a `TiedProjection`: the table is cast to the compute dtype
once, outside the scan, and each chunk's gradients are 16-bit products with float32 sums,
the logits' gradient rounded to the compute dtype as every other layer's backward pass
rounds its own. Differentiating the float32 logits instead would run the two gradient
matmuls in float32 and convert the whole table twice per chunk (docs/performance.md has
the profile). Any other `project` callable is differentiated by autodiff, chunk by chunk.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from gemini_jax.model.quant import QuantizedWeight

# Largest logits block, in float32 elements, before chunking: 2^28 is 1 GiB, e.g. 1,048
# tokens of a 256K vocabulary.
MAX_LOGITS_ELEMENTS = 1 << 28

Project = Callable[[jax.Array, jax.Array], jax.Array]  # (table, hidden [b, t, D]) -> float32 logits [b, t, V]


@dataclasses.dataclass(frozen=True)
class TiedProjection:
    """logits = hidden @ table^T, the tied output projection: products in `dtype`, sums in
    float32. `train_table=False` (a frozen or quantized table: LoRA) gives the table no
    gradient and skips computing one."""

    dtype: Any
    train_table: bool = True

    def operand(self, table: Any) -> jax.Array:
        """The table as the matmuls read it: in the compute dtype (dequantized if quantized),
        cut off from autodiff when it is not trained."""
        dtype = jnp.dtype(self.dtype)
        operand = table.dequantize(dtype) if isinstance(table, QuantizedWeight) else table.astype(dtype)
        return operand if self.train_table else jax.lax.stop_gradient(operand)

    def __call__(self, table: Any, hidden: jax.Array) -> jax.Array:
        return _logits(self.operand(table), hidden)


def _logits(operand: jax.Array, hidden: jax.Array) -> jax.Array:
    return jnp.einsum("...D,VD->...V", hidden.astype(operand.dtype), operand, preferred_element_type=jnp.float32)


def logits_chunk_tokens(vocab_size: int, max_elements: int = MAX_LOGITS_ELEMENTS) -> int:
    """How many tokens one chunk projects at most: the most whose logits fit `max_elements`."""
    return max(1, max_elements // vocab_size)


def even_chunks(num_tokens: int, max_chunk: int) -> int:
    """Tokens per chunk: as few chunks as `max_chunk` allows, of equal size, so that little
    or nothing is padded (16,384 tokens at most 1,048 a chunk: 16 chunks of 1,024)."""
    num_chunks = -(-num_tokens // max_chunk)
    return -(-num_tokens // num_chunks)


def masked_cross_entropy(logits: jax.Array, targets: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy over the positions whose loss_mask is 1, in float32; and that count."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)  # [B, T]
    weight = loss_mask.astype(jnp.float32)
    count = weight.sum()
    return (losses * weight).sum() / jnp.maximum(count, 1.0), count


def cross_entropy(
    hidden: jax.Array,
    targets: jax.Array,
    loss_mask: jax.Array,
    *,
    table: jax.Array,
    project: Project,
    chunk_tokens: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`masked_cross_entropy(project(table, hidden), targets, loss_mask)` without ever
    holding more than `chunk_tokens` tokens' logits (default: `logits_chunk_tokens(V)`).

    hidden [B, T, D]; targets int32[B, T]; loss_mask [B, T]; table the output projection's
    weights [V, ...], differentiated like hidden. Returns (mean loss, count of scored positions).
    """
    vocab_size = table.shape[0]
    batch, length, width = hidden.shape
    num_tokens = batch * length
    if num_tokens <= (chunk_tokens or logits_chunk_tokens(vocab_size)):
        return masked_cross_entropy(project(table, hidden), targets, loss_mask)

    chunk = even_chunks(num_tokens, chunk_tokens or logits_chunk_tokens(vocab_size))
    num_chunks = -(-num_tokens // chunk)
    pad = num_chunks * chunk - num_tokens  # padded tokens carry weight 0
    weight = loss_mask.astype(jnp.float32).reshape(num_tokens)
    hidden_chunks = jnp.pad(hidden.reshape(num_tokens, width), ((0, pad), (0, 0))).reshape(num_chunks, 1, chunk, width)
    target_chunks = jnp.pad(targets.reshape(num_tokens), (0, pad)).reshape(num_chunks, 1, chunk)
    weight_chunks = jnp.pad(weight, (0, pad)).reshape(num_chunks, 1, chunk)
    if isinstance(project, TiedProjection):
        total = _tied_loss_sum(project.train_table, project.operand(table), hidden_chunks, target_chunks,
                               weight_chunks)
    else:
        total = _chunked_loss_sum(project, table, hidden_chunks, target_chunks, weight_chunks)
    count = weight.sum()
    return total / jnp.maximum(count, 1.0), count


def _chunk_losses(project: Project, table, h, t, w) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(project(table, h).astype(jnp.float32), t) * w  # [1, c]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_loss_sum(project: Project, table, hidden_chunks, target_chunks, weight_chunks) -> jax.Array:
    """Sum of weighted losses over chunks [n, 1, c, ...]: the plain scan (no gradients)."""

    def body(total, chunk):
        return total + _chunk_losses(project, table, *chunk).sum(), None

    return jax.lax.scan(body, jnp.zeros((), jnp.float32), (hidden_chunks, target_chunks, weight_chunks))[0]


def _chunked_loss_sum_fwd(project, table, hidden_chunks, target_chunks, weight_chunks):
    def body(carry, chunk):
        total, table_grad = carry
        h, t, w = chunk
        logits, pullback = jax.vjp(project, table, h)  # [1, c, V] float32
        losses, logits_grad = _chunk_gradient(logits.astype(jnp.float32), t, w)
        d_table, d_hidden = pullback(logits_grad)
        return (total + losses.sum(), table_grad + d_table), d_hidden

    zero = (jnp.zeros((), jnp.float32), jnp.zeros_like(table))
    (total, table_grad), hidden_grad = jax.lax.scan(body, zero, (hidden_chunks, target_chunks, weight_chunks))
    return total, (table_grad, hidden_grad)


def _chunked_loss_sum_bwd(project, residuals, cotangent):
    table_grad, hidden_grad = residuals
    del project
    # None: no gradient for the targets (integers) and the weights (data, not trained).
    return (table_grad * cotangent).astype(table_grad.dtype), (hidden_grad * cotangent).astype(hidden_grad.dtype), None, None


_chunked_loss_sum.defvjp(_chunked_loss_sum_fwd, _chunked_loss_sum_bwd)


def _chunk_gradient(logits: jax.Array, t: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Weighted losses [1, c] of float32 logits [1, c, V], and their gradient w.r.t. the logits."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    losses = -jnp.take_along_axis(log_probs, t[..., None], axis=-1)[..., 0] * w  # [1, c]
    # d(sum of w * loss) / d logits = w * (softmax - one_hot(target))
    logits_grad = (jnp.exp(log_probs) - jax.nn.one_hot(t, logits.shape[-1], dtype=jnp.float32)) * w[..., None]
    return losses, logits_grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _tied_loss_sum(train_table: bool, operand, hidden_chunks, target_chunks, weight_chunks) -> jax.Array:
    """`_chunked_loss_sum` for a TiedProjection, given its operand (the table in compute dtype)."""

    def body(total, chunk):
        h, t, w = chunk
        return total + _chunk_gradient(_logits(operand, h), t, w)[0].sum(), None

    return jax.lax.scan(body, jnp.zeros((), jnp.float32), (hidden_chunks, target_chunks, weight_chunks))[0]


def _tied_loss_sum_fwd(train_table, operand, hidden_chunks, target_chunks, weight_chunks):
    def body(carry, chunk):
        total, table_grad = carry
        h, t, w = chunk
        losses, logits_grad = _chunk_gradient(_logits(operand, h), t, w)
        logits_grad = logits_grad.astype(operand.dtype)  # [1, c, V]
        d_hidden = jnp.einsum("BTV,VD->BTD", logits_grad, operand, preferred_element_type=jnp.float32)
        if train_table:
            table_grad = table_grad + jnp.einsum("BTV,BTD->VD", logits_grad, h.astype(operand.dtype),
                                                 preferred_element_type=jnp.float32)
        return (total + losses.sum(), table_grad), d_hidden.astype(h.dtype)

    # The table's gradient sums in float32 over the chunks and is rounded once, at the end.
    zero = (jnp.zeros((), jnp.float32), jnp.zeros(operand.shape if train_table else (), jnp.float32))
    (total, table_grad), hidden_grad = jax.lax.scan(body, zero, (hidden_chunks, target_chunks, weight_chunks))
    return total, (table_grad, hidden_grad, operand)


def _tied_loss_sum_bwd(train_table, residuals, cotangent):
    table_grad, hidden_grad, operand = residuals  # operand: for its shape and dtype (an input, alive anyway)
    operand_grad = (table_grad * cotangent).astype(operand.dtype) if train_table else jnp.zeros_like(operand)
    return operand_grad, (hidden_grad.astype(jnp.float32) * cotangent).astype(hidden_grad.dtype), None, None


_tied_loss_sum.defvjp(_tied_loss_sum_fwd, _tied_loss_sum_bwd)
