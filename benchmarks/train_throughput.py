"""Training throughput: tokens/s, model TFLOP/s and MFU of the compiled step (prints JSON).

    python benchmarks/train_throughput.py --preset demo --seq-len 256 --batch 8 --steps 10
    python benchmarks/train_throughput.py --preset nano-1 --seq-len 2048 --batch 8 --remat dots \\
        --mesh data=1,fsdp=8,tensor=1 --peak-flops 989e12      # e.g. on 8 H100s

Text-only language-model batches (every position scored, one document per row), random
tokens, AdamW; the first step (compilation) is not timed.

Model FLOPs, counted the MaxText way (matmuls only; norms, softmax, RoPE and the optimizer
are left out, and remat's recomputation is not counted, so MFU is comparable across remat
policies). With D width, N query heads, K key/value heads, H head dimension, F MLP width,
V vocabulary, L layers, T sequence length, per token and forward:

    attention projections  2 * D * H * (2 * N + 2 * K)     q and o (N heads), k and v (K heads)
    GeGLU MLP              2 * 3 * D * F                    gate, up and down
    causal attention       2 * 2 * T * N * H / 2            q k^T and p v, half of them causal
                           (= 2 * 2 * T^2/2 * N * H per sequence and layer)
    logits                 2 * D * V                        tied embedding, every position

    forward per token = L * (projections + MLP + attention) + logits
    training FLOPs per step = 3 * forward per token * B * T     (backward = 2 x forward)

    TFLOP/s = training FLOPs per step * steps / seconds / 1e12
    MFU     = TFLOP/s * 1e12 / (peak_flops * devices)

The peak defaults to 989e12, an H100 SXM's dense bfloat16 rate. Peak memory is the first
device's `memory_stats()["peak_bytes_in_use"]` where the backend reports it (GPU, TPU), else
this process's peak resident set size (CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import numpy as np
from flax import nnx

import device_profile
from gemini_jax import sharding
from gemini_jax.config import (
    ATTENTION_IMPLS,
    REMAT_POLICIES,
    ModelConfig,
    get_preset,
    override,
)
from gemini_jax.model import Gemini
from gemini_jax.train.loss import logits_chunk_tokens
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train import Trainer, with_loss_positions

H100_DENSE_BF16 = 989e12


def flops_per_token(config: ModelConfig, seq_len: int) -> dict[str, float]:
    """Forward matmul FLOPs per token by part (see the module docstring)."""
    d, n, k, h, f = config.width, config.num_heads, config.num_kv_heads, config.head_dim, config.mlp_dim
    layers = config.depth
    parts = {
        "projections": layers * 2 * d * h * (2 * n + 2 * k),
        "mlp": layers * 2 * 3 * d * f,
        "attention": layers * 2 * 2 * seq_len * n * h / 2,
        "logits": 2 * d * config.vocab_size,
    }
    parts["forward"] = sum(parts.values())
    parts["train"] = 3 * parts["forward"]
    return parts


def lm_batch(config: ModelConfig, *, batch: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tokens, one document per row, every position scored."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(10, config.vocab_size, (batch, seq_len)).astype(np.int32)
    ones = np.ones((batch, seq_len), np.int32)
    return {
        "tokens": tokens, "targets": np.roll(tokens, -1, axis=1), "loss_mask": ones.astype(np.float32),
        "segment_ids": ones, "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch, 1)),
        "media_spans": np.zeros_like(ones),
    }


def peak_memory() -> dict[str, float | str]:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"peak_memory_gb": stats["peak_bytes_in_use"] / 1e9, "memory_source": "device memory_stats"}
    return {"peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "memory_source": "process peak RSS"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help="model preset")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per row")
    parser.add_argument("--batch", type=int, default=8, help="rows per step (global, over all devices)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after one untimed compiling step)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="compute dtype (default: preset's)")
    parser.add_argument("--remat", choices=REMAT_POLICIES, default="none", help="decoder block remat policy")
    parser.add_argument("--scan-layers", action="store_true",
                        help="run the decoder blocks as one lax.scan (ModelConfig.scan_layers)")
    parser.add_argument("--attention", choices=ATTENTION_IMPLS, default="auto",
                        help="attention implementation (auto: cuDNN on GPU in bfloat16, XLA elsewhere)")
    parser.add_argument("--logits-chunk", type=int, default=None,
                        help="tokens per vocabulary-projection chunk of the loss (default: train/loss.py's)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the loss alone and the loss with its gradients (no optimizer), "
                             "to see where a step's time goes")
    parser.add_argument("--mesh", default=None, help="data=D,fsdp=F,tensor=T over all devices (default: one device)")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="after the timed steps, trace --profile-steps more into DIR and add where their "
                             "device time goes (benchmarks/device_profile.py) to the JSON")
    parser.add_argument("--profile-steps", type=int, default=2, help="steps traced by --profile")
    parser.add_argument("--peak-flops", type=float, default=H100_DENSE_BF16,
                        help="peak FLOP/s of one device, the MFU denominator (default: H100 dense bf16)")
    args = parser.parse_args()

    config = override(get_preset(args.preset).text_only, remat=args.remat, scan_layers=args.scan_layers,
                      attention_impl=args.attention,
                      max_seq_len=max(args.seq_len, get_preset(args.preset).max_seq_len),
                      **({"dtype": args.dtype} if args.dtype else {}))
    mesh = None if args.mesh is None else sharding.make_mesh(sharding.MeshShape.parse(args.mesh))
    devices = 1 if mesh is None else mesh.size
    trainer = Trainer(Gemini(config, rngs=nnx.Rngs(0)), OptimizerConfig(total_steps=10_000), mesh=mesh,
                      logits_chunk_tokens=args.logits_chunk)
    batch = lm_batch(config, batch=args.batch, seq_len=args.seq_len)

    start = time.perf_counter()
    jax.block_until_ready(trainer.step(batch))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        metrics = trainer.step(batch)
    jax.block_until_ready((trainer.params, metrics))
    seconds = time.perf_counter() - start

    profile = {}
    if args.profile:
        with device_profile.traced(args.profile):
            for _ in range(args.profile_steps):
                metrics = trainer.step(batch)
            jax.block_until_ready((trainer.params, metrics))
        profile = {"profile": device_profile.summarize(args.profile, steps=args.profile_steps)}

    breakdown = {}
    if args.breakdown:  # after the timed steps: these programs hold their own buffers
        prepared = with_loss_positions(batch) if mesh is None else None
        if prepared is None:
            parser.error("--breakdown times one device only (no --mesh)")
        frozen = trainer.frozen_inputs()
        for name, fn in (("loss_forward_s", trainer._loss_fn), ("loss_and_gradients_s", trainer._gradients_fn)):
            jax.block_until_ready(fn(frozen, trainer.params, prepared))
            start = time.perf_counter()
            for _ in range(args.steps):
                out = fn(frozen, trainer.params, prepared)
            jax.block_until_ready(out)
            breakdown[name] = (time.perf_counter() - start) / args.steps
            del out

    flops = flops_per_token(config, args.seq_len)
    tokens = args.batch * args.seq_len * args.steps
    tflops = flops["train"] * tokens / seconds / 1e12
    print(json.dumps({
        "preset": args.preset, "dtype": config.dtype, "remat": args.remat, "scan_layers": args.scan_layers,
        "attention": args.attention,
        "logits_chunk_tokens": args.logits_chunk or logits_chunk_tokens(config.vocab_size), "seq_len": args.seq_len,
        "batch": args.batch, "steps": args.steps, "mesh": str(args.mesh or "none"), "devices": devices,
        "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
        "tokens_per_s": tokens / seconds, "step_s": seconds / args.steps, "compile_s": compile_s,
        "model_tflops_per_s": tflops, "mfu": tflops * 1e12 / (args.peak_flops * devices),
        "peak_flops_per_device": args.peak_flops, "train_flops_per_token": flops["train"],
        "loss": float(metrics["loss"]), **breakdown, **peak_memory(), **profile,
    }, indent=2))


if __name__ == "__main__":
    main()
