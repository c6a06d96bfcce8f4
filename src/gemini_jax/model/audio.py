"""The audio encoder, USM-style: log-mel -> conv subsampling -> Conformer -> pooled soft tokens.

mels [M frames, num_mels] -> two stride-2 convolutions over time, GELU after each
(M -> ceil(M/2) -> ceil(M/4)) -> linear to width
-> `depth` Conformer blocks (Gulati et al. 2020: half FFN, self-attention, convolution
module, half FFN, norm) -> average `pooling` frames into one soft token
-> RMSNorm + linear to the decoder width.

A clip of n samples has `AudioConfig.num_mel_frames(n)` real frames and yields
ceil(frames / (subsampling * pooling)) = `AudioConfig.num_soft_tokens(n)` valid tokens.
Padding frames never reach a real frame: they are zeroed before every convolution
(the zeros then match the convolutions' own padding) and masked out of attention and
pooling, so a clip gives the same tokens however much padding follows it.

Dimension letters: B clips (batch x clip slots), M frames, F mel bins, C channels,
D encoder width, E decoder width, G frames per pooled token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax.config import AudioConfig
from gemini_jax.model.attention import Attention
from gemini_jax.model.layers import Linear, RMSNorm, SoftTokens, fan_in_init, param
from gemini_jax.model.mask import attention_mask


def _zero_padding(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x[B, M, ...] with the frames where mask[B, M] is False set to 0."""
    return x * mask.reshape(mask.shape + (1,) * (x.ndim - 2)).astype(x.dtype)


class ConvSubsampling(nnx.Module):
    """Two stride-2 convolutions over time (kernel 3, the mel bins as input channels), then a
    linear map to the width. One-dimensional, as in Whisper's front end: on CPUs a small
    fraction of the cost of a 2-D (time x mel) stack with as many channels."""

    def __init__(self, *, num_mels: int, width: int, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        channels = width
        self.conv1 = param(fan_in_init((0, 1), 2)(rngs.params(), (3, num_mels, channels), jnp.float32),
                           "conv", "mels", "conv")
        self.conv1_bias = param(jnp.zeros((channels,), jnp.float32), "norm")
        self.conv2 = param(fan_in_init((0, 1), 2)(rngs.params(), (3, channels, channels), jnp.float32),
                           "conv", "conv", "conv")
        self.conv2_bias = param(jnp.zeros((channels,), jnp.float32), "norm")
        self.proj = Linear(channels, width, use_bias=True, dtype=dtype, rngs=rngs, axes=("conv", "embed"))

    def _conv(self, x: jax.Array, kernel: nnx.Param, bias: nnx.Param) -> jax.Array:
        # Kernel 3, stride 2, one frame of zero padding on each side (fixed, not 'SAME',
        # whose split depends on the parity of the length and would shift a clip's frames
        # when padding is added after it): output t reads input frames 2t-1, 2t, 2t+1, and
        # there are ceil(M / 2) outputs. Written as one matmul over the three stacked frames,
        # which XLA runs several times faster on CPUs than a strided convolution.
        frames = x.shape[1]
        out = -(-frames // 2)
        padded = jnp.pad(x, ((0, 0), (1, 2 * out + 1 - frames), (0, 0)))  # [B, 2*out + 2, F]
        taps = [padded[:, i : i + 2 * out : 2] for i in range(3)]  # 3 x [B, out, F]
        stacked = jnp.concatenate(taps, axis=-1)  # [B, out, 3F]
        weight = kernel[...].astype(self.dtype).reshape(-1, kernel.shape[-1])  # [3F, C]
        y = jnp.einsum("BMK,KC->BMC", stacked, weight)  # [B, ceil(M/2), C]
        return jax.nn.gelu(y + bias[...].astype(self.dtype)[None, None, :])

    def __call__(self, mels: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """mels[B, M, F], mask bool[B, M] -> (x [B, ceil(M/4), D], mask bool[B, ceil(M/4)])."""
        x = _zero_padding(mels.astype(self.dtype), mask)  # [B, M, F]
        x = self._conv(x, self.conv1, self.conv1_bias)
        mask = mask[:, ::2]  # a prefix mask: frame t is real iff input frame 2t was
        x = _zero_padding(x, mask)
        x = self._conv(x, self.conv2, self.conv2_bias)
        mask = mask[:, ::2]
        return self.proj(x), mask  # [B, M', D]


class FeedForward(nnx.Module):
    """Conformer's macaron feed-forward: norm -> linear -> swish -> linear."""

    def __init__(self, *, width: int, mlp_dim: int, norm_eps: float, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.norm = RMSNorm(width, eps=norm_eps)
        self.up = Linear(width, mlp_dim, use_bias=True, dtype=dtype, rngs=rngs)
        self.down = Linear(mlp_dim, width, use_bias=True, dtype=dtype, rngs=rngs, axes=("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.silu(self.up(self.norm(x))))


class ConvModule(nnx.Module):
    """Norm -> pointwise conv + GLU -> depthwise conv over time -> norm -> swish -> pointwise."""

    def __init__(self, *, width: int, kernel_size: int, norm_eps: float, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.kernel_size = kernel_size
        self.norm = RMSNorm(width, eps=norm_eps)
        self.pointwise_in = Linear(width, 2 * width, use_bias=True, dtype=dtype, rngs=rngs, axes=("embed", "conv"))
        self.depthwise = param(fan_in_init(0, 2)(rngs.params(), (kernel_size, 1, width), jnp.float32),
                               "conv", None, "conv")
        self.depthwise_bias = param(jnp.zeros((width,), jnp.float32), "norm")
        self.conv_norm = RMSNorm(width, eps=norm_eps)
        self.pointwise_out = Linear(width, width, use_bias=True, dtype=dtype, rngs=rngs, axes=("conv", "embed"))

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        value, gate = jnp.split(self.pointwise_in(self.norm(x)), 2, axis=-1)  # [B, M, D] each
        y = _zero_padding(value * jax.nn.sigmoid(gate), mask)
        # Depthwise convolution over time as a sum of shifted, scaled copies: exact, and
        # far faster (forward and backward) on CPUs than a grouped convolution.
        left = (self.kernel_size - 1) // 2
        frames = y.shape[1]
        padded = jnp.pad(y, ((0, 0), (left, self.kernel_size - 1 - left), (0, 0)))  # [B, M + k - 1, D]
        kernel = self.depthwise[...].astype(self.dtype)[:, 0, :]  # [k, D]
        y = sum(padded[:, i : i + frames] * kernel[i][None, None, :] for i in range(self.kernel_size))  # [B, M, D]
        y = y + self.depthwise_bias[...].astype(self.dtype)[None, None, :]
        return self.pointwise_out(jax.nn.silu(self.conv_norm(y)))


class ConformerBlock(nnx.Module):
    """x + FFN/2, + self-attention (RoPE, real frames only), + conv module, + FFN/2, norm."""

    def __init__(self, config: AudioConfig, *, rope_base: float, norm_eps: float, dtype: jnp.dtype, rngs: nnx.Rngs):
        width = config.width
        self.ffn_in = FeedForward(width=width, mlp_dim=config.mlp_dim, norm_eps=norm_eps, dtype=dtype, rngs=rngs)
        self.attn_norm = RMSNorm(width, eps=norm_eps)
        self.attn = Attention(
            width=width, num_heads=config.num_heads, num_kv_heads=config.num_heads,
            head_dim=config.head_dim, rope_base=rope_base, dtype=dtype, rngs=rngs,
        )
        self.conv = ConvModule(
            width=width, kernel_size=config.conv_kernel, norm_eps=norm_eps, dtype=dtype, rngs=rngs
        )
        self.ffn_out = FeedForward(width=width, mlp_dim=config.mlp_dim, norm_eps=norm_eps, dtype=dtype, rngs=rngs)
        self.out_norm = RMSNorm(width, eps=norm_eps)

    def __call__(self, x: jax.Array, *, mask: jax.Array, attn_mask: jax.Array, positions: jax.Array) -> jax.Array:
        x = x + 0.5 * self.ffn_in(x)
        attended, _ = self.attn(self.attn_norm(x), mask=attn_mask, positions=positions)
        x = x + attended
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ffn_out(x)
        return self.out_norm(x)


class AudioEncoder(nnx.Module):
    """Log-mel clips -> SoftTokens at one token per `pooling` subsampled frames."""

    def __init__(
        self, config: AudioConfig, *, out_width: int, rope_base: float, norm_eps: float,
        dtype: jnp.dtype, rngs: nnx.Rngs,
    ):
        self.config = config
        self.subsample = ConvSubsampling(num_mels=config.num_mels, width=config.width, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([
            ConformerBlock(config, rope_base=rope_base, norm_eps=norm_eps, dtype=dtype, rngs=rngs)
            for _ in range(config.depth)
        ])
        self.out_norm = RMSNorm(config.width, eps=norm_eps)
        self.out_proj = Linear(config.width, out_width, use_bias=False, dtype=dtype, rngs=rngs, axes=("embed", "embed"))

    def __call__(self, mels: jax.Array, mel_mask: jax.Array) -> SoftTokens:
        """mels[B, C, M, F], mel_mask bool[B, C, M] (a prefix per clip) -> [B, C, ceil(M/8), E]."""
        batch, clips, frames, num_mels = mels.shape
        if num_mels != self.config.num_mels:
            raise ValueError(f"audio_mels has {num_mels} mel bins, but audio.num_mels is {self.config.num_mels}")
        x, mask = self.subsample(
            mels.reshape(batch * clips, frames, num_mels), mel_mask.reshape(batch * clips, frames)
        )  # [BC, M', D], [BC, M']

        real = mask.astype(jnp.int32)
        attn_mask = attention_mask(segment_ids=real, media_spans=real)  # [BC, M', M']
        positions = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32)[None, :], mask.shape)
        for block in self.blocks:
            x = block(x, mask=mask, attn_mask=attn_mask, positions=positions)

        tokens, valid = self._pool(x, mask)  # [BC, n, D], [BC, n]
        tokens = self.out_proj(self.out_norm(tokens))  # [BC, n, E]
        num_tokens = tokens.shape[1]
        return SoftTokens(
            tokens=tokens.reshape(batch, clips, num_tokens, -1),
            valid=valid.reshape(batch, clips, num_tokens),
        )

    def _pool(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Mean of each group of `pooling` frames, over its real frames only."""
        group = self.config.pooling
        batch, frames, width = x.shape
        num_tokens = -(-frames // group)
        pad = num_tokens * group - frames
        x = jnp.pad(_zero_padding(x, mask), ((0, 0), (0, pad), (0, 0)))
        mask = jnp.pad(mask, ((0, 0), (0, pad)))
        total = jnp.sum(x.reshape(batch, num_tokens, group, width), axis=2)  # [B, n, D]
        count = jnp.sum(mask.reshape(batch, num_tokens, group), axis=2)  # [B, n]
        mean = total / jnp.maximum(count, 1).astype(total.dtype)[:, :, None]
        return mean, count > 0
