"""Memory of one training step, full fine-tuning against LoRA, from XLA's compiled program (prints JSON).

    python benchmarks/lora_memory.py                          # nano-1 text decoder, 8 x 2,048 tokens
    python benchmarks/lora_memory.py --preset demo --batch 2 --seq-len 128 --remat none
    python benchmarks/lora_memory.py --breakdown 12           # and where the memory goes
    python benchmarks/lora_memory.py --topology v5p:2x2x1     # compiled for a TPU v5p chip, without one
    python benchmarks/lora_memory.py --gpu-target benchmarks/h100_target.txtpb   # for an H100, without one

Both steps are built from abstract models (nnx.eval_shape) on a one-device mesh, lowered with
ShapeDtypeStruct inputs and compiled for the default backend, or with --topology for one chip of a
TPU topology by libtpu's compiler (`pip install "jax[tpu]"`), or with --gpu-target for the GPU a
target description names by XLA's GPU compiler (`pip install jax-cuda12-plugin jax-cuda12-pjrt` of
jax's version): no accelerator is needed, none is used, nothing is allocated or run.
Full fine-tuning updates every parameter (float32 master weights, AdamW); LoRA (train/lora.py)
updates only rank-`--rank` adapters on every attention and MLP projection of the decoder, with
their own AdamW state, and holds the frozen base weights in bfloat16 (`freeze_base`).
Both share the settings a memory-bound step would use: blocks rematerialised ("full") inside
one lax.scan, and blockwise attention (the flags below say why each). Reported per variant:
XLA's argument, output, alias (donated inputs reused as outputs), temp and total
(argument + output - alias + temp) bytes, and the trained parameter count; then the ratio of
LoRA's total to full fine-tuning's; with --breakdown N, each variant's N largest buffers.
docs/post-training.md ("LoRA") has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from gemini_jax import sharding
from gemini_jax.config import ATTENTION_IMPLS, REMAT_POLICIES, get_preset, override
from gemini_jax.model import Gemini
from gemini_jax.train.loss import logits_chunk_tokens
from gemini_jax.train.lora import LoraConfig, LoraTrainer, apply_lora, freeze_base
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.trainer import Trainer

_BATCH_KEYS = ("tokens", "targets", "loss_mask", "segment_ids", "positions", "media_spans", "loss_positions")


def step_memory(trainer: Trainer, *, batch: int, seq_len: int) -> dict[str, Any]:
    shapes = {k: jax.ShapeDtypeStruct((batch, seq_len), np.float32 if k == "loss_mask" else np.int32)
              for k in _BATCH_KEYS}
    start = time.perf_counter()
    compiled = trainer.lower(shapes).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    figures = {
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "alias_bytes": int(memory.alias_size_in_bytes),
        "temp_bytes": int(memory.temp_size_in_bytes),
    }
    figures["total_bytes"] = (figures["argument_bytes"] + figures["output_bytes"] - figures["alias_bytes"]
                              + figures["temp_bytes"])
    figures["total_gib"] = round(figures["total_bytes"] / 2**30, 2)
    figures["trained_params"] = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.params))
    figures["lower_and_compile_s"] = round(seconds, 1)
    return figures


def largest_buffers(dump_dir: str, count: int) -> list[str]:
    """The `count` largest slots of the step's compiled memory (size and the shapes that share
    it over the step), from the report XLA writes with --xla_dump_to."""
    reports = sorted(Path(dump_dir).glob("*_step*memory-usage-report.txt"), key=lambda p: p.stat().st_mtime)
    if not reports:
        return []
    rows = [line.split(";") for line in reports[-1].read_text().splitlines() if line.count(";") == 4]
    return [f"{row[1].strip()}: {row[4].strip()}" for row in rows[1:count + 1]]


def target_devices(topology: str | None, gpu_target: str | None) -> list[jax.Device]:
    """The default backend's devices, or compile-only devices: a TPU topology's (libtpu's), or
    one GPU described by an XLA GpuTargetConfig text proto (the CUDA plugin's)."""
    from jax.experimental import topologies

    if topology is not None:
        os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no cloud metadata server to ask for the machine
        return list(topologies.get_topology_desc(topology, platform="tpu").devices)
    if gpu_target is not None:
        jax.config.update("jax_platforms", "cpu")  # the CUDA plugin would look for a GPU to run on
        description = Path(gpu_target).read_text()
        return list(topologies.get_topology_desc("gpu", "cuda", target_config=description, topology="1x1x1").devices)
    return jax.devices()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano-1", help="model preset (its text decoder is trained)")
    parser.add_argument("--batch", type=int, default=8, help="rows per step")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per row")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = 2 x rank)")
    # Both variants use the same policy. Activations are the same in both, and without remat
    # those of a 16K-token step outweigh the weights and their optimizer state.
    parser.add_argument("--remat", choices=REMAT_POLICIES, default="full", help="decoder block remat policy")
    # Unrolled, XLA's CPU scheduler runs the rematerialised forward passes early and keeps
    # their activations (nano-1 at 8 x 2,048: ~5 GB more temp per block, remat or not);
    # inside a scan each block's recomputation waits for its backward pass.
    parser.add_argument("--unrolled", action="store_true", help="decoder blocks unrolled instead of one lax.scan")
    # XLA's own attention on a CPU holds each block's [B, N, T, T] scores (1 GiB a block here),
    # which cuDNN's fused kernel on a GPU never materialises; blockwise attention is the
    # model's way to keep them out on any backend.
    parser.add_argument("--attention", choices=ATTENTION_IMPLS, default="blockwise",
                        help="attention implementation (the same for both variants)")
    # XLA's CPU compiler has no bfloat16 matmul and converts frozen bfloat16 weights to float32
    # (docs/post-training.md); an accelerator's compiler shows what a step needs where it runs.
    parser.add_argument("--topology", metavar="NAME",
                        help="compile for the first chip of this TPU topology (e.g. v5p:2x2x1) with libtpu's "
                        "compiler instead of for the default backend; needs libtpu, not a TPU")
    # One chunk's float32 logits and their gradient are alive at a time (train/loss.py); the
    # default chunk holds 1 GiB of logits (1,024 tokens of a 256K vocabulary).
    parser.add_argument("--gpu-target", metavar="FILE",
                        help="compile for the GPU this XLA GpuTargetConfig text proto describes (e.g. "
                        "benchmarks/h100_target.txtpb) with XLA's GPU compiler; needs jax's CUDA plugin, not a GPU")
    parser.add_argument("--logits-chunk", type=int, default=None, metavar="TOKENS",
                        help="tokens per chunk of the loss's vocabulary projection, both variants (default: "
                        "train/loss.py's, the most whose logits fit 1 GiB)")
    parser.add_argument("--breakdown", type=int, default=0, metavar="N",
                        help="also list each variant's N largest buffers (XLA's memory-usage report)")
    args = parser.parse_args()
    if args.topology and args.gpu_target:
        parser.error("--topology and --gpu-target name two targets: give one")
    dump_dir = tempfile.mkdtemp(prefix="lora-memory-") if args.breakdown else None
    if dump_dir:  # read when the backend starts, below
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump_dir}".strip()
    config = override(get_preset(args.preset).text_only, remat=args.remat, scan_layers=not args.unrolled,
                      attention_impl=args.attention)
    mesh = sharding.make_mesh(sharding.MeshShape(), devices=target_devices(args.topology, args.gpu_target)[:1])
    optimizer = OptimizerConfig(total_steps=10_000)
    lora_config = LoraConfig(rank=args.rank, alpha=2.0 * args.rank)

    full_model = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
    lora_model = nnx.eval_shape(lambda: freeze_base(apply_lora(Gemini(config, rngs=nnx.Rngs(0)), lora_config,
                                                               nnx.Rngs(1))))
    results: dict[str, Any] = {
        "preset": args.preset, "text_only": True, "batch": args.batch, "seq_len": args.seq_len,
        "remat": args.remat, "scan_layers": config.scan_layers,
        "attention": args.attention, "dtype": str(config.dtype), "lora_rank": args.rank, "lora_alpha": lora_config.alpha,
        "lora_targets": list(lora_config.targets), "compiled_for": mesh.devices.flat[0].device_kind,
        "jax": jax.__version__,
    }
    chunk = args.logits_chunk
    results["logits_chunk_tokens"] = chunk or logits_chunk_tokens(config.vocab_size)
    results["full"] = step_memory(Trainer(full_model, optimizer, mesh=mesh, logits_chunk_tokens=chunk),
                                  batch=args.batch, seq_len=args.seq_len)
    if dump_dir:
        results["full"]["largest_buffers"] = largest_buffers(dump_dir, args.breakdown)
    results["lora"] = step_memory(LoraTrainer(lora_model, optimizer, mesh=mesh, logits_chunk_tokens=chunk),
                                  batch=args.batch, seq_len=args.seq_len)
    if dump_dir:
        results["lora"]["largest_buffers"] = largest_buffers(dump_dir, args.breakdown)
        shutil.rmtree(dump_dir)
    results["lora_over_full"] = round(results["lora"]["total_bytes"] / results["full"]["total_bytes"], 3)
    results["goal_met"] = results["lora_over_full"] <= 1 / 3
    print(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
