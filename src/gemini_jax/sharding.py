"""Sharding: one (data, fsdp, tensor) mesh, one rules table, and the helpers that apply it.

Parameters carry *logical* axis names where they are declared (`layers.param(value, "embed",
"mlp")` stores them as Flax `out_sharding` metadata with eager sharding off, so a model still
builds without any mesh: tests, the sampler and checkpoint conversion never see one). Only the
trainer turns names into shardings, through `RULES`, the single table that maps each logical
name to a mesh axis:

    data    pure data parallelism: the batch is split, parameters are replicated;
    fsdp    the batch is split too, and parameters are sharded along their width ("embed"),
            gathered layer by layer by XLA (ZeRO-3 / FSDP);
    tensor  Megatron-style tensor parallelism: heads, MLP width and vocabulary are split,
            so each device holds a slice of every matmul.

K = 1 key/value head (multi-query attention) cannot be split, so "kv_heads" is replicated.
A dimension that the mesh axis does not divide (the `test` preset's prime vocabulary of 97,
an encoder's 12 heads over 8 devices) is replicated instead of failing: correctness first,
and the per-device byte counts (`parameter_bytes_per_device`) show what that costs.

`MeshShape()` (1 x 1 x 1) is the default; the trainer then takes the single-device path of
old, with no mesh, no constraints and no device_put, so small runs pay nothing for this.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from gemini_jax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axis (None: replicated). Names not listed here are a ConfigError, so a
# typo in a model file cannot silently replicate a large matrix.
RULES: Mapping[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,  # activations' leading axis
    "length": None,  # sequence (no sequence parallelism)
    "act_embed": None,  # the residual stream's width: whole on every tensor shard
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv_heads": None,  # K = 1 for MQA: nothing to split
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,  # norm scales and biases: tiny, replicated
    "position": None,  # learned position tables' rows
    "queries": None,  # the vision pooler's learned queries
    "patch": None,  # raw patch features (pixels x channels) entering the vision encoder
    "mels": None,  # log-mel features entering the audio encoder
    "conv": None,  # convolution windows and channels of the encoders' stems
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshShape:
    """Devices along each mesh axis; the product must equal the number of devices."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        for name in MESH_AXES:
            size = getattr(self, name)
            if not (isinstance(size, int) and size >= 1):
                raise ConfigError(f"mesh axis {name!r} needs a positive integer size, got {size!r}")

    @property
    def size(self) -> int:
        return self.data * self.fsdp * self.tensor

    @property
    def batch_shards(self) -> int:
        return self.data * self.fsdp

    @classmethod
    def parse(cls, text: str) -> MeshShape:
        """`"data=2,fsdp=2,tensor=2"` (axes left out are 1) -> MeshShape."""
        sizes: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in MESH_AXES:
                raise ConfigError(f"bad mesh entry {part!r} in {text!r}; write e.g. data=2,fsdp=2,tensor=2 "
                                  f"(axes: {', '.join(MESH_AXES)})")
            if name in sizes:
                raise ConfigError(f"mesh axis {name!r} given twice in {text!r}")
            try:
                sizes[name] = int(value)
            except ValueError:
                raise ConfigError(f"mesh axis {name!r} needs an integer size, got {value.strip()!r}") from None
        return cls(**sizes)

    def __str__(self) -> str:
        return ",".join(f"{n}={getattr(self, n)}" for n in MESH_AXES)


def make_mesh(shape: MeshShape, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """The (data, fsdp, tensor) mesh over all devices (of every process), checked for size.

    Axis types are Auto: XLA propagates shardings from the parameters, the batch and the
    block-boundary constraints, as GSPMD always has; `jax.make_mesh` would default to
    Explicit axes, whose sharding-in-types rules every einsum would then have to satisfy.
    """
    devices = list(jax.devices() if devices is None else devices)
    if shape.size != len(devices):
        raise ConfigError(
            f"mesh {shape} has {shape.size} devices but {len(devices)} are available "
            f"({jax.process_count()} process(es) x {jax.local_device_count()} local); "
            f"make data x fsdp x tensor equal {len(devices)}")
    sizes = tuple(getattr(shape, n) for n in MESH_AXES)
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(sizes, MESH_AXES, axis_types=auto, devices=devices)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh_sizes: Mapping[str, int]) -> PartitionSpec:
    """A PartitionSpec for an array of `shape` whose axes carry logical `names`.

    A mesh axis is used once per array (the first axis that claims it) and only where it
    divides the dimension; anything else is replicated. Size-1 mesh axes are left out, so
    a 1-device mesh gives fully replicated specs.
    """
    if len(names) != len(shape):
        raise ConfigError(f"logical axes {tuple(names)} do not match an array of shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for name, dim in zip(names, shape):
        if name is not None and name not in RULES:
            raise ConfigError(f"logical axis {name!r} has no sharding rule; known: {sorted(RULES)}")
        target = RULES.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if a not in used and mesh_sizes.get(a, 1) > 1)
        if axes and dim % math.prod(mesh_sizes[a] for a in axes) == 0:
            used.update(axes)
            spec.append(axes[0] if len(axes) == 1 else axes)
        else:
            spec.append(None)
    return PartitionSpec(*spec)


def _logical_names(leaf: Any) -> tuple[str | None, ...] | None:
    from flax import nnx

    if isinstance(leaf, nnx.Variable):
        names = leaf.get_metadata().get("out_sharding")
        return tuple(names) if names else None
    return None


def param_shardings(params: Any, mesh: jax.sharding.Mesh) -> Any:
    """NamedShardings for a tree of nnx Variables (e.g. `nnx.split(model, nnx.Param, ...)[1]`),
    from the logical names each parameter was declared with (none: replicated)."""
    from flax import nnx

    sizes = dict(mesh.shape)

    def one(leaf: Any) -> Any:
        names = _logical_names(leaf)
        shape = leaf.shape if hasattr(leaf, "shape") else np.shape(leaf[...])
        spec = PartitionSpec() if names is None else logical_to_spec(names, shape, sizes)
        return leaf.replace(NamedSharding(mesh, spec)) if isinstance(leaf, nnx.Variable) else NamedSharding(mesh, spec)

    return jax.tree.map(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shardings_like(tree: Any, params: Any, shardings: Any, mesh: jax.sharding.Mesh) -> Any:
    """Shardings for `tree` (an optimizer state): a leaf whose path ends with a parameter's
    path and has its shape takes that parameter's sharding (Adam's moments); others, such as
    step counts, are replicated. Optax states mirror the parameter tree, so suffixes suffice."""
    by_path = {}
    for (path, p), (_, s) in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                 jax.tree_util.tree_flatten_with_path(shardings)[0], strict=True):
        by_path[tuple(path)] = (np.shape(p), s)
    replicated = NamedSharding(mesh, PartitionSpec())

    def one(path, leaf):
        path = tuple(path)
        for start in range(len(path)):
            hit = by_path.get(path[start:])
            if hit is not None and hit[0] == np.shape(leaf):
                return hit[1]
        return replicated

    return jax.tree_util.tree_map_with_path(one, tree)


def place(tree: Any, shardings: Any) -> Any:
    """`jax.device_put(tree, shardings)`, also across processes: there each process holds the
    same host values (same seed) and hands each of its devices that device's slice."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def one(x: Any, s: NamedSharding) -> jax.Array:
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

    return jax.tree.map(one, tree, shardings)


def with_shardings(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves carrying `shardings`: inputs for `jit(...).lower`."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> NamedSharding:
    """Rows over (data, fsdp); every other axis whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def global_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays split over (data, fsdp).

    With one process the local batch is the global one. With several, each process passes
    its own slice (rows process_index * n .. (process_index + 1) * n of the global batch)
    and the global batch is the concatenation, in process order.
    """
    rows = {np.shape(v)[0] for v in batch.values()}
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if len(rows) != 1 or (rows.pop() * jax.process_count()) % shards:
        raise ConfigError(
            f"a batch of {sorted({np.shape(v)[0] for v in batch.values()})} rows per process x "
            f"{jax.process_count()} process(es) cannot be split over data x fsdp = {shards} devices; "
            f"make the global batch a multiple of {shards}")
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in batch.items()}


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pins an activation's sharding at a block boundary, when a multi-device mesh is set
    (`jax.set_mesh`, as the trainer does); otherwise returns x untouched, at no cost."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1 or not set(MESH_AXES) <= set(mesh.axis_names):
        return x
    spec = logical_to_spec(names, x.shape, dict(mesh.shape))
    return jax.lax.with_sharding_constraint(x, spec)


def parameter_bytes_per_device(shardings: Any, abstract: Any) -> int:
    """Bytes of the largest per-device slice of `abstract` (arrays or ShapeDtypeStructs) under
    `shardings`: with even shards, what every device holds."""
    total = 0
    for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings), strict=True):
        shard = s.shard_shape(a.shape)
        total += math.prod(shard) * np.dtype(a.dtype).itemsize
    return total
