"""A child process for tests/test_sharding.py: it needs a device count of its own, which JAX
fixes at start-up (the test process already has conftest's 4).

    python tests/sharded_worker.py compare --devices 8            # single vs data=2,fsdp=2,tensor=2;
                                                                  # then recovery from an in-memory replica
    python tests/sharded_worker.py process --port P --process-id I  # one of 2 processes x 4 devices
    python tests/sharded_worker.py lower --devices 64 --preset nano-1,nano-2 --mesh data=4,fsdp=8,tensor=2

Prints one JSON line on stdout. Training uses the `test` preset (text, one image per row, both
encoders built) on fixed synthetic batches, float32, for 20 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

STEPS = 20
GLOBAL_BATCH = 8
SEQ_LEN = 24


def _configure(devices: int, *, strict: bool = True) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    if strict:  # as conftest; bfloat16 presets' attention gradients need standard promotion
        jax.config.update("jax_numpy_dtype_promotion", "strict")


def synthetic_batch(config, step: int):
    """Rows of random text, two packed documents each, with one image (5 soft tokens) in the
    first document; about half the positions are scored."""
    import numpy as np

    vision = config.vision
    rng = np.random.default_rng(step)
    b, t = GLOBAL_BATCH, SEQ_LEN
    n_img = vision.num_soft_tokens(vision.max_patches)
    tokens = rng.integers(10, config.vocab_size, (b, t)).astype(np.int32)
    tokens[:, 2:2 + n_img] = config.image_token_id
    spans = np.zeros((b, t), np.int32)
    spans[:, 2:2 + n_img] = 1
    split = t // 2 + 2
    segments = np.where(np.arange(t) < split, 1, 2)[None].repeat(b, 0).astype(np.int32)
    segments[:, -2:] = 0  # padding
    positions = np.where(np.arange(t) < split, np.arange(t), np.arange(t) - split)[None].repeat(b, 0)
    loss_mask = ((rng.random((b, t)) < 0.5) & (segments > 0)).astype(np.float32)
    side = 3  # 12 patches as a 3 x 4 grid
    coords = np.stack(np.divmod(np.arange(vision.max_patches), 4), axis=-1)
    assert coords[:, 0].max() < side + 1
    return {
        "tokens": tokens, "targets": np.roll(tokens, -1, axis=1), "loss_mask": loss_mask,
        "segment_ids": segments, "positions": positions.astype(np.int32), "media_spans": spans,
        "image_patches": rng.uniform(-1, 1, (b, 1, vision.max_patches, vision.patch_dim)).astype(np.float32),
        "image_coords": np.broadcast_to(coords, (b, 1, *coords.shape)).astype(np.int32),
        "image_patch_mask": np.ones((b, 1, vision.max_patches), bool),
    }


_MODEL = None


def _trainer(mesh):
    """A Trainer over a fresh copy of one model. Its values come from numpy on the abstract
    model: the real initialisers compile a small program per parameter shape, slow on a
    shared 2-core machine, and every process draws the same values from the same seed."""
    global _MODEL
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from gemini_jax.config import PRESETS
    from gemini_jax.model import Gemini
    from gemini_jax.train.optimizer import OptimizerConfig
    from gemini_jax.train.trainer import Trainer

    config = PRESETS["test"]
    if _MODEL is None:
        graphdef, state = nnx.split(nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0))))
        rng = np.random.default_rng(0)
        # Fan-in scaled normals (norm scales and biases get 0.1): the scale of the real init.
        state = jax.tree.map(lambda x: jnp.asarray(
            (rng.standard_normal(x.shape) * (0.1 if x.ndim < 2 else np.prod(x.shape[:-1]) ** -0.5))
            .astype(x.dtype)), state)
        _MODEL = graphdef, state
    graphdef, state = _MODEL
    model = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))  # the step donates its inputs
    optimizer = OptimizerConfig(learning_rate=1e-2, warmup_steps=3, total_steps=STEPS)
    return config, Trainer(model, optimizer, mesh=mesh)


def _train(mesh, rows: slice = slice(None)):
    config, trainer = _trainer(mesh)
    losses = []
    for step in range(STEPS):
        batch = {k: v[rows] for k, v in synthetic_batch(config, step).items()}
        losses.append(float(trainer.step(batch)["loss"]))
    return losses, trainer


def compare(devices: int, mesh_text: str) -> dict:
    _configure(devices)
    import jax

    from gemini_jax import sharding

    mesh = sharding.make_mesh(sharding.MeshShape.parse(mesh_text))
    single, _ = _train(None)
    sharded, trainer = _train(mesh)
    specs = {jax.tree_util.keystr(p): str(s.spec)
             for p, s in jax.tree_util.tree_flatten_with_path(trainer.param_shardings)[0]}
    return {"single": single, "sharded": sharded, "devices": len(jax.devices()), "specs": specs,
            "replica": _recover_from_replica(trainer)}


def _recover_from_replica(trainer, extra_steps: int = 3) -> dict:
    """Goes on from the sharded run's end for a few steps; then deletes the primary state, recovers
    it from the in-memory replica taken at the end, and takes the same steps again. Also reports
    where each array's replica sits against its primary."""
    import jax

    from gemini_jax.config import PRESETS
    from gemini_jax.train.replica import Replica

    config = PRESETS["test"]
    replica = Replica()
    replica.refresh(trainer, step=STEPS)
    primary = jax.tree.map(lambda x: x.sharding, trainer.state())
    copy = replica.arrays()

    def go_on():
        return [float(trainer.step(synthetic_batch(config, STEPS + i))["loss"]) for i in range(extra_steps)]

    continued = go_on()
    for array in jax.tree.leaves(trainer.state()):
        array.delete()  # as if the devices' memory were lost
    step, _ = replica.recover(trainer)
    recovered = go_on()

    leaves = []
    for p, r in zip(jax.tree.leaves(primary), jax.tree.leaves(copy), strict=True):
        shape = r.shape
        p_slices, r_slices = p.devices_indices_map(shape), r.sharding.devices_indices_map(shape)
        leaves.append({
            "spec": str(p.spec),
            "slices": len({str(index) for index in p_slices.values()}),
            # mesh positions whose device differs between the primary and the replica
            "moved_positions": int((p.mesh.devices != r.sharding.mesh.devices).sum()),
            "positions": int(p.mesh.devices.size),
            # devices that hold the same slice in both copies
            "same_slice_devices": sum(str(p_slices[d]) == str(r_slices[d]) for d in p_slices),
        })
    return {"step": step, "continued": continued, "recovered": recovered, "leaves": leaves}


def process(port: int, process_id: int, num_processes: int = 2, local_devices: int = 4) -> dict:
    _configure(local_devices)
    from gemini_jax import sharding
    from gemini_jax.train import distributed

    distributed.initialize(coordinator=f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)
    import jax

    mesh = sharding.make_mesh(sharding.MeshShape(data=2, fsdp=2, tensor=2))
    per = GLOBAL_BATCH // num_processes
    losses, _ = _train(mesh, rows=slice(process_id * per, (process_id + 1) * per))
    result = {"process": jax.process_index(), "processes": jax.process_count(),
              "devices": len(jax.devices()), "losses": losses}
    jax.distributed.shutdown()
    return result


_configured: list[bool] = []


def lower(devices: int, preset: str, mesh_text: str, batch: int, seq_len: int) -> dict:
    """Lowers (no compile, no weights) nano's training step for a big mesh of host devices."""
    if not _configured:
        _configure(devices, strict=False)
        _configured.append(True)
    import time

    import jax
    import numpy as np
    from flax import nnx

    from gemini_jax import sharding
    from gemini_jax.config import get_preset
    from gemini_jax.model import Gemini
    from gemini_jax.train.optimizer import OptimizerConfig
    from gemini_jax.train.trainer import Trainer

    start = time.perf_counter()
    config = get_preset(preset)
    mesh = sharding.make_mesh(sharding.MeshShape.parse(mesh_text))
    abstract = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
    trainer = Trainer(abstract, OptimizerConfig(total_steps=10_000), mesh=mesh)
    text = {k: jax.ShapeDtypeStruct((batch, seq_len), np.float32 if k == "loss_mask" else np.int32)
            for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions", "media_spans")}
    text["loss_positions"] = jax.ShapeDtypeStruct((batch, seq_len), np.int32)
    lowered = trainer.lower(text)
    params = jax.tree.leaves(trainer.params)
    stats = {
        "parameters": int(sum(np.prod(p.shape) for p in params)),
        "param_bytes_total": int(sum(np.prod(p.shape) * p.dtype.itemsize for p in params)),
        "param_bytes_per_device": sharding.parameter_bytes_per_device(
            jax.tree.leaves(trainer.param_shardings), params),
        "opt_bytes_per_device": sharding.parameter_bytes_per_device(
            jax.tree.leaves(trainer.opt_shardings), jax.tree.leaves(trainer.opt_state)),
        "sharding_annotations": lowered.as_text().count("sharding"),
        "batch": batch, "seq_len": seq_len,
    }
    stats["lower_s"] = round(time.perf_counter() - start, 1)
    stats["preset"], stats["mesh"], stats["devices"] = preset, mesh_text, len(jax.devices())
    return stats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("compare", "process", "lower"))
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--mesh", default="data=2,fsdp=2,tensor=2")
    parser.add_argument("--port", type=int)
    parser.add_argument("--process-id", type=int)
    parser.add_argument("--preset", default="nano-1")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=2048)
    args = parser.parse_args()
    if args.mode == "compare":
        out = compare(args.devices, args.mesh)
    elif args.mode == "process":
        out = process(args.port, args.process_id)
    else:
        out = [lower(args.devices, name, args.mesh, args.batch, args.seq_len) for name in args.preset.split(",")]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    main()
