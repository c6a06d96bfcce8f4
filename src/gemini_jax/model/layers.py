"""Building blocks shared by the decoder and the encoders.

Parameters are stored float32 in einsum-friendly shapes that map one-to-one onto the
public Gemma-1 checkpoint layout (HF `q_proj` [N*H, D] is our `q` [D, N, H] after a
reshape and transpose, `gate_proj` [F, D] is our `gate` [D, F], and so on). Each
module casts its parameters to the compute dtype right before its matmul, so a
bfloat16 model keeps float32 master weights.

Dimension letters: B batch, T sequence, D model width, F MLP width, V vocabulary,
N query heads, K key/value heads, H head dimension, I/O input/output features.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax.model.quant import QuantizedWeight, read_weight


def param(value: jax.Array, *names: str | None) -> nnx.Param:
    """A parameter carrying the logical name of each axis (see sharding.py's RULES).

    The names are metadata only (`eager_sharding=False`): building a model needs no mesh,
    and the trainer alone turns names into shardings when it is given one.
    """
    if len(names) != jnp.ndim(value):
        raise ValueError(f"{len(names)} axis names {names} for a parameter of shape {jnp.shape(value)}")
    return nnx.Param(value, out_sharding=names, eager_sharding=False)


def fan_in_init(in_axis: int | Sequence[int], out_axis: int | Sequence[int]) -> nnx.Initializer:
    """LeCun-normal for a weight whose input features span `in_axis` (variance 1 / fan_in)."""
    return nnx.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal", in_axis=in_axis, out_axis=out_axis
    )


class RMSNorm(nnx.Module):
    """Root-mean-square norm with Gemma's zero-centred scale: y = x / rms(x) * (1 + w).

    Storing w (initialised to 0) rather than 1 + w matches the Gemma checkpoints and
    keeps weight decay pulling the scale towards 1. Statistics are float32 whatever
    the input dtype: bfloat16 squares of a wide residual stream lose too much.
    """

    def __init__(self, dim: int, *, eps: float):
        self.eps = eps
        self.scale = param(jnp.zeros((dim,), jnp.float32), "norm")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean_square = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)  # [..., 1]
        normed = x32 * jax.lax.rsqrt(mean_square + self.eps)  # [..., D]
        scale = jnp.reshape(1.0 + self.scale[...], (1,) * (x.ndim - 1) + (-1,))  # [1.., D]
        return (normed * scale).astype(x.dtype)


class LayerNorm(nnx.Module):
    """Standard LayerNorm, y = (x - mean) / std * scale + bias, for SigLIP-style encoders.

    Unlike RMSNorm the scale is stored as itself (initialised to 1), as SigLIP
    checkpoints store it. Statistics are float32, as in RMSNorm.
    """

    def __init__(self, dim: int, *, eps: float):
        self.eps = eps
        self.scale = param(jnp.ones((dim,), jnp.float32), "norm")
        self.bias = param(jnp.zeros((dim,), jnp.float32), "norm")

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)  # [..., 1]
        variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        normed = (x32 - mean) * jax.lax.rsqrt(variance + self.eps)  # [..., D]
        shape = (1,) * (x.ndim - 1) + (-1,)
        return (normed * jnp.reshape(self.scale[...], shape) + jnp.reshape(self.bias[...], shape)).astype(x.dtype)


class Embedder(nnx.Module):
    """Token table E[V, D]: inputs are E[token] * sqrt(D), output logits are x @ E^T (tied)."""

    def __init__(self, vocab_size: int, width: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.width = width
        self.dtype = dtype
        # Std 1/sqrt(D): after the sqrt(D) input scale each embedding has unit-size
        # entries, and tied logits of a normalised hidden state start near unit size.
        init = nnx.initializers.normal(stddev=1.0 / math.sqrt(width))
        self.table = param(init(rngs.params(), (vocab_size, width), jnp.float32), "vocab", "embed")

    def encode(self, tokens: jax.Array) -> jax.Array:
        table = self.table.get_value()
        if isinstance(table, QuantizedWeight):  # dequantize only the looked-up rows
            x = table.take(tokens).dequantize(self.dtype)  # [B, T, D]
        else:
            x = jnp.take(table, tokens, axis=0).astype(self.dtype)  # [B, T, D]
        # The scale is rounded to the compute dtype first, as Gemma does: the
        # published checkpoints were trained with exactly that rounding.
        return x * jnp.asarray(math.sqrt(self.width), self.dtype)

    def decode(self, x: jax.Array) -> jax.Array:
        return tied_logits(self.table.get_value(), x, dtype=self.dtype)


def tied_logits(table: jax.Array | QuantizedWeight, x: jax.Array, *, dtype: jnp.dtype) -> jax.Array:
    """float32 logits x[B, T, D] @ table[V, D]^T in compute dtype `dtype`: a bfloat16 softmax
    over a large vocabulary is too coarse, so 16-bit products accumulate in float32."""
    if isinstance(table, QuantizedWeight):
        table = table.dequantize(dtype)
    if table.dtype == jnp.float32 and dtype != jnp.float32:
        # bfloat16 compute over float32 master weights: the vocabulary projection is the
        # largest matmul of a small model, and a float32 one runs at a fraction of the
        # tensor cores' bfloat16 rate.
        table = table.astype(dtype)
    if table.dtype != jnp.float32:
        # (A 16-bit serving copy is never promoted: a 256K x 2048 table in float32 would
        # cost 2 GB per decode step.)
        return jnp.einsum("BTD,VD->BTV", x.astype(table.dtype), table,
                          preferred_element_type=jnp.float32)  # [B, T, V]
    return jnp.einsum("BTD,VD->BTV", x.astype(jnp.float32), table)  # [B, T, V]


class Linear(nnx.Module):
    """x @ W (+ b) over the last axis; used by the encoders, whose layout is our own.

    `axes` are the logical names of the input and output features (sharding.py);
    the bias takes the output's.
    """

    def __init__(self, in_dim: int, out_dim: int, *, use_bias: bool, dtype: jnp.dtype, rngs: nnx.Rngs,
                 axes: tuple[str | None, str | None] = ("embed", "mlp")):
        self.dtype = dtype
        self.kernel = param(fan_in_init(0, 1)(rngs.params(), (in_dim, out_dim), jnp.float32), *axes)
        self.bias = param(jnp.zeros((out_dim,), jnp.float32), axes[1]) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.einsum("...I,IO->...O", x.astype(self.dtype), read_weight(self.kernel, self.dtype))
        if self.bias is not None:
            y = y + jnp.reshape(self.bias[...].astype(self.dtype), (1,) * (y.ndim - 1) + (-1,))
        return y


class GeGLU(nnx.Module):
    """Gated MLP: down(gelu_tanh(x @ gate) * (x @ up)), Gemma's feed-forward."""

    def __init__(self, width: int, mlp_dim: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.gate = param(fan_in_init(0, 1)(rngs.params(), (width, mlp_dim), jnp.float32), "embed", "mlp")
        self.up = param(fan_in_init(0, 1)(rngs.params(), (width, mlp_dim), jnp.float32), "embed", "mlp")
        self.down = param(fan_in_init(0, 1)(rngs.params(), (mlp_dim, width), jnp.float32), "mlp", "embed")

    def __call__(self, x: jax.Array) -> jax.Array:
        """x[..., D] -> [..., D]"""
        lead = x.shape[:-1]
        # The tokens on one axis M: over (B, T) the weights' gradients contract two axes, and
        # XLA's CPU backend then writes the gelu's gradient transposed, 5-7 times the layer's
        # time (benchmarks/mlp_layout.py). The products and sums are the same ones.
        x = x.astype(self.dtype).reshape(-1, x.shape[-1])
        gate = jnp.einsum("MD,DF->MF", x, read_weight(self.gate, self.dtype))
        up = jnp.einsum("MD,DF->MF", x, read_weight(self.up, self.dtype))
        hidden = jax.nn.gelu(gate, approximate=True) * up  # [M, F]
        return jnp.einsum("MF,FD->MD", hidden, read_weight(self.down, self.dtype)).reshape(*lead, -1)


def apply_rope(x: jax.Array, *, positions: jax.Array, base: float) -> jax.Array:
    """Rotary position embedding of x[B, T, N, H] at integer positions[B, T].

    The head is split into halves (x1, x2) and rotated as
    [x1 cos - x2 sin, x2 cos + x1 sin] with frequencies base^(-2i/H), the convention
    of Gemma and its HF port, so checkpoint q/k weights need no permutation.
    Angles are float32: bfloat16 cannot represent positions above 256 exactly.
    """
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
    half = head_dim // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / head_dim)  # [H/2]
    angles = positions.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]  # [B, T, H/2]
    sin = jnp.sin(angles)[:, :, None, :]  # [B, T, 1, H/2]
    cos = jnp.cos(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # [B, T, N, H/2] each
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class SoftTokens:
    """An encoder's output: tokens [B, slots, n, D] in decoder width, valid bool[B, slots, n].

    A slot is one image, video frame or audio clip; invalid tokens (padding slots, the
    unused tail of a short clip) are skipped when soft tokens fill their placeholders.
    """

    tokens: jax.Array
    valid: jax.Array


jax.tree_util.register_dataclass(SoftTokens)
