"""Recovery time: the training state from the in-memory replica vs from an Orbax checkpoint (prints JSON).

    python benchmarks/recovery.py [--preset demo] [--repeats 5]
    python benchmarks/recovery.py --cpu-devices 8 --mesh data=2,fsdp=2,tensor=2   # a mesh of host devices

Builds a Trainer for the preset (parameters and AdamW state, on a mesh when --mesh is given),
then times the two ways of getting its state back, as a restart within the process would:
  replica  `Replica.recover`: the copy on the other devices (host memory without a mesh) is
           put back into the primary shardings;
  storage  a fresh `Checkpointer` on the run directory finds the latest step and restores it
           into the same shardings (Orbax, the path `train()` takes when resuming).
Each is timed until the arrays are ready, `--repeats` times (median reported). The checkpoint
was just written, so the storage figure reads it from the OS page cache: a lower bound for a
restore after a real restart, let alone one from network storage.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def timed(fn) -> float:
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help="model preset")
    parser.add_argument("--mesh", default=None, metavar="data=D,fsdp=F,tensor=T",
                        help="shard the state over all devices (default: one device, no mesh)")
    parser.add_argument("--cpu-devices", type=int, default=None,
                        help="split the CPU into this many JAX devices (for --mesh on a machine without accelerators)")
    parser.add_argument("--repeats", type=int, default=5, help="timed recoveries of each kind")
    parser.add_argument("--dir", default=None, help="where the checkpoint is written (default: a temporary directory)")
    args = parser.parse_args()

    import jax

    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    from flax import nnx

    from gemini_jax import sharding
    from gemini_jax.checkpoint import Checkpointer
    from gemini_jax.config import get_preset
    from gemini_jax.model import Gemini
    from gemini_jax.train.optimizer import OptimizerConfig
    from gemini_jax.train.replica import Replica
    from gemini_jax.train.trainer import Trainer

    config = get_preset(args.preset)
    mesh = None if args.mesh is None else sharding.make_mesh(sharding.MeshShape.parse(args.mesh))
    trainer = Trainer(Gemini(config, rngs=nnx.Rngs(0)), OptimizerConfig(total_steps=10_000), mesh=mesh)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(trainer.state()))

    run_dir = args.dir or tempfile.mkdtemp(prefix="recovery-")
    checkpointer = Checkpointer(run_dir, max_to_keep=1)
    for step in (1, 2):  # the first save also sets Orbax up: time the second
        start = time.perf_counter()
        checkpointer.save(step, state=trainer.state(), meta={"step": step})
        save_returned = time.perf_counter() - start
        checkpointer.wait()
        save_done = time.perf_counter() - start
    checkpointer.close()

    replica = Replica()
    start = time.perf_counter()
    replica.refresh(trainer, step=2)
    refresh_returned = time.perf_counter() - start
    jax.block_until_ready(replica.arrays())
    refresh_done = time.perf_counter() - start

    def from_storage():
        restarted = Checkpointer(run_dir)
        state, _ = restarted.restore(restarted.latest_step(), state_like=trainer.state())
        restarted.close()
        trainer.load_state(state)
        return trainer.state()

    def from_replica():
        replica.recover(trainer)
        return trainer.state()

    timed(from_replica), timed(from_storage)  # warm-up: first-call dispatch and Orbax set-up
    replica_s = statistics.median(timed(from_replica) for _ in range(args.repeats))
    storage_s = statistics.median(timed(from_storage) for _ in range(args.repeats))
    print(json.dumps({
        "preset": args.preset, "mesh": args.mesh, "devices": len(jax.devices()),
        "device": str(jax.devices()[0]), "cpus": os.cpu_count(),
        "replica_on": "host memory" if mesh is None else "the mesh's devices, rotated",
        "state_mb": round(state_bytes / 2**20, 2), "repeats": args.repeats,
        "recover_from_replica_s": round(replica_s, 4),
        "restore_from_storage_s": round(storage_s, 4),
        "storage_over_replica": round(storage_s / replica_s, 1),
        "replica_refresh_returns_s": round(refresh_returned, 4), "replica_refresh_done_s": round(refresh_done, 4),
        "checkpoint_save_returns_s": round(save_returned, 4), "checkpoint_save_done_s": round(save_done, 4),
    }, indent=2))


if __name__ == "__main__":
    main()
