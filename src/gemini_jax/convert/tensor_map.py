"""The tensor map: each Hugging Face tensor, the parameter it becomes, and the two reshapes
between them (D width, F MLP width, V vocabulary, N query heads, K key/value heads, H head
dimension; convert/gemma.py tabulates the Gemma-1 decoder's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import nnx

from gemini_jax.config import ModelConfig
from gemini_jax.model import Gemini


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One HF tensor and the parameter it becomes: `to_ours(hf)` and `to_hf(ours)` are inverses."""

    hf_name: str
    path: tuple[str | int, ...]  # in the pure dict of `nnx.state(model, nnx.Param)`
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def same(x: np.ndarray) -> np.ndarray:
    return x


def transposed(x: np.ndarray) -> np.ndarray:
    return x.T


# (to_ours, to_hf) for a tensor stored alike in both, and for a matrix stored transposed.
AS_IS = (same, same)
TRANSPOSED = (transposed, transposed)


def heads_in(heads: int, head_dim: int, width: int) -> tuple[Callable, Callable]:
    """HF [heads*H, D] (rows head-major, as `view(..., heads, H)` splits them) <-> ours [D, heads, H]."""
    return (
        lambda w: w.reshape(heads, head_dim, width).transpose(2, 0, 1),
        lambda p: p.transpose(1, 2, 0).reshape(heads * head_dim, width),
    )


def heads_out(heads: int, head_dim: int, width: int) -> tuple[Callable, Callable]:
    """HF o_proj [D, N*H] <-> ours [N, H, D]."""
    return (
        lambda w: w.reshape(width, heads, head_dim).transpose(1, 2, 0),
        lambda p: p.transpose(2, 0, 1).reshape(width, heads * head_dim),
    )


def decoder_tensors(config: ModelConfig, *, prefix: str = "model.") -> list[TensorSpec]:
    """Every tensor of a GemmaForCausalLM with `config`'s shapes, in checkpoint order.
    `prefix` is where the Gemma model sits (PaliGemma's is "language_model.model.")."""
    D, F, V = config.width, config.mlp_dim, config.vocab_size
    N, K, H = config.num_heads, config.num_kv_heads, config.head_dim
    tensors = [TensorSpec(prefix + "embed_tokens.weight", ("embedder", "table"), (V, D), *AS_IS)]
    for i in range(config.depth):
        hf, ours = f"{prefix}layers.{i}.", ("decoder", "blocks", i)
        tensors += [
            TensorSpec(hf + "input_layernorm.weight", (*ours, "pre_attn_norm", "scale"), (D,), *AS_IS),
            TensorSpec(hf + "self_attn.q_proj.weight", (*ours, "attn", "q"), (N * H, D), *heads_in(N, H, D)),
            TensorSpec(hf + "self_attn.k_proj.weight", (*ours, "attn", "k"), (K * H, D), *heads_in(K, H, D)),
            TensorSpec(hf + "self_attn.v_proj.weight", (*ours, "attn", "v"), (K * H, D), *heads_in(K, H, D)),
            TensorSpec(hf + "self_attn.o_proj.weight", (*ours, "attn", "o"), (D, N * H), *heads_out(N, H, D)),
            TensorSpec(hf + "post_attention_layernorm.weight", (*ours, "pre_mlp_norm", "scale"), (D,), *AS_IS),
            TensorSpec(hf + "mlp.gate_proj.weight", (*ours, "mlp", "gate"), (F, D), *TRANSPOSED),
            TensorSpec(hf + "mlp.up_proj.weight", (*ours, "mlp", "up"), (F, D), *TRANSPOSED),
            TensorSpec(hf + "mlp.down_proj.weight", (*ours, "mlp", "down"), (D, F), *TRANSPOSED),
        ]
    tensors.append(TensorSpec(prefix + "norm.weight", ("decoder", "final_norm", "scale"), (D,), *AS_IS))
    return tensors


def abstract_params(config: ModelConfig) -> dict[str, Any]:
    """The model's parameter tree as shapes (nothing allocated): the structure we must fill."""
    model = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def path_of(key_path: tuple) -> tuple[str | int, ...]:
    return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in key_path)

