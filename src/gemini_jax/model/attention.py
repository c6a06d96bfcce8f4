"""Attention: the KV cache, and multi-query / grouped-query attention (dense or blockwise).

Dimension letters: B batch, T queries, S keys, D width, N query heads, K key/value
heads (K = 1 is multi-query attention, the Gemini report's choice), H head dimension.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax.config import AttentionImpl
from gemini_jax.model.blockwise import blockwise_attention
from gemini_jax.model.layers import apply_rope, fan_in_init, param
from gemini_jax.model.mask import SegmentMask
from gemini_jax.model.quant import read_weight


@dataclasses.dataclass(frozen=True)
class LayerKV:
    """Keys and values of one layer: k, v [B, S, K, H] (after RoPE, in compute dtype)."""

    k: jax.Array
    v: jax.Array


@dataclasses.dataclass(frozen=True)
class KVCache:
    """The decoding state of the whole decoder.

    layers: one LayerKV per decoder layer, each [B, S, K, H] with S = max_len.
    valid:  bool[B, S], True where a slot holds a real token's keys.
    index:  int32[B], each row's next write slot, which is also its length and the
            RoPE position of its next token (prompts are right-padded, so a row's
            real tokens occupy slots 0 .. index - 1).
    code_run: int32[B], how many image codes each row ends with (0 after any other token):
            the place in its image of the next token when that is a code
            (ImageOutputConfig.code_positions; the decoder of a text model ignores it).
    """

    layers: tuple[LayerKV, ...]
    valid: jax.Array
    index: jax.Array
    code_run: jax.Array

    @classmethod
    def zeros(
        cls, *, num_layers: int, batch_size: int, max_len: int, num_kv_heads: int, head_dim: int,
        dtype: jnp.dtype,
    ) -> KVCache:
        shape = (batch_size, max_len, num_kv_heads, head_dim)
        layers = tuple(
            LayerKV(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype)) for _ in range(num_layers)
        )
        return cls(
            layers=layers,
            valid=jnp.zeros((batch_size, max_len), bool),
            index=jnp.zeros((batch_size,), jnp.int32),
            code_run=jnp.zeros((batch_size,), jnp.int32),
        )

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]


jax.tree_util.register_dataclass(LayerKV)
jax.tree_util.register_dataclass(KVCache)


def default_implementation(dtype: jnp.dtype, head_dim: int) -> str | None:
    """What `jax.nn.dot_product_attention` is asked for under AttentionImpl.AUTO."""
    # cuDNN's fused kernel is the fast path on GPU but takes only 16-bit inputs and
    # head dimensions that are multiples of 8; XLA's reference path runs elsewhere.
    return "cudnn" if jax.default_backend() == "gpu" and dtype == jnp.bfloat16 and head_dim % 8 == 0 else None


def _jax_implementation(implementation: AttentionImpl | str, q: jax.Array) -> str | None:
    """`jax.nn.dot_product_attention`'s name for an XLA or cuDNN choice, AUTO resolved for q."""
    implementation = AttentionImpl(implementation)
    if implementation == AttentionImpl.AUTO:
        return default_implementation(q.dtype, q.shape[-1])
    return implementation.value


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, mask: jax.Array,
    implementation: AttentionImpl | str = AttentionImpl.AUTO, causal: bool = False,
) -> jax.Array:
    """softmax(q k^T / sqrt(H)) v for q[B, T, N, H], k and v [B, S, K, H], mask bool[B, T, S].

    implementation: AUTO (cuDNN where `default_implementation` allows it, else XLA), XLA or
    CUDNN (which raises where cuDNN cannot run, rather than falling back). `causal`
    (self-attention, T = S) promises the mask hides every later key, which lets the
    kernel skip them; the mask still applies (packed segments, padding).
    """
    if implementation == AttentionImpl.CUDNN and jax.default_backend() != "gpu":
        raise ValueError(
            f"attention implementation 'cudnn' needs a GPU, this backend is {jax.default_backend()!r}; "
            f"use 'auto', 'xla' or 'blockwise'"
        )
    # jax.nn.dot_product_attention promotes bfloat16 with float32 internally, which
    # strict dtype promotion (our tests' setting) refuses; the promotion is intended there.
    with jax.numpy_dtype_promotion("standard"):
        encoded = jax.nn.dot_product_attention(
            q, k, v,
            mask=mask[:, None, :, :],  # [B, 1, T, S]
            scale=q.shape[-1] ** -0.5,
            is_causal=causal,
            implementation=_jax_implementation(implementation, q),
        )  # [B, T, N, H]
    # A query that sees no key (padding) gets zeros, whatever the backend does with an
    # empty softmax: a NaN there would reach real tokens through the next layer's values.
    sees_any = jnp.any(mask, axis=-1)[:, :, None, None]  # [B, T, 1, 1]
    return jnp.where(sees_any, encoded, jnp.zeros_like(encoded))


def causal_self_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, segments: SegmentMask,
    implementation: AttentionImpl | str = AttentionImpl.AUTO,
) -> jax.Array:
    """Self-attention under a causal SegmentMask (`segments.causal`), q[B, T, N, H].

    When every row holds one document followed by padding (a long-context batch, a
    prompt batch), the mask is fully described by each row's length, and the kernel gets
    lengths instead of a [B, T, T] mask: cuDNN then runs its mask-free causal kernel, which
    is faster than reading a mask (docs/performance.md). Packed rows take the masked path. The choice
    is made on device (`lax.cond`), so one compiled program serves both kinds of batch.
    """
    segment_ids = segments.segment_ids

    def by_length(q, k, v, segment_ids):
        valid = segment_ids > 0  # [B, T]
        lengths = valid.sum(axis=-1, dtype=jnp.int32)  # [B]
        with jax.numpy_dtype_promotion("standard"):  # as in dot_product_attention
            encoded = jax.nn.dot_product_attention(
                q, k, v, scale=q.shape[-1] ** -0.5, is_causal=True,
                query_seq_lengths=lengths, key_value_seq_lengths=lengths,
                implementation=_jax_implementation(implementation, q),
            )  # [B, T, N, H]
        return jnp.where(valid[:, :, None, None], encoded, jnp.zeros_like(encoded))  # padding sees nothing

    def masked(q, k, v, segment_ids):
        return dot_product_attention(q, k, v, mask=segments.dense(), implementation=implementation, causal=True)

    return jax.lax.cond(one_document_per_row(segment_ids), by_length, masked, q, k, v, segment_ids)


def one_document_per_row(segment_ids: jax.Array) -> jax.Array:
    """bool[]: each row of segment_ids int32[B, T] is one id > 0 repeated, then padding (0)."""
    valid = segment_ids > 0
    same_id = jnp.where(valid, segment_ids == segment_ids[:, :1], True)
    prefix = valid[:, 1:] <= valid[:, :-1]  # no document token after padding
    return jnp.all(same_id) & jnp.all(prefix)


class Attention(nnx.Module):
    """Multi-head attention with K <= N key/value heads and optional RoPE.

    Layout (HF Gemma: q_proj [N*H, D], k_proj/v_proj [K*H, D], o_proj [D, N*H]):
    q [D, N, H], k and v [D, K, H], o [N, H, D].
    """

    def __init__(
        self, *, width: int, num_heads: int, num_kv_heads: int, head_dim: int,
        rope_base: float | None, dtype: jnp.dtype, rngs: nnx.Rngs,
        implementation: AttentionImpl | str = AttentionImpl.AUTO, block_size: int = 512,
    ):
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.rope_base = rope_base
        self.implementation = AttentionImpl(implementation)
        self.block_size = block_size  # blockwise attention's query and key block
        self.dtype = dtype
        key = rngs.params
        kv = "heads" if num_kv_heads == num_heads else "kv_heads"  # multi-head: K = N splits like N
        self.q = param(fan_in_init(0, (1, 2))(key(), (width, num_heads, head_dim), jnp.float32),
                       "embed", "heads", "head_dim")
        self.k = param(fan_in_init(0, (1, 2))(key(), (width, num_kv_heads, head_dim), jnp.float32),
                       "embed", kv, "head_dim")
        self.v = param(fan_in_init(0, (1, 2))(key(), (width, num_kv_heads, head_dim), jnp.float32),
                       "embed", kv, "head_dim")
        self.o = param(fan_in_init((0, 1), 2)(key(), (num_heads, head_dim, width), jnp.float32),
                       "heads", "head_dim", "embed")

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | SegmentMask,
        positions: jax.Array | None = None,
        cache: LayerKV | None = None,
        cache_index: jax.Array | None = None,
    ) -> tuple[jax.Array, LayerKV]:
        """Attends x[B, T, D] under mask bool[B, T, S]; returns (out [B, T, D], keys/values).

        A SegmentMask (self-attention, no cache) lets AttentionImpl.BLOCKWISE attend
        without a [T, T] mask or score matrix; other implementations build it densely.

        Without a cache, S = T and the returned LayerKV holds this chunk's keys and
        values (prefill stores them). With a cache, row b's T new keys are written at
        slots cache_index[b] + 0 .. T - 1, attention runs over all S cache slots, and
        the updated cache is returned.
        """
        q, k, v = self._project(x.astype(self.dtype), positions=positions)
        if cache is None:
            keys = LayerKV(k=k, v=v)
        else:
            if cache_index is None:
                raise ValueError("attention with a KV cache needs cache_index int32[B]")
            keys = _write_cache(cache, k=k, v=v, cache_index=cache_index)  # [B, S, K, H]
        encoded = self._attend(q, keys, mask=mask, cached=cache is not None)  # [B, T, N, H]
        out = jnp.einsum("BTNH,NHD->BTD", encoded, read_weight(self.o, self.dtype))
        return out, keys

    def _project(self, x: jax.Array, *, positions: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x[B, T, D] (compute dtype) -> q [B, T, N, H], k and v [B, T, K, H], RoPE applied."""
        dtype = self.dtype
        q = jnp.einsum("BTD,DNH->BTNH", x, read_weight(self.q, dtype))
        k = jnp.einsum("BTD,DKH->BTKH", x, read_weight(self.k, dtype))
        v = jnp.einsum("BTD,DKH->BTKH", x, read_weight(self.v, dtype))
        if self.rope_base is not None:
            if positions is None:
                raise ValueError("this attention uses RoPE: pass positions int32[B, T]")
            q = apply_rope(q, positions=positions, base=self.rope_base)
            k = apply_rope(k, positions=positions, base=self.rope_base)
        return q, k, v

    def _attend(self, q: jax.Array, keys: LayerKV, *, mask: jax.Array | SegmentMask, cached: bool) -> jax.Array:
        """q[B, T, N, H] over keys [B, S, K, H] -> [B, T, N, H], by the path the mask allows."""
        dtype = self.dtype
        k, v = keys.k.astype(dtype), keys.v.astype(dtype)
        segments = mask if isinstance(mask, SegmentMask) and not cached else None
        if segments is not None and self.implementation == AttentionImpl.BLOCKWISE:
            return blockwise_attention(
                q, k, v, segment_ids=segments.segment_ids, media_spans=segments.media_spans,
                q_block=self.block_size, kv_block=self.block_size,
            )
        if segments is not None and segments.causal:
            implementation = (AttentionImpl.AUTO if self.implementation == AttentionImpl.BLOCKWISE
                              else self.implementation)
            return causal_self_attention(q, k, v, segments=segments, implementation=implementation)
        dense = mask.dense() if isinstance(mask, SegmentMask) else mask  # [B, T, S]
        return dot_product_attention(q, k, v, mask=dense, implementation=self._dense_implementation(cached=cached))

    def _dense_implementation(self, *, cached: bool) -> AttentionImpl:
        """The implementation for a dense mask: blockwise has no such path."""
        if cached and self.implementation in (AttentionImpl.AUTO, AttentionImpl.BLOCKWISE):
            # A decode step's few queries over the cache: XLA's fused attention is faster there
            # than cuDNN's kernel (docs/performance.md has the measurements).
            return AttentionImpl.XLA
        if self.implementation == AttentionImpl.BLOCKWISE:
            return AttentionImpl.AUTO
        return self.implementation


def _write_cache(cache: LayerKV, *, k: jax.Array, v: jax.Array, cache_index: jax.Array) -> LayerKV:
    """The cache with row b's T new keys and values written at slots cache_index[b] + 0 .. T - 1."""
    batch, num_new = k.shape[:2]
    slots = cache_index[:, None] + jnp.arange(num_new, dtype=jnp.int32)[None, :]  # [B, T]
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], slots.shape)  # [B, T]
    # Writes past the end of the cache are dropped; the sampler stops before.
    return LayerKV(
        k=cache.k.at[rows, slots].set(k.astype(cache.k.dtype), mode="drop"),
        v=cache.v.at[rows, slots].set(v.astype(cache.v.dtype), mode="drop"),
    )  # [B, S, K, H]
