"""The vision encoder: a ViT over variable-resolution patch grids, pooled into soft tokens.

patches -> linear patch embedding + learned row and column position embeddings
-> `depth` bidirectional pre-norm blocks over the image's real patches
-> learned queries attend over the real patches (attention pooling; images and video
   frames have their own query tables and share the attention weights)
-> RMSNorm + linear to the decoder width.

Variable resolution means a variable number of real patches and any grid shape up to
`max_grid` rows and columns; padding patches are masked out everywhere, so they never
change a real image's soft tokens. Video frames are images folded into the batch.

Dimension letters: B batch, I image slots, P patches, C patch pixels (patch_dim),
D encoder width, E decoder width, Q soft tokens (queries), N heads, H head dimension.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax.config import VisionConfig
from gemini_jax.model.attention import attention_mask, dot_product_attention
from gemini_jax.model.layers import Linear, RMSNorm, SoftTokens, fan_in_init
from gemini_jax.model.transformer import Block


class AttentionPool(nnx.Module):
    """Learned queries[Q, D] attend over features[B, P, D] at the real patches only."""

    def __init__(self, *, width: int, num_heads: int, head_dim: int, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        key = rngs.params
        shape = (width, num_heads, head_dim)
        self.q = nnx.Param(fan_in_init(0, (1, 2))(key(), shape, jnp.float32))
        self.k = nnx.Param(fan_in_init(0, (1, 2))(key(), shape, jnp.float32))
        self.v = nnx.Param(fan_in_init(0, (1, 2))(key(), shape, jnp.float32))
        self.o = nnx.Param(fan_in_init((0, 1), 2)(key(), (num_heads, head_dim, width), jnp.float32))

    def __call__(self, queries: jax.Array, features: jax.Array, mask: jax.Array) -> jax.Array:
        dtype = self.dtype
        batch = features.shape[0]
        features = features.astype(dtype)
        q = jnp.einsum("QD,DNH->QNH", queries.astype(dtype), self.q[...].astype(dtype))
        q = jnp.broadcast_to(q[None], (batch, *q.shape))  # [B, Q, N, H]
        k = jnp.einsum("BPD,DNH->BPNH", features, self.k[...].astype(dtype))
        v = jnp.einsum("BPD,DNH->BPNH", features, self.v[...].astype(dtype))
        num_queries = queries.shape[0]
        pool_mask = jnp.broadcast_to(mask[:, None, :], (batch, num_queries, mask.shape[1]))  # [B, Q, P]
        pooled = dot_product_attention(q, k, v, mask=pool_mask)  # [B, Q, N, H]
        return jnp.einsum("BQNH,NHD->BQD", pooled, self.o[...].astype(dtype))


class VisionEncoder(nnx.Module):
    """ViT + attention pooling; `encode_images` and `encode_frames` give SoftTokens."""

    def __init__(
        self, config: VisionConfig, *, out_width: int, norm_eps: float, dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        self.config = config
        width = config.width
        self.patch_embed = Linear(config.patch_dim, width, use_bias=True, dtype=dtype, rngs=rngs)
        table_init = nnx.initializers.normal(stddev=0.02)
        self.row_embed = nnx.Param(table_init(rngs.params(), (config.max_grid, width), jnp.float32))
        self.col_embed = nnx.Param(table_init(rngs.params(), (config.max_grid, width), jnp.float32))
        self.blocks = nnx.List([
            Block(
                width=width, num_heads=config.num_heads, num_kv_heads=config.num_heads,
                head_dim=config.head_dim, mlp_dim=config.mlp_dim, rope_base=None,
                norm_eps=norm_eps, dtype=dtype, rngs=rngs,
            )
            for _ in range(config.depth)
        ])
        self.encoder_norm = RMSNorm(width, eps=norm_eps)
        query_init = nnx.initializers.normal(stddev=1.0)
        self.image_queries = nnx.Param(
            query_init(rngs.params(), (config.image_soft_tokens, width), jnp.float32)
        )
        self.frame_queries = nnx.Param(
            query_init(rngs.params(), (config.frame_soft_tokens, width), jnp.float32)
        )
        self.pool = AttentionPool(
            width=width, num_heads=config.num_heads, head_dim=config.head_dim, dtype=dtype, rngs=rngs
        )
        self.out_norm = RMSNorm(width, eps=norm_eps)
        self.out_proj = Linear(width, out_width, use_bias=False, dtype=dtype, rngs=rngs)

    def encode_images(self, patches: jax.Array, coords: jax.Array, patch_mask: jax.Array) -> SoftTokens:
        """patches[B, I, P, C], coords int32[B, I, P, 2], patch_mask bool[B, I, P] -> [B, I, Q, E]."""
        return self._encode(patches, coords, patch_mask, queries=self.image_queries[...])

    def encode_frames(self, patches: jax.Array, coords: jax.Array, patch_mask: jax.Array) -> SoftTokens:
        """As `encode_images`, for video frames (their own, usually fewer, soft tokens)."""
        return self._encode(patches, coords, patch_mask, queries=self.frame_queries[...])

    def _encode(self, patches, coords, patch_mask, *, queries: jax.Array) -> SoftTokens:
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

        x = self.patch_embed(patches)  # [BI, P, D]
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

        pooled = self.pool(queries, x, mask)  # [BI, Q, D]
        tokens = self.out_proj(self.out_norm(pooled))  # [BI, Q, E]
        num_queries = queries.shape[0]
        tokens = tokens.reshape(batch, slots, num_queries, -1)  # [B, I, Q, E]
        slot_valid = jnp.any(patch_mask, axis=-1)  # [B, I]
        valid = jnp.broadcast_to(slot_valid[:, :, None], (batch, slots, num_queries))
        return SoftTokens(tokens=tokens, valid=valid)
