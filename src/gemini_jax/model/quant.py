"""Weight-only integer quantization: group-wise symmetric scales, dequantized inside the step.

    quantize_model(model, group_size=32, bits=4)   # in place: dense weights -> QuantizedWeight
    w = read_weight(module.q, dtype)               # what every layer does with a weight

A weight W is cut into groups of `group_size` consecutive entries along one of its input
(contraction) axes; each group g keeps one scale s_g and codes c = clip(round(W / s_g), -q_max,
q_max) (q_max = 7 for 4 bits). The scale is r * max|W_g| / q_max for the clipping ratio r in
CLIP_RATIOS that reconstructs the group with the least squared error: r = 1 never clips
(|W - c * s_g| <= s_g / 2 everywhere) but spends codes on the group's largest entry alone; a
smaller r clips that entry and resolves the rest more finely, which usually wins at 4 bits (the
scale search of llama.cpp's k-quants and of MSE-calibrated PTQ). Scales along
the contraction axis (not the output axis) are what GPTQ, AWQ and llama.cpp use: an outlier
row of the input only coarsens its own groups.

In memory codes are `jnp.int4` (or int8), not packed bytes, so that XLA knows their width (on
CPU an int4 array takes one byte per value in memory). XLA does not fuse the grouped
dequantization into the GPU matmul, so int4 weights save memory but not decode time until the
fused kernel of int4_kernel.py replaces this path (docs/performance.md has the measurements).
In a checkpoint codes are packed two per uint8 (`to_storage`), because Orbax writes an int4
array one byte per value: packed, the file holds ~0.56 bytes per parameter at group 32 (0.5
for the codes + 2 / 32 for the bf16 scales).

The few functions below do what our own einsum layers need, where qwix's PTQ (which finds
weights by intercepting a traced forward pass) misses the tied embedding's lookup and saves
int4 unpacked (docs/model.md says more).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

SCALE_DTYPE = jnp.bfloat16
CODE_DTYPES = {4: jnp.int4, 8: jnp.int8}


class QuantizationError(ValueError):
    """A weight or setting that cannot be quantized as asked."""


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """codes int4|int8 [shape of W]; scales bf16 [the same, group axis divided by group size].

    The group axis is the one axis where codes and scales differ in size (group size >= 2),
    so a gathered slice (an embedding lookup) stays a valid QuantizedWeight.
    """

    codes: jax.Array
    scales: jax.Array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def group_axis(self) -> int:
        [axis] = [i for i, (c, s) in enumerate(zip(self.codes.shape, self.scales.shape)) if c != s]
        return axis

    def dequantize(self, dtype: jnp.dtype) -> jax.Array:
        axis = self.group_axis
        groups = self.scales.shape[axis]
        split = self.shape[:axis] + (groups, self.shape[axis] // groups) + self.shape[axis + 1:]
        codes = self.codes.astype(dtype).reshape(split)  # [..., G, g, ...]
        scales = jnp.expand_dims(self.scales.astype(dtype), axis + 1)  # [..., G, 1, ...]
        return (codes * scales).reshape(self.shape)

    def take(self, indices: jax.Array) -> QuantizedWeight:
        """Rows `indices` of a weight grouped along a later axis (the embedding lookup)."""
        if self.group_axis == 0:
            raise QuantizationError("take() needs groups along a later axis than the gathered one")
        return QuantizedWeight(jnp.take(self.codes, indices, axis=0), jnp.take(self.scales, indices, axis=0))


jax.tree_util.register_dataclass(QuantizedWeight)


def read_weight(variable: nnx.Variable, dtype: jnp.dtype) -> jax.Array:
    """A layer's weight in the compute dtype: a float parameter cast, a quantized one dequantized.

    Called inside the compiled step, so only the codes and scales cross memory; the
    dequantized copy is a temporary that XLA may fuse into the following matmul.
    """
    value = variable.get_value()
    weight = value.dequantize(dtype) if isinstance(value, QuantizedWeight) else value.astype(dtype)
    if _read_hook is not None:
        _read_hook(variable, weight)
    return weight


# Called with (variable, weight) by every read_weight: gptq.py's calibration pass learns which
# array handed to an einsum is which weight. None outside it.
_read_hook: Callable[[nnx.Variable, jax.Array], None] | None = None


def set_read_hook(hook: Callable[[nnx.Variable, jax.Array], None] | None):
    """Installs `hook` for read_weight; returns the one it replaces (to restore it)."""
    global _read_hook
    previous, _read_hook = _read_hook, hook
    return previous


def check_settings(*, group_size: int, bits: int) -> None:
    if bits not in CODE_DTYPES:
        raise QuantizationError(f"bits must be one of {sorted(CODE_DTYPES)}, got {bits}")
    if group_size < 2:
        raise QuantizationError(f"group size must be at least 2, got {group_size}")


def _indivisible(shape: tuple[int, ...], axis: int, group_size: int) -> str:
    dim = shape[axis]
    return (f"group size {group_size} does not divide axis {axis} of a weight of shape {shape} (size {dim}); "
            f"choose a group size that divides it (e.g. {math.gcd(dim, group_size)})")


# Clipping ratios tried for each group's scale: max|W_g| * ratio / q_max, the one whose codes
# reconstruct the group with the least squared error is kept.
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def quantize_array(w: jax.Array, *, axis: int, group_size: int, bits: int = 4) -> QuantizedWeight:
    """Symmetric group-wise quantization of w along `axis` (see the module docstring)."""
    check_settings(group_size=group_size, bits=bits)
    axis = axis % w.ndim
    dim = w.shape[axis]
    if dim % group_size:
        raise QuantizationError(_indivisible(tuple(w.shape), axis, group_size))
    q_max = 2 ** (bits - 1) - 1
    shape = tuple(w.shape)
    split = shape[:axis] + (dim // group_size, group_size) + shape[axis + 1:]
    grouped = w.astype(jnp.float32).reshape(split)  # [..., G, g, ...]
    absmax = jnp.max(jnp.abs(grouped), axis=axis + 1)  # [..., G, ...]

    def fit(ratio):
        # Codes are computed against the stored (rounded) scale, so the error is the stored one's.
        scales = (absmax * ratio / q_max).astype(SCALE_DTYPE)
        divisor = jnp.expand_dims(scales.astype(jnp.float32), axis + 1)
        divisor = jnp.where(divisor == 0, 1.0, divisor)  # an all-zero group: codes 0, scale 0
        codes = jnp.clip(jnp.round(grouped / divisor), -q_max, q_max)
        error = jnp.sum(jnp.square(codes * divisor - grouped), axis=axis + 1)  # [..., G, ...]
        return scales, codes, error

    # One ratio at a time, keeping the best per group: a model-sized weight is never held
    # once per ratio.
    scales, codes, error = fit(CLIP_RATIOS[0])
    for ratio in CLIP_RATIOS[1:]:
        new_scales, new_codes, new_error = fit(ratio)
        better = new_error < error
        scales, error = jnp.where(better, new_scales, scales), jnp.where(better, new_error, error)
        codes = jnp.where(jnp.expand_dims(better, axis + 1), new_codes, codes)
    codes = codes.astype(jnp.int8).reshape(shape)
    return QuantizedWeight(codes=codes.astype(CODE_DTYPES[bits]), scales=scales)


# One compiled program per weight shape: eager dispatch compiles each of its dozen ops instead.
_quantize_jit = jax.jit(quantize_array, static_argnames=("axis", "group_size", "bits"))

# Which parameter of which module class is quantized, and along which input axis its groups run.
# q/k/v [D, N|K, H] contract D; o [N, H, D] contracts (N, H): groups run along H;
# the tied table [V, D] contracts D when it makes logits (and is gathered along V).
_RULES: dict[str, dict[str, int]] = {
    "Attention": {"q": 0, "k": 0, "v": 0, "o": 1},
    "GeGLU": {"gate": 0, "up": 0, "down": 0},
    "Linear": {"kernel": 0},
    "Embedder": {"table": 1},
    "AttentionPool": {"q": 0, "k": 0, "v": 0, "o": 1},  # the vision encoder's pooling
}
_DECODER_PREFIXES = ("embedder", "decoder")


def quantizable_weights(model: nnx.Module) -> Iterator[tuple[str, nnx.Variable]]:
    """(name, variable) of every weight the rules name, float or already quantized."""
    for path, module in nnx.iter_graph(model):
        for attr in _RULES.get(type(module).__name__, {}):
            yield f"{'.'.join(str(p) for p in path)}.{attr}", getattr(module, attr)


def quantize_model(model: nnx.Module, *, group_size: int, bits: int = 4,
                   names: Collection[str] | None = None) -> dict[str, Any]:
    """Replaces the dense weights of `model` (in place) with QuantizedWeights; returns a report
    {"quantized": [names], "kept_float": [names]}.

    Decoder and embedding weights must divide by the group size (a clear error otherwise);
    an encoder weight that does not is kept in float and listed under "kept_float", since the
    encoders run once per prompt and are a small share of the bytes. `names` (a saved run's
    "quantized" list) quantizes exactly those weights, so a run reads back as it was written
    even if these rules change later.
    """
    check_settings(group_size=group_size, bits=bits)
    wanted = None if names is None else set(names)
    quantized, kept = [], []
    for path, module in nnx.iter_graph(model):
        rules = _RULES.get(type(module).__name__)
        if not rules:
            continue
        name = ".".join(str(p) for p in path)
        for attr, axis in rules.items():
            full = f"{name}.{attr}"
            variable = getattr(module, attr)
            value = variable.get_value()
            if isinstance(value, QuantizedWeight):
                raise QuantizationError(f"{full} is already quantized")
            indivisible = value.shape[axis] % group_size != 0
            if indivisible and (name.startswith(_DECODER_PREFIXES) or (wanted and full in wanted)):
                raise QuantizationError(f"{full}: {_indivisible(tuple(value.shape), axis, group_size)}")
            if indivisible or (wanted is not None and full not in wanted):
                kept.append(full)
                continue
            variable.set_value(_quantize_jit(value, axis=axis, group_size=group_size, bits=bits))
            quantized.append(full)
    if wanted is not None and wanted - set(quantized):
        raise QuantizationError(f"weights {sorted(wanted - set(quantized))} are not dense weights of this model")
    return {"quantized": quantized, "kept_float": kept}


def _is_quantized(x: Any) -> bool:
    return isinstance(x, QuantizedWeight)


def to_storage(params: Any) -> Any:
    """A params tree with QuantizedWeights -> plain dicts Orbax writes compactly: int4 codes
    packed two per uint8 (flat: code 2i in the low nibble, 2i + 1 in the high one)."""
    def store(x):
        if not _is_quantized(x):
            return x
        codes = x.codes
        if codes.dtype == jnp.int4:
            codes = pack_int4(codes)
        return {"codes": codes, "scales": x.scales}
    return jax.tree.map(store, params, is_leaf=_is_quantized)


def storage_like(params: Any) -> Any:
    """The abstract storage tree (ShapeDtypeStructs) of an abstract params tree."""
    def like(x):
        if not _is_quantized(x):
            return jax.ShapeDtypeStruct(x.shape, x.dtype)
        codes = x.codes
        if codes.dtype == jnp.int4:
            codes = jax.ShapeDtypeStruct((math.prod(codes.shape) // 2,), jnp.uint8)
        return {"codes": jax.ShapeDtypeStruct(codes.shape, codes.dtype),
                "scales": jax.ShapeDtypeStruct(x.scales.shape, x.scales.dtype)}
    return jax.tree.map(like, params, is_leaf=_is_quantized)


def from_storage(stored: Any, like: Any) -> Any:
    """Inverse of `to_storage`, given the (abstract) params tree that says which leaves are quantized."""
    def load(x, stored_leaf):
        if not _is_quantized(x):
            return stored_leaf
        codes = stored_leaf["codes"]
        if x.codes.dtype == jnp.int4:
            codes = unpack_int4(codes, shape=x.codes.shape)
        return QuantizedWeight(codes=codes, scales=stored_leaf["scales"])
    return jax.tree.map(load, like, stored, is_leaf=_is_quantized)


def pack_int4(codes: jax.Array) -> jax.Array:
    """int4[...] (even size) -> uint8[size / 2], two's-complement nibbles."""
    if math.prod(codes.shape) % 2:
        raise QuantizationError(f"cannot pack an odd number of int4 values (shape {tuple(codes.shape)})")
    nibbles = codes.astype(jnp.int8).reshape(-1, 2).astype(jnp.uint8) & 0xF  # [n/2, 2]
    return nibbles[:, 0] | (nibbles[:, 1] << 4)


def unpack_int4(packed: jax.Array, *, shape: tuple[int, ...]) -> jax.Array:
    """uint8[n / 2] -> int4[shape]: inverse of `pack_int4`."""
    nibbles = jnp.stack([packed & 0xF, packed >> 4], axis=-1).astype(jnp.int8)  # [n/2, 2], 0..15
    signed = jnp.where(nibbles >= 8, nibbles - 16, nibbles)  # two's complement
    return signed.reshape(shape).astype(jnp.int4)


def quantized_params_like(model: nnx.Module, *, group_size: int, bits: int,
                          names: Collection[str] | None = None) -> Any:
    """The params (a pure dict, QuantizedWeight leaves) that quantizing `model` would give, as
    ShapeDtypeStructs: computed under eval_shape, so nothing is allocated or quantized."""
    graphdef, state = nnx.split(model)

    def quantized(state):
        copy = nnx.merge(graphdef, state)
        quantize_model(copy, group_size=group_size, bits=bits, names=names)
        return nnx.to_pure_dict(nnx.state(copy, nnx.Param))

    return jax.eval_shape(quantized, state)


def set_params(model: nnx.Module, params: Any) -> None:
    """Writes a pure-dict params tree (QuantizedWeight leaves allowed) into `model`'s Params."""
    variables = {tuple(path): node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Param)}
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_quantized)
    for keys, value in flat:
        path = tuple(k.key for k in keys)
        if path not in variables:
            raise QuantizationError(f"parameter {'.'.join(map(str, path))} is not in the model")
        variables[path].set_value(value)


def param_count(tree: Any) -> int:
    """Parameters of a tree (float or quantized): a QuantizedWeight counts its codes only."""
    leaves = jax.tree.leaves(tree, is_leaf=_is_quantized)
    return sum(math.prod(x.shape) for x in leaves)


def numpy_nbytes(tree: Any) -> int:
    """Bytes of a storage tree as Orbax would write them uncompressed."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
