"""The vision encoder: a ViT over variable-resolution patch grids, turned into soft tokens.

patches -> (optional stride-2 convolutions inside each patch) -> linear patch embedding
-> + learned row and column position embeddings (or one learned table over grid cells)
-> `depth` bidirectional pre-norm blocks over the image's real patches (our RMSNorm/GeGLU
   blocks, or SigLIP's LayerNorm/GELU blocks with biases, for imported towers)
-> pooling="attention": learned queries attend over the real patches (images and video
   frames have their own query tables and share the attention weights), then RMSNorm;
   pooling="none": one soft token per real patch; frame_pooling="grid": each frame query
   attends only to the patches under its own cell of a square grid laid over the frame
-> linear to the decoder width.

Variable resolution means a variable number of real patches and any grid shape up to
`max_grid` rows and columns; padding patches are masked out everywhere, so they never
change a real image's soft tokens. Video frames are images folded into the batch.

Dimension letters: B batch, I image slots, P patches, C patch pixels (patch_dim),
D encoder width, E decoder width, Q soft tokens (queries), N heads, H head dimension.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax.config import FramePooling, Pooling, PositionEmbedding, VisionBlock, VisionConfig
from gemini_jax.model.attention import dot_product_attention
from gemini_jax.model.layers import (
    LayerNorm,
    Linear,
    RMSNorm,
    SoftTokens,
    fan_in_init,
    param,
)
from gemini_jax.model.mask import attention_mask
from gemini_jax.model.quant import read_weight
from gemini_jax.model.transformer import Block


def _names(*names: str) -> dict[str, object]:
    """Variable metadata for Flax's own layers: logical axis names, as `layers.param` stores them."""
    return {"out_sharding": names, "eager_sharding": False}


class AttentionPool(nnx.Module):
    """Learned queries[Q, D] attend over features[B, P, D] at the real patches only."""

    def __init__(self, *, width: int, num_heads: int, head_dim: int, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        key = rngs.params
        shape = (width, num_heads, head_dim)
        names = ("embed", "heads", "head_dim")
        self.q = param(fan_in_init(0, (1, 2))(key(), shape, jnp.float32), *names)
        self.k = param(fan_in_init(0, (1, 2))(key(), shape, jnp.float32), *names)
        self.v = param(fan_in_init(0, (1, 2))(key(), shape, jnp.float32), *names)
        self.o = param(fan_in_init((0, 1), 2)(key(), (num_heads, head_dim, width), jnp.float32),
                       "heads", "head_dim", "embed")

    def __call__(self, queries: jax.Array, features: jax.Array, mask: jax.Array) -> jax.Array:
        """mask: bool[B, P] (every query sees the same patches) or [B, Q, P] (each its own)."""
        dtype = self.dtype
        batch = features.shape[0]
        features = features.astype(dtype)
        q = jnp.einsum("QD,DNH->QNH", queries.astype(dtype), read_weight(self.q, dtype))
        q = jnp.broadcast_to(q[None], (batch, *q.shape))  # [B, Q, N, H]
        k = jnp.einsum("BPD,DNH->BPNH", features, read_weight(self.k, dtype))
        v = jnp.einsum("BPD,DNH->BPNH", features, read_weight(self.v, dtype))
        num_queries = queries.shape[0]
        if mask.ndim == 2:
            mask = mask[:, None, :]
        pool_mask = jnp.broadcast_to(mask, (batch, num_queries, mask.shape[-1]))  # [B, Q, P]
        pooled = dot_product_attention(q, k, v, mask=pool_mask)  # [B, Q, N, H]
        return jnp.einsum("BQNH,NHD->BQD", pooled, read_weight(self.o, dtype))


class SiglipBlock(nnx.Module):
    """SigLIP's encoder layer: x + o(attn(q, k, v of LN(x))), then x + fc2(gelu_tanh(fc1(LN(x)))).

    Every projection has a bias, which our Attention does not carry, so q, k, v and o are
    plain Linear maps [D, D] whose output columns are the heads side by side (the
    checkpoints' layout); head dimension = D / N.
    """

    def __init__(self, *, width: int, num_heads: int, mlp_dim: int, norm_eps: float, dtype: jnp.dtype,
                 rngs: nnx.Rngs):
        self.num_heads = num_heads

        def linear(i: int, o: int, axes: tuple[str, str]) -> Linear:
            return Linear(i, o, use_bias=True, dtype=dtype, rngs=rngs, axes=axes)

        self.pre_attn_norm = LayerNorm(width, eps=norm_eps)
        # Output columns of q, k, v are the heads side by side: split like heads.
        self.q, self.k, self.v = (linear(width, width, ("embed", "heads")) for _ in range(3))
        self.o = linear(width, width, ("heads", "embed"))
        self.pre_mlp_norm = LayerNorm(width, eps=norm_eps)
        self.fc1 = linear(width, mlp_dim, ("embed", "mlp"))
        self.fc2 = linear(mlp_dim, width, ("mlp", "embed"))

    def __call__(self, x: jax.Array, *, mask: jax.Array) -> tuple[jax.Array, None]:
        """x[B, P, D] under mask bool[B, P, P]; returns (x, None) like Block's (x, keys/values)."""
        batch, length, width = x.shape
        h = self.pre_attn_norm(x)

        def heads(y: jax.Array) -> jax.Array:  # [B, P, D] -> [B, P, N, H]
            return y.reshape(batch, length, self.num_heads, width // self.num_heads)

        attended = dot_product_attention(heads(self.q(h)), heads(self.k(h)), heads(self.v(h)), mask=mask)
        x = x + self.o(attended.reshape(batch, length, width)).astype(x.dtype)
        h = jax.nn.gelu(self.fc1(self.pre_mlp_norm(x)), approximate=True)  # [B, P, F]
        return x + self.fc2(h).astype(x.dtype), None


class PatchStem(nnx.Module):
    """Stride-2 3x3 convolutions (GELU after each) inside every patch, then a linear map of
    the flattened result: patches[N, C] -> [N, D]. Padding stays inside the patch, so a
    patch's embedding never depends on its neighbours (patches may come in any order).
    With `config.stem_pixels` a linear map of the raw patch is added to it."""

    def __init__(self, config: VisionConfig, stem_channels: tuple[int, ...], *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.patch_size = config.patch_size
        channels = (3, *stem_channels)
        self.convs = nnx.List([
            nnx.Conv(c_in, c_out, kernel_size=(3, 3), strides=(2, 2), padding="SAME", dtype=dtype, rngs=rngs,
                     kernel_metadata=_names("conv", "conv", "conv", "conv"), bias_metadata=_names("conv"))
            for c_in, c_out in zip(channels[:-1], channels[1:])
        ])
        side = config.patch_size >> len(stem_channels)
        self.proj = Linear(side * side * channels[-1], config.width, use_bias=True, dtype=dtype, rngs=rngs,
                           axes=("patch", "embed"))
        self.pixels = (Linear(config.patch_dim, config.width, use_bias=False, dtype=dtype, rngs=rngs,
                              axes=("patch", "embed")) if config.stem_pixels else None)

    def __call__(self, patches: jax.Array) -> jax.Array:
        n = patches.shape[0]
        x = patches.reshape(n, self.patch_size, self.patch_size, 3)  # batch.py: (row, column, channel)
        for conv in self.convs:
            x = jax.nn.gelu(_conv3x3_stride2(x, conv.kernel[...], conv.bias[...]))
        embedded = self.proj(x.reshape(n, -1))
        return embedded if self.pixels is None else embedded + self.pixels(patches)


def _conv3x3_stride2(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """x[N, S, S, C] (S even) -> [N, S/2, S/2, O]: the 'SAME' 3x3 stride-2 convolution that
    nnx.Conv computes with these parameters (no padding before, one row and column after),
    written as one matmul over the nine strided views, which XLA runs about twice as fast
    as its convolution on CPUs for these few channels (the audio front end does the same)."""
    size = x.shape[1]
    padded = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    views = [padded[:, i : i + size : 2, j : j + size : 2] for i in range(3) for j in range(3)]
    stacked = jnp.concatenate(views, axis=-1)  # [N, S/2, S/2, 9C], taps (row, column, channel)
    weight = kernel.astype(x.dtype).reshape(-1, kernel.shape[-1])  # HWIO [3, 3, C, O] -> [9C, O]
    return stacked @ weight + bias.astype(x.dtype)[None, None, None, :]


def _median_colour(patches: jax.Array, mask: jax.Array) -> jax.Array:
    """patches[N, P, p*p*3], mask bool[N, P] -> [N, p*p*3]: each image's median colour over its
    real pixels, per channel, repeated in a patch's layout (0 for an image without real patches)."""
    n, num_patches, patch_dim = patches.shape
    pixels = patches.astype(jnp.float32).reshape(n, num_patches, patch_dim // 3, 3)
    pixels = jnp.where(mask[:, :, None, None], pixels, jnp.nan).reshape(n, -1, 3)
    median = jnp.nan_to_num(jnp.nanmedian(pixels, axis=1))  # [N, 3]
    return jnp.tile(median, patch_dim // 3).astype(patches.dtype)


def _patch_embedding(config: VisionConfig, stem_channels: tuple[int, ...], *, dtype: jnp.dtype,
                     rngs: nnx.Rngs) -> nnx.Module:
    """patches[N, C] -> [N, D]: a convolutional stem, or one linear map of the raw pixels."""
    if stem_channels:
        return PatchStem(config, stem_channels, dtype=dtype, rngs=rngs)
    return Linear(config.patch_dim, config.width, use_bias=True, dtype=dtype, rngs=rngs, axes=("patch", "embed"))


class VisionEncoder(nnx.Module):
    """ViT (+ attention pooling); `encode_images` and `encode_frames` give SoftTokens."""

    def __init__(
        self, config: VisionConfig, *, out_width: int, norm_eps: float, dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        self.config = config
        width = config.width
        self.patch_embed = _patch_embedding(config, config.stem_channels, dtype=dtype, rngs=rngs)
        if config.frame_stem_channels is not None:
            self.frame_patch_embed = _patch_embedding(config, config.frame_stem_channels, dtype=dtype, rngs=rngs)
        self.contrast_embed = (Linear(config.patch_dim, width, use_bias=False, dtype=dtype, rngs=rngs,
                                      axes=("patch", "embed")) if config.background_contrast else None)
        table_init = nnx.initializers.normal(stddev=0.02)
        if config.position_embedding == PositionEmbedding.LEARNED:
            cells = config.max_grid * config.max_grid
            self.pos_embed = param(table_init(rngs.params(), (cells, width), jnp.float32), "position", "embed")
        else:
            grid = (config.max_grid, width)
            self.row_embed = param(table_init(rngs.params(), grid, jnp.float32), "position", "embed")
            self.col_embed = param(table_init(rngs.params(), grid, jnp.float32), "position", "embed")
        norm_eps = norm_eps if config.norm_eps is None else config.norm_eps
        if config.block == VisionBlock.SIGLIP:
            self.blocks = nnx.List([
                SiglipBlock(width=width, num_heads=config.num_heads, mlp_dim=config.mlp_dim, norm_eps=norm_eps,
                            dtype=dtype, rngs=rngs)
                for _ in range(config.depth)
            ])
            self.encoder_norm = LayerNorm(width, eps=norm_eps)  # SigLIP's post_layernorm
        else:
            self.blocks = nnx.List([
                Block(
                    width=width, num_heads=config.num_heads, num_kv_heads=config.num_heads,
                    head_dim=config.head_dim, mlp_dim=config.mlp_dim, rope_base=None,
                    norm_eps=norm_eps, dtype=dtype, rngs=rngs,
                )
                for _ in range(config.depth)
            ])
            self.encoder_norm = RMSNorm(width, eps=norm_eps)
        if config.pooling == Pooling.ATTENTION:
            query_init = nnx.initializers.normal(stddev=1.0)
            self.image_queries = param(
                query_init(rngs.params(), (config.image_soft_tokens, width), jnp.float32), "queries", "embed"
            )
            self.frame_queries = param(
                query_init(rngs.params(), (config.frame_soft_tokens, width), jnp.float32), "queries", "embed"
            )
            self.pool = AttentionPool(
                width=width, num_heads=config.num_heads, head_dim=config.head_dim, dtype=dtype, rngs=rngs
            )
            self.out_norm = RMSNorm(width, eps=norm_eps)
        self.out_proj = Linear(width, out_width, use_bias=config.projector_bias, dtype=dtype, rngs=rngs,
                               axes=("embed", "embed"))

    def encode_images(self, patches: jax.Array, coords: jax.Array, patch_mask: jax.Array) -> SoftTokens:
        """patches[B, I, P, C], coords int32[B, I, P, 2], patch_mask bool[B, I, P] -> [B, I, Q, E]
        (Q = P without pooling)."""
        return self._encode(patches, coords, patch_mask, frames=False)

    def encode_frames(self, patches: jax.Array, coords: jax.Array, patch_mask: jax.Array) -> SoftTokens:
        """As `encode_images`, for video frames (their own, usually fewer, soft tokens)."""
        return self._encode(patches, coords, patch_mask, frames=True)

    def _encode(self, patches, coords, patch_mask, *, frames: bool) -> SoftTokens:
        batch, slots, num_patches, patch_dim = patches.shape
        if patch_dim != self.config.patch_dim:
            raise ValueError(
                f"patches have {patch_dim} values each, but vision.patch_size="
                f"{self.config.patch_size} needs {self.config.patch_dim} (patch_size^2 * 3)"
            )
        flat = batch * slots
        patches = patches.reshape(flat, num_patches, patch_dim)  # [BI, P, C]
        coords = coords.reshape(flat, num_patches, 2)
        mask = patch_mask.reshape(flat, num_patches)

        embed = self.frame_patch_embed if frames and self.config.frame_stem_channels is not None else self.patch_embed
        x = embed(patches.reshape(flat * num_patches, patch_dim)).reshape(flat, num_patches, -1)  # [BI, P, D]
        if self.contrast_embed is not None:
            x = x + self.contrast_embed(patches - _median_colour(patches, mask)[:, None, :])
        if self.config.position_embedding == PositionEmbedding.LEARNED:
            cells = coords[..., 0] * self.config.max_grid + coords[..., 1]  # [BI, P], row-major
            x = x + jnp.take(self.pos_embed[...], cells, axis=0, mode="clip").astype(x.dtype)
        else:
            rows = jnp.take(self.row_embed[...], coords[..., 0], axis=0, mode="clip")  # [BI, P, D]
            cols = jnp.take(self.col_embed[...], coords[..., 1], axis=0, mode="clip")
            x = x + (rows + cols).astype(x.dtype)

        # One segment and one media span over the real patches: fully bidirectional
        # among them, and padding patches are neither seen nor see anything.
        real = mask.astype(jnp.int32)
        patch_attn_mask = attention_mask(segment_ids=real, media_spans=real)  # [BI, P, P]
        for block in self.blocks:
            x, _ = block(x, mask=patch_attn_mask)
        x = self.encoder_norm(x)

        if self.config.pooling == Pooling.NONE:
            tokens = self.out_proj(x).reshape(batch, slots, num_patches, -1)  # [B, I, P, E]
            return SoftTokens(tokens=tokens, valid=patch_mask)
        queries = (self.frame_queries if frames else self.image_queries)[...]
        if frames and self.config.frame_pooling == FramePooling.GRID:
            mask = grid_cells(coords, mask, side=math.isqrt(self.config.frame_soft_tokens))  # [BI, Q, P]
        elif frames and self.config.frame_pooling == FramePooling.GRID_AND_FRAME:
            cells = grid_cells(coords, mask, side=math.isqrt(self.config.frame_soft_tokens - 1))
            mask = jnp.concatenate([cells, mask[:, None, :]], axis=1)  # [BI, Q, P]
        pooled = self.pool(queries, x, mask)  # [BI, Q, D]
        tokens = self.out_proj(self.out_norm(pooled))  # [BI, Q, E]
        num_queries = queries.shape[0]
        tokens = tokens.reshape(batch, slots, num_queries, -1)  # [B, I, Q, E]
        slot_valid = jnp.any(patch_mask, axis=-1)  # [B, I]
        valid = jnp.broadcast_to(slot_valid[:, :, None], (batch, slots, num_queries))
        return SoftTokens(tokens=tokens, valid=valid)


def grid_cells(coords: jax.Array, mask: jax.Array, *, side: int) -> jax.Array:
    """bool[BI, side * side, P]: which real patches lie under each cell of a side x side grid
    stretched over each image's own patch grid (cells in row-major order; a grid smaller than
    `side` leaves some cells empty)."""
    rows = jnp.max(jnp.where(mask, coords[..., 0], -1), axis=-1, keepdims=True) + 1  # [BI, 1]
    cols = jnp.max(jnp.where(mask, coords[..., 1], -1), axis=-1, keepdims=True) + 1
    cell_row = coords[..., 0] * side // jnp.maximum(rows, 1)  # [BI, P]
    cell_col = coords[..., 1] * side // jnp.maximum(cols, 1)
    cell = cell_row * side + cell_col
    return (cell[:, None, :] == jnp.arange(side * side)[None, :, None]) & mask[:, None, :]
