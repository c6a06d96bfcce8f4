"""An in-memory copy of the training state, so that a restart need not read storage.

The Gemini report (section 3, training infrastructure) keeps redundant in-memory copies of
the model state and, after an unplanned hardware failure, recovers directly from an intact
copy: faster than a restore from storage (docs/training.md cites the report's numbers).
`Replica` is that idea for one training job:

- With a mesh, the copy has the primary's shardings on the same mesh with its device order
  rotated, so the slice that mesh position i holds lives on another device (on another host,
  when there are several processes) than in the primary. Losing one device (or host) never
  loses both copies of a slice: where a device holds the same slice in both (an array
  replicated along some mesh axis), other devices hold that slice too.
- Without a mesh (one device) the copy is in host memory: it survives the device's memory
  being lost or corrupted, not the device's host.

`refresh` starts the copy and returns without waiting for it (`jax.device_put` is
asynchronous), so training pays the dispatch; the copy costs the memory of the state again
(parameters and both of Adam's moments). A failure while a copy is still in flight, within
moments of a refresh, leaves no usable copy: recovery then fails, and the run has to be
restarted from its last checkpoint. `recover` puts the copy back into a trainer's primary
shardings, with the step and the data iterator's state it was taken at.

What it cannot do: the copy lives in this process, so it does not survive the process dying
(a kill -9, a crash of the host that runs it); that is what checkpoints are for. `train()`
uses it to restart in-process when a step fails with a runtime error (a device fault, a
corrupted or lost primary copy), then replays the steps since the copy. On a real device
loss the restart would need a mesh over the surviving or replacement devices, which the
cluster's scheduler, not this module, provides; with several processes every process must
see the failure and recover together.
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

if TYPE_CHECKING:
    from gemini_jax.train.trainer import Trainer


@functools.cache  # a state has hundreds of arrays but few distinct shardings
def rotated(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
    """Where the copy of an array with `sharding` goes: the same mesh and partitioning with the
    devices rotated by the smallest shift that moves every mesh position to another device
    (to another host when there are several processes); host memory when no shift can."""
    if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
        devices = sharding.mesh.devices
        flat = devices.reshape(-1)
        owner = (lambda d: d.process_index) if jax.process_count() > 1 else (lambda d: d.id)
        for shift in range(1, flat.size):
            moved = np.roll(flat, shift)
            if all(owner(a) != owner(b) for a, b in zip(flat, moved, strict=True)):
                mesh = Mesh(moved.reshape(devices.shape), sharding.mesh.axis_names,
                            axis_types=sharding.mesh.axis_types)
                return NamedSharding(mesh, sharding.spec, memory_kind=sharding.memory_kind)
    return jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])


def _slice_key(index: tuple[slice, ...]) -> tuple:
    return tuple((s.start, s.stop, s.step) for s in index)


def copy_to(tree: Any, shardings: Any) -> Any:
    """A copy of a tree of arrays laid out as `shardings`, owning its buffers (the next step
    donates the originals).

    Within one process each device of a target sharding receives the slice it needs from a
    shard that holds it: plain device-to-device (or device-to-host) copies, all started by one
    `jax.device_put`, with no compiled program and no collective (XLA's reshard between two
    orders of the same devices is a collective permute, which can stall on a CPU host of many
    fake devices). Across processes the slices have to cross hosts, so XLA moves them
    (`jax.device_put` of the whole tree; our tests run one process and do not exercise this).
    """
    if jax.process_count() > 1:
        return jax.device_put(tree, shardings, may_alias=False)
    leaves, treedef = jax.tree.flatten(tree)
    targets = treedef.flatten_up_to(shardings)
    sources, devices, counts = [], [], []
    for x, sharding in zip(leaves, targets, strict=True):
        slices = {_slice_key(shard.index): shard.data for shard in x.addressable_shards}
        placement = sharding.addressable_devices_indices_map(x.shape)  # device -> the slice it holds
        sources += [slices[_slice_key(index)] for index in placement.values()]
        devices += list(placement)
        counts.append(len(placement))
    pieces = iter(jax.device_put(sources, devices, may_alias=False))
    return treedef.unflatten([
        jax.make_array_from_single_device_arrays(x.shape, sharding, [next(pieces) for _ in range(n)])
        for x, sharding, n in zip(leaves, targets, counts, strict=True)])


class Replica:
    """A redundant copy of a trainer's state (parameters, optimizer state), its step and the
    data iterator's state, refreshed by `refresh` and put back by `recover`."""

    def __init__(self) -> None:
        self.step: int | None = None  # the step of the copy; None before the first refresh
        self._state: dict[str, Any] | None = None
        self._primary_shardings: Any = None
        self._data_state: Any = None

    def refresh(self, trainer: Trainer, *, step: int, data_state: Any = None) -> None:
        state = trainer.state()
        self._primary_shardings = jax.tree.map(lambda x: x.sharding, state)
        self._state = copy_to(state, jax.tree.map(rotated, self._primary_shardings))
        self._data_state = copy.deepcopy(data_state)
        self.step = step

    def recover(self, trainer: Trainer) -> tuple[int, Any]:
        """Replaces the trainer's state by the copy; returns (step, data iterator state)."""
        if self.step is None:
            raise RuntimeError("the replica holds no copy yet: nothing to recover from")
        # Copies again (the step donates what it is given), so the replica stays usable.
        trainer.load_state(copy_to(self._state, self._primary_shardings))
        return self.step, copy.deepcopy(self._data_state)

    def arrays(self) -> dict[str, Any]:
        """The copy itself (for tests and benchmarks: where it lives, what it holds)."""
        if self._state is None:
            raise RuntimeError("the replica holds no copy yet")
        return self._state
