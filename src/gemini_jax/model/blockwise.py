"""Blockwise (flash-style) attention: softmax(q k^T / sqrt(H)) v without the [T, S] matrix.

At 32K tokens a dense score matrix is 32K x 32K per head (4 GiB in float32), and its
gradient as much again. Here queries and keys are cut into blocks; for each query
block a running maximum m, running sum l and output accumulator are carried over the
key blocks in float32 (the online softmax of Milakov & Gimelshein 2018, as in
FlashAttention, Dao et al. 2022). Memory is linear in the length: one
[bq, bk] block of scores lives at a time.

The mask is never materialised either: each block's [B, bq, bk] piece is computed
from the segment ids, media spans and indices of its queries and keys by the same
`attention_mask` the dense path uses, so both paths share one definition of who sees
whom (packed segments, 0 = padding, causal order, bidirectional media spans). A key
block that no query of the block may see is skipped (`lax.cond`), which halves the
work of a causal mask.

Gradients come from a custom VJP that keeps only q, k, v, the output and the
log-sum-exp per query, and recomputes each block's probabilities in the backward pass
(FlashAttention's recipe). Plain autodiff through the scan would keep the carried
[bq, N, H] accumulator of every (query block, key block) step: T * S / bk numbers per
head, still quadratic (benchmarks/long_context.py measures both).

Dimension letters: B batch, T queries, S keys, N query heads, K key/value heads
(N = K * G, query head n uses key head n // G as in jax.nn.dot_product_attention),
G query heads per key head, H head dimension; Q and C count query and key blocks.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gemini_jax.model.mask import attention_mask

# Scores of masked entries: finite, so that a block where a query sees nothing gives
# exp(0) rather than exp(nan); such entries are zeroed explicitly anyway.
_MASKED = -1e30


class MaskIds(NamedTuple):
    """What a block of the mask is computed from: int32[B, T] for queries, [B, S] for keys."""

    q_segment_ids: jax.Array
    q_media_spans: jax.Array
    q_indices: jax.Array
    kv_segment_ids: jax.Array
    kv_media_spans: jax.Array
    kv_indices: jax.Array


def _pad_to(x: jax.Array, length: int) -> jax.Array:
    """Pads axis 1 with zeros to `length`; zero segment ids make padded tokens invisible."""
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, length - x.shape[1])
    return jnp.pad(x, pad)


def _blocks(x: jax.Array, size: int) -> jax.Array:
    """[B, L, ...] -> [L / size, B, size, ...]: the leading axis is what lax.scan walks."""
    batch, length = x.shape[:2]
    return jnp.moveaxis(x.reshape(batch, length // size, size, *x.shape[2:]), 1, 0)


def _unblocks(x: jax.Array) -> jax.Array:
    """[L / size, B, size, ...] -> [B, L, ...]."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def _block_mask(qi: tuple[jax.Array, ...], kj: tuple[jax.Array, ...]) -> jax.Array:
    """bool[B, bq, bk] for one (query block, key block) pair, from their (segment, span, index) ids."""
    q_seg, q_span, q_idx = qi
    k_seg, k_span, k_idx = kj
    return attention_mask(
        segment_ids=q_seg, media_spans=q_span, kv_segment_ids=k_seg, kv_media_spans=k_span,
        q_indices=q_idx, kv_indices=k_idx,
    )


def _scores(q: jax.Array, k: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """float32[B, K, G, bq, bk] scaled scores, _MASKED where the mask is False."""
    s = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32) * jnp.float32(scale)
    return jnp.where(mask[:, None, None, :, :], s, jnp.float32(_MASKED))


def _forward(q, k, v, ids: MaskIds, *, scale: float, q_block: int, kv_block: int, remat: bool = False):
    """Returns (out [B, T, K, G, H] float32, log-sum-exp float32[B, K, G, T]) on padded inputs."""
    qb = _blocks(q, q_block)  # [Q, B, bq, K, G, H]
    kb, vb = _blocks(k, kv_block), _blocks(v, kv_block)  # [C, B, bk, K, H]
    q_ids = tuple(_blocks(a, q_block) for a in ids[:3])  # 3 x [Q, B, bq]
    kv_ids = tuple(_blocks(a, kv_block) for a in ids[3:])  # 3 x [C, B, bk]
    batch, _, kv_heads, group, head_dim = q.shape

    def one_query_block(args):
        qi, *qi_ids = args

        def step(carry, kv):
            # carry: running max m and sum l [B, K, G, bq], output accumulator [B, K, G, bq, H]
            kj, vj, *kj_ids = kv
            mask = _block_mask(tuple(qi_ids), tuple(kj_ids))  # [B, bq, bk]

            def update(carry):
                m, l, acc = carry
                s = _scores(qi, kj, mask, scale)  # [B, K, G, bq, bk]
                m_new = jnp.maximum(m, s.max(axis=-1))
                p = jnp.where(mask[:, None, None], jnp.exp(s - m_new[..., None]), jnp.float32(0))
                alpha = jnp.exp(m - m_new)  # rescales what was summed under the old maximum
                pv = jnp.einsum("BKGTS,BSKH->BKGTH", p.astype(vj.dtype), vj, preferred_element_type=jnp.float32)
                return m_new, alpha * l + p.sum(axis=-1), alpha[..., None] * acc + pv

            return jax.lax.cond(jnp.any(mask), update, lambda c: c, carry), None

        shape = (batch, kv_heads, group, q_block)
        init = (
            jnp.full(shape, _MASKED, jnp.float32),
            jnp.zeros(shape, jnp.float32),
            jnp.zeros((*shape, head_dim), jnp.float32),
        )
        (m, l, acc), _ = jax.lax.scan(jax.checkpoint(step) if remat else step, init, (kb, vb, *kv_ids))
        seen = l > 0  # a query that sees no key returns zeros, as the dense path does
        out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1)[..., None], jnp.float32(0))
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1)), jnp.float32(0))
        return jnp.einsum("BKGTH->BTKGH", out), lse  # [B, bq, K, G, H], [B, K, G, bq]

    out, lse = jax.lax.map(one_query_block, (qb, *q_ids))  # [Q, B, bq, K, G, H], [Q, B, K, G, bq]
    lse = jnp.moveaxis(lse, 0, -2).reshape(batch, kv_heads, group, -1)  # [B, K, G, T]
    return _unblocks(out), lse


def _probabilities(qi, kj, mask, lse_i, scale):
    """float32[B, K, G, bq, bk] softmax probabilities of one block, from the saved log-sum-exp."""
    s = _scores(qi, kj, mask, scale)
    return jnp.where(mask[:, None, None], jnp.exp(s - lse_i[..., None]), jnp.float32(0))


def _backward(q, k, v, ids: MaskIds, out, lse, d_out, *, scale: float, q_block: int, kv_block: int):
    """(dq, dk, dv) in float32 by recomputing each block's probabilities: two passes, one
    over query blocks (for dq) and one over key blocks (for dk, dv), so neither needs a
    [T, S] buffer nor scattered accumulation."""
    # delta_i = sum_h dO_ih O_ih, the softmax backward's row term.
    delta = jnp.einsum("BTKGH,BTKGH->BKGT", d_out, out.astype(jnp.float32), preferred_element_type=jnp.float32)
    qb, dob = _blocks(q, q_block), _blocks(d_out, q_block)  # [Q, B, bq, K, G, H]
    lseb = jnp.moveaxis(lse.reshape(*lse.shape[:3], -1, q_block), 3, 0)  # [Q, B, K, G, bq]
    deltab = jnp.moveaxis(delta.reshape(*delta.shape[:3], -1, q_block), 3, 0)  # [Q, B, K, G, bq]
    kb, vb = _blocks(k, kv_block), _blocks(v, kv_block)  # [C, B, bk, K, H]
    q_ids = tuple(_blocks(a, q_block) for a in ids[:3])
    kv_ids = tuple(_blocks(a, kv_block) for a in ids[3:])

    def grads_of_block(qi, doi, lse_i, delta_i, kj, vj, mask):
        p = _probabilities(qi, kj, mask, lse_i, scale)  # [B, K, G, bq, bk]
        dp = jnp.einsum("BTKGH,BSKH->BKGTS", doi, vj.astype(jnp.float32), preferred_element_type=jnp.float32)
        ds = p * (dp - delta_i[..., None]) * jnp.float32(scale)  # d(scores before scaling)
        return p, ds

    def dq_of_query_block(args):
        qi, doi, lse_i, delta_i, *qi_ids = args

        def step(dq, kv):
            kj, vj, *kj_ids = kv
            mask = _block_mask(tuple(qi_ids), tuple(kj_ids))

            def add(dq):
                _, ds = grads_of_block(qi, doi, lse_i, delta_i, kj, vj, mask)
                return dq + jnp.einsum("BKGTS,BSKH->BTKGH", ds, kj.astype(jnp.float32))

            return jax.lax.cond(jnp.any(mask), add, lambda d: d, dq), None

        dq, _ = jax.lax.scan(step, jnp.zeros(qi.shape, jnp.float32), (kb, vb, *kv_ids))
        return dq

    def dkv_of_key_block(args):
        kj, vj, *kj_ids = args

        def step(carry, qs):
            qi, doi, lse_i, delta_i, *qi_ids = qs
            mask = _block_mask(tuple(qi_ids), tuple(kj_ids))

            def add(carry):
                dk, dv = carry
                p, ds = grads_of_block(qi, doi, lse_i, delta_i, kj, vj, mask)
                dv = dv + jnp.einsum("BKGTS,BTKGH->BSKH", p, doi)
                dk = dk + jnp.einsum("BKGTS,BTKGH->BSKH", ds, qi.astype(jnp.float32))
                return dk, dv

            return jax.lax.cond(jnp.any(mask), add, lambda c: c, carry), None

        zeros = jnp.zeros(kj.shape, jnp.float32)
        (dk, dv), _ = jax.lax.scan(step, (zeros, zeros), (qb, dob, lseb, deltab, *q_ids))
        return dk, dv

    dq = _unblocks(jax.lax.map(dq_of_query_block, (qb, dob, lseb, deltab, *q_ids)))
    dk, dv = jax.lax.map(dkv_of_key_block, (kb, vb, *kv_ids))
    return dq, _unblocks(dk), _unblocks(dv)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, ids, scale, q_block, kv_block):
    return _forward(q, k, v, ids, scale=scale, q_block=q_block, kv_block=kv_block)[0].astype(q.dtype)


def _attention_fwd(q, k, v, ids, scale, q_block, kv_block):
    out, lse = _forward(q, k, v, ids, scale=scale, q_block=q_block, kv_block=kv_block)
    out = out.astype(q.dtype)
    return out, (q, k, v, ids, out, lse)


def _attention_bwd(scale, q_block, kv_block, residuals, d_out):
    q, k, v, ids, out, lse = residuals
    dq, dk, dv = _backward(
        q, k, v, ids, out, lse, d_out.astype(jnp.float32), scale=scale, q_block=q_block, kv_block=kv_block
    )
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_attention.defvjp(_attention_fwd, _attention_bwd)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def blockwise_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    segment_ids: jax.Array,
    media_spans: jax.Array,
    kv_segment_ids: jax.Array | None = None,
    kv_media_spans: jax.Array | None = None,
    q_indices: jax.Array | None = None,
    kv_indices: jax.Array | None = None,
    q_block: int = 512,
    kv_block: int = 512,
    checkpoint_steps: bool = False,
) -> jax.Array:
    """softmax(q k^T / sqrt(H)) v for q[B, T, N, H], k and v [B, S, K, H] under the mask
    `attention_mask` would give for the same ids (see there), without building it.

    Lengths need not be multiples of the block sizes: inputs are padded with segment id
    0 (invisible) and the padding is cut from the result. A query that sees no key gets
    zeros. Returns [B, T, N, H] in q's dtype; scores, softmax statistics and the
    output accumulate in float32.

    `checkpoint_steps=True` differentiates by plain autodiff through the scans, each
    block step under jax.checkpoint, instead of the custom VJP; it exists to measure
    that alternative (it keeps a quadratic number of carries) and is not for training.
    """
    batch, num_q, num_heads, head_dim = q.shape
    num_kv, num_kv_heads = k.shape[1], k.shape[2]
    if num_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of key/value heads ({num_kv_heads})")
    if q_block < 1 or kv_block < 1:
        raise ValueError(f"block sizes must be positive, got q_block={q_block}, kv_block={kv_block}")
    if kv_segment_ids is None:
        kv_segment_ids, kv_media_spans = segment_ids, media_spans
    elif kv_media_spans is None:
        kv_media_spans = jnp.zeros_like(kv_segment_ids)
    if q_indices is None:
        q_indices = jnp.broadcast_to(jnp.arange(num_q, dtype=jnp.int32)[None, :], (batch, num_q))
    if kv_indices is None:
        kv_indices = jnp.broadcast_to(jnp.arange(num_kv, dtype=jnp.int32)[None, :], (batch, num_kv))

    # A short sequence is one block, not one block padded to the default size.
    q_block, kv_block = min(q_block, num_q), min(kv_block, num_kv)
    padded_q, padded_kv = _round_up(num_q, q_block), _round_up(num_kv, kv_block)
    group = num_heads // num_kv_heads
    q5 = _pad_to(q, padded_q).reshape(batch, padded_q, num_kv_heads, group, head_dim)  # [B, T', K, G, H]
    ids = MaskIds(*(
        _pad_to(a.astype(jnp.int32), padded_q) for a in (segment_ids, media_spans, q_indices)
    ), *(
        _pad_to(a.astype(jnp.int32), padded_kv) for a in (kv_segment_ids, kv_media_spans, kv_indices)
    ))
    k, v = _pad_to(k, padded_kv), _pad_to(v, padded_kv)  # [B, S', K, H]
    scale = head_dim**-0.5
    if checkpoint_steps:
        out = _forward_checkpointed(q5, k, v, ids, scale=scale, q_block=q_block, kv_block=kv_block)
    else:
        out = _attention(q5, k, v, ids, scale, q_block, kv_block)  # [B, T', K, G, H]
    return out.reshape(batch, padded_q, num_heads, head_dim)[:, :num_q]


def _forward_checkpointed(q, k, v, ids: MaskIds, *, scale: float, q_block: int, kv_block: int) -> jax.Array:
    """The forward pass alone, differentiated by autodiff (see blockwise_attention)."""
    out, _ = _forward(q, k, v, ids, scale=scale, q_block=q_block, kv_block=kv_block, remat=True)
    return out.astype(q.dtype)
