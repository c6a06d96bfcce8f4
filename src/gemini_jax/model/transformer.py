"""The pre-norm Transformer block and the decoder stack (Gemma-1 layout).

Block: x + attn(norm(x)), then x + geglu(norm(x)). The vision encoder reuses the
block without RoPE (its positions are learned 2-D tables) under a bidirectional mask.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax.config import AttentionImpl, ModelConfig, RematPolicy
from gemini_jax.model.attention import Attention, KVCache, LayerKV
from gemini_jax.model.layers import GeGLU, RMSNorm
from gemini_jax.model.mask import SegmentMask
from gemini_jax.sharding import constrain


class Block(nnx.Module):
    """Pre-norm attention and GeGLU MLP, each with a residual connection."""

    def __init__(
        self, *, width: int, num_heads: int, num_kv_heads: int, head_dim: int, mlp_dim: int,
        rope_base: float | None, norm_eps: float, dtype: jnp.dtype, rngs: nnx.Rngs,
        attention_impl: AttentionImpl | str = AttentionImpl.AUTO, attention_block: int = 512,
    ):
        self.pre_attn_norm = RMSNorm(width, eps=norm_eps)
        self.attn = Attention(
            width=width, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
            rope_base=rope_base, dtype=dtype, rngs=rngs, implementation=attention_impl,
            block_size=attention_block,
        )
        self.pre_mlp_norm = RMSNorm(width, eps=norm_eps)
        self.mlp = GeGLU(width, mlp_dim, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | SegmentMask,
        positions: jax.Array | None = None,
        cache: LayerKV | None = None,
        cache_index: jax.Array | None = None,
    ) -> tuple[jax.Array, LayerKV]:
        attended, kv = self.attn(
            self.pre_attn_norm(x), mask=mask, positions=positions, cache=cache, cache_index=cache_index
        )
        x = x + attended.astype(x.dtype)  # [B, T, D]
        x = x + self.mlp(self.pre_mlp_norm(x)).astype(x.dtype)
        return x, kv


# ModelConfig.remat -> what jax.checkpoint may keep; FULL keeps nothing.
_REMAT_POLICIES = {
    RematPolicy.FULL: None,
    RematPolicy.DOTS: jax.checkpoint_policies.checkpoint_dots,
    RematPolicy.DOTS_NO_BATCH: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Decoder(nnx.Module):
    """The decoder stack: `depth` blocks with RoPE, then the final RMSNorm."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        self.blocks = nnx.List([
            Block(
                width=config.width, num_heads=config.num_heads, num_kv_heads=config.num_kv_heads,
                head_dim=config.head_dim, mlp_dim=config.mlp_dim, rope_base=config.rope_base,
                norm_eps=config.norm_eps, dtype=dtype, rngs=rngs, attention_impl=config.attention_impl,
                attention_block=config.attention_block,
            )
            for _ in range(config.depth)
        ])
        self.final_norm = RMSNorm(config.width, eps=config.norm_eps)

    def __call__(
        self,
        x: jax.Array,
        *,
        mask: jax.Array | SegmentMask,
        positions: jax.Array,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, tuple[LayerKV, ...]]:
        """x[B, T, D] -> (normed hidden [B, T, D], each layer's keys/values).

        Without a cache the keys/values are this chunk's ([B, T, K, H]); with one they
        are the updated cache layers, written at `cache.index`.
        """
        if self.config.scan_layers and cache is None and len(self.blocks) > 1:
            x, kvs = self._scanned(x, mask=mask, positions=positions)
            x = constrain(x, ("batch", "length", "act_embed"))
            return self.final_norm(x), kvs
        kvs = []
        rematted = None
        if self.config.remat != RematPolicy.NONE and cache is None:  # a decode step has nothing to recompute
            rematted = nnx.remat(
                lambda block, x: block(x, mask=mask, positions=positions), policy=_REMAT_POLICIES[self.config.remat]
            )
        for i, block in enumerate(self.blocks):
            # The residual stream at each block boundary: rows over (data, fsdp), whole width
            # on every tensor shard. A no-op unless the trainer set a multi-device mesh.
            x = constrain(x, ("batch", "length", "act_embed"))
            if rematted is not None:
                x, kv = rematted(block, x)
            else:
                x, kv = block(
                    x, mask=mask, positions=positions,
                    cache=None if cache is None else cache.layers[i],
                    cache_index=None if cache is None else cache.index,
                )
            kvs.append(kv)
        x = constrain(x, ("batch", "length", "act_embed"))
        return self.final_norm(x), tuple(kvs)

    def _scanned(self, x: jax.Array, *, mask: jax.Array | SegmentMask, positions: jax.Array
                 ) -> tuple[jax.Array, tuple[LayerKV, ...]]:
        """The blocks as one `lax.scan` over their parameters stacked along a new leading axis:
        XLA compiles one block instead of `depth`, whatever the depth. The parameters stay one
        module per block (checkpoints, sharding rules and quantization see no difference); the
        stacked copy exists inside the compiled step only."""
        graphdef, _ = nnx.split(self.blocks[0])
        stacked = jax.tree.map(lambda *layers: jnp.stack(layers), *(nnx.state(b) for b in self.blocks))

        # The mask and positions ride in the carry, unchanged, rather than being closed over:
        # differentiating a scan hoists whatever depends only on its constants out of the
        # loop, and blockwise attention's per-block masks, so hoisted, were computed for every
        # block pair at once and held through the step: memory quadratic in the length
        # (docs/post-training.md, "On an accelerator's compiler").
        def body(carry, state):
            x, mask, positions = carry
            x = constrain(x, ("batch", "length", "act_embed"))
            x, kv = nnx.merge(graphdef, state)(x, mask=mask, positions=positions)
            return (x, mask, positions), (kv.k, kv.v)

        if self.config.remat != RematPolicy.NONE:
            body = jax.checkpoint(body, policy=_REMAT_POLICIES[self.config.remat])
        (x, _, _), (k, v) = jax.lax.scan(body, (x, mask, positions), stacked)  # k, v: [depth, B, T, K, H]
        return x, tuple(LayerKV(k=k[i], v=v[i]) for i in range(len(self.blocks)))
