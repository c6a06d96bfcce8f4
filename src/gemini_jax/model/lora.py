"""LoRA (Hu et al. 2021, arXiv 2106.09685): low-rank adapters on the decoder's projections.

    lora = apply_lora(model, LoraConfig(rank=16, alpha=32.0), nnx.Rngs(0))   # starts equal to model
    plain = merge_lora(lora)                      # W + (alpha / rank) * A @ B: sample, quantize, export
    saved = adapter_state(lora)                   # just the adapters, for a small checkpoint

Each targeted weight W (an nnx.Param) is replaced by a `LoraWeight` module that holds W,
an A [inputs..., r] and a B [r, outputs...] (`nnx.LoRAParam`s, B zero at the start), and
reads as W + (alpha / r) * A @ B. The layers read every weight through `read_weight`
(model/quant.py), which asks the weight for `get_value()`, so the adapted weight is seen on
every path through the model (training, prefill, decode, scanned and rematerialised blocks)
without a change to the layers. This is the model's side of LoRA; training the adapters is
train/lora.py, and checkpoint.py loads a LoRA run merged. docs/training.md says why this is
ours rather than qwix's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax.config import ConfigError
from gemini_jax.model.attention import Attention
from gemini_jax.model.gemini import Gemini
from gemini_jax.model.layers import GeGLU, fan_in_init
from gemini_jax.model.quant import QuantizedWeight, read_weight

# The decoder weights LoRA can adapt: target name -> (the layer holding it, how many of its
# leading axes are inputs). The name is the layer's attribute; o [N, H, D] contracts two axes.
TARGETS: dict[str, tuple[type[nnx.Module], int]] = {
    "q": (Attention, 1),  # [D, N, H]
    "k": (Attention, 1),  # [D, K, H]
    "v": (Attention, 1),  # [D, K, H]
    "o": (Attention, 2),  # [N, H, D]
    "gate": (GeGLU, 1),  # [D, F]
    "up": (GeGLU, 1),  # [D, F]
    "down": (GeGLU, 1),  # [F, D]
}


class LoraError(ConfigError):
    """A LoRA setting, model or adapter state that does not fit."""


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Adapter rank, the scale numerator alpha (updates are scaled by alpha / rank) and the targets."""

    rank: int = 16
    alpha: float = 32.0
    targets: tuple[str, ...] = tuple(TARGETS)  # every attention and MLP projection of the decoder

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise LoraError(f"LoRA rank must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise LoraError(f"LoRA alpha must be a number > 0, got {self.alpha!r}")
        if isinstance(self.targets, str):
            raise LoraError(f"LoRA targets must be a tuple of names, got the string {self.targets!r}; "
                            f"accepted names: {', '.join(TARGETS)}")
        if not self.targets:
            raise LoraError(f"LoRA needs at least one target; accepted: {', '.join(TARGETS)}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise LoraError(f"unknown LoRA target(s) {', '.join(map(repr, unknown))}; "
                            f"accepted: {', '.join(TARGETS)} (attention q/k/v/o, MLP gate/up/down)")
        if len(set(self.targets)) != len(self.targets):
            raise LoraError(f"LoRA targets {self.targets} name a weight twice")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def as_json(self) -> dict[str, Any]:
        """Plain JSON, as a LoRA run's lora.json holds it."""
        return {"rank": self.rank, "alpha": float(self.alpha), "targets": list(self.targets)}

    @classmethod
    def from_json(cls, record: Any) -> LoraConfig:
        try:
            return cls(rank=record["rank"], alpha=record["alpha"], targets=tuple(record["targets"]))
        except (KeyError, TypeError) as e:
            raise LoraError(f"not a LoRA config (rank, alpha, targets): {record!r} ({e})") from None


class LoraWeight(nnx.Module):
    """A frozen weight `base` W plus a trainable low-rank update: reads as W + scale * A @ B.

    A [inputs..., r] starts LeCun-normal and B [r, outputs...] at zero, so the adapted model
    starts equal to its base. A and B carry the logical names of W's input and output axes
    (the rank axis is replicated), so a mesh shards them as it shards W.
    """

    def __init__(self, base: nnx.Param, *, input_axes: int, rank: int, scale: float, rngs: nnx.Rngs):
        shape = tuple(base.shape)
        names = base.get_metadata().get("out_sharding") or (None,) * len(shape)
        self.base = base
        self.scale = scale
        inputs = tuple(range(input_axes))
        a = fan_in_init(inputs, input_axes)(rngs.params(), shape[:input_axes] + (rank,), jnp.float32)
        self.lora_a = nnx.LoRAParam(a, out_sharding=(*names[:input_axes], None), eager_sharding=False)
        self.lora_b = nnx.LoRAParam(jnp.zeros((rank,) + shape[input_axes:], jnp.float32),
                                    out_sharding=(None, *names[input_axes:]), eager_sharding=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.base.shape)

    def delta(self) -> jax.Array:
        """scale * A @ B in float32, W's shape."""
        return self.scale * jnp.tensordot(self.lora_a[...], self.lora_b[...], axes=1)

    def get_value(self) -> jax.Array:
        # float32 whatever W is stored in (a bf16 or int4 frozen base): the layer casts the sum
        # to its compute dtype, and XLA fuses the add and the cast into one pass over W.
        return read_weight(self.base, jnp.float32) + self.delta()


def _targeted(model: nnx.Module, targets: tuple[str, ...]) -> list[tuple[str, nnx.Module, str]]:
    """(path, layer, attribute) of each targeted weight of the decoder, in graph order."""
    found = []
    for path, node in nnx.iter_graph(model):
        if not path or path[0] != "decoder":  # the encoders' blocks are not adapted
            continue
        for name in targets:
            layer_type, _ = TARGETS[name]
            if isinstance(node, layer_type):
                found.append((".".join(map(str, path)), node, name))
    return found


def apply_lora(model: Gemini, config: LoraConfig, rngs: nnx.Rngs) -> Gemini:
    """A copy of `model` with an adapter on each of its decoder's `config.targets` weights.

    The copy shares the base arrays with `model`, which is left as it was. Raises LoraError
    if a targeted weight already has an adapter, or if any targeted weight of any decoder
    block ends up without one.
    """
    model = nnx.clone(model)
    for path, layer, name in _targeted(model, config.targets):
        weight = getattr(layer, name)
        if isinstance(weight, LoraWeight):
            raise LoraError(f"{path}.{name} already has a LoRA adapter; merge_lora first to stack another")
        _, input_axes = TARGETS[name]
        setattr(layer, name, LoraWeight(weight, input_axes=input_axes, rank=config.rank, scale=config.scale,
                                        rngs=rngs))
    check_adapters(model, config)
    return model


def check_adapters(model: Gemini, config: LoraConfig) -> None:
    """Raises LoraError unless every targeted weight of every decoder block has its adapter
    (naming a target the decoder has no layer for, or each weight left without one)."""
    targeted = _targeted(model, config.targets)
    absent = [name for name in config.targets if not any(n == name for _, _, n in targeted)]
    if absent:
        raise LoraError(f"this model's decoder has no layer for LoRA target(s) {', '.join(map(repr, absent))}; "
                        f"accepted: {', '.join(TARGETS)}")
    missing = [f"{path}.{name}" for path, layer, name in targeted if not isinstance(getattr(layer, name), LoraWeight)]
    expected = model.config.depth * len(config.targets)
    adapted = sum(isinstance(node, LoraWeight) for _, node in nnx.iter_graph(model.decoder))
    if missing or adapted != expected:
        raise LoraError(f"{adapted} LoRA adapters for {model.config.depth} blocks x {len(config.targets)} targets "
                        f"({expected} expected); without one: {missing or 'none'}")


def lora_weights(model: nnx.Module) -> dict[str, LoraWeight]:
    """Every adapted weight of `model`, by its path ('decoder.blocks.0.attn.q')."""
    return {".".join(map(str, path)): node for path, node in nnx.iter_graph(model) if isinstance(node, LoraWeight)}


def merge_lora(model: Gemini) -> Gemini:
    """A plain copy of `model` (no adapters): each adapted weight becomes one nnx.Param holding
    W + scale * A @ B, stored in W's dtype (float32 if W was quantized), with W's logical axes.
    Sampling, serving, quantization and export read plain models."""
    model = nnx.clone(model)
    for path, layer in list(nnx.iter_graph(model)):
        if not isinstance(layer, nnx.Module):
            continue
        for name, weight in list(vars(layer).items()):
            if isinstance(weight, LoraWeight):
                base = weight.base.get_value()
                dtype = jnp.float32 if isinstance(base, QuantizedWeight) else base.dtype
                merged = weight.get_value().astype(dtype)
                names = weight.base.get_metadata().get("out_sharding")
                setattr(layer, name, nnx.Param(merged, out_sharding=names, eager_sharding=False))
    return model


def adapter_state(model: Gemini) -> dict[str, Any]:
    """The adapters alone, as a pure dict of arrays (what an adapter-only checkpoint holds)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.LoRAParam))


def load_adapter_state(model: Gemini, state: Mapping[str, Any]) -> None:
    """Writes `state` (from `adapter_state`) into `model`'s adapters, in place. Raises LoraError
    naming the first adapter that is missing, unexpected or of another shape."""
    current = nnx.state(model, nnx.LoRAParam)
    ours = {_path_key(p): v for p, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(current))[0]}
    theirs = {_path_key(p): v for p, v in jax.tree_util.tree_flatten_with_path(dict(state))[0]}
    for key in sorted(set(ours) | set(theirs)):
        if key not in theirs:
            raise LoraError(f"adapter state lacks {key}; this model's adapters: {len(ours)}")
        if key not in ours:
            raise LoraError(f"adapter state holds {key}, which this model has no adapter for "
                            f"(rank, targets or depth differ?)")
        if tuple(jnp.shape(theirs[key])) != tuple(jnp.shape(ours[key])):
            raise LoraError(f"adapter {key} has shape {tuple(jnp.shape(theirs[key]))}, "
                            f"this model's is {tuple(jnp.shape(ours[key]))} (another rank?)")
    nnx.replace_by_pure_dict(current, _with_model_keys(nnx.to_pure_dict(current), state))
    nnx.update(model, current)


def _path_key(path) -> str:
    return ".".join(str(getattr(k, "key", k)) for k in path)


def _with_model_keys(like: Mapping, state: Mapping) -> dict:
    """`state` re-keyed like `like`: a checkpoint may store the blocks' integer keys as strings."""
    out = {}
    for key, value in like.items():
        given = state[key] if key in state else state[str(key)]
        out[key] = _with_model_keys(value, given) if isinstance(value, Mapping) else given
    return out


def freeze_base(model: Gemini, dtype: jnp.dtype = jnp.bfloat16) -> Gemini:
    """`model` (in place, and returned) with its frozen matrices (every nnx.Param of two or more
    axes that is not an adapter) stored in `dtype`: a LoRA run never updates them, so float32
    master copies buy nothing and cost twice the memory. Norm scales and biases stay float32
    (tiny, and 1 + w in bfloat16 would round small w away)."""
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Param) and not isinstance(node, nnx.LoRAParam):
            value = node.get_value()
            if not isinstance(value, QuantizedWeight) and len(value.shape) >= 2:
                node.set_value(value.astype(dtype) if isinstance(value, jax.Array)
                               else jax.ShapeDtypeStruct(value.shape, dtype))
    return model
