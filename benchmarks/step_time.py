"""Training-step time of the demo model on a VQA-shaped batch, by batch size (prints JSON).

    python benchmarks/step_time.py [--preset demo] [--seq-len 40] [--batch-sizes 1,8,32] [--steps 50]

One compiled step (forward, backward, AdamW) per batch size, timed after a warm-up step.
Ratios against batch 1 show how much of a step is fixed overhead on this machine: on two
CPU cores, small batches cost little more than a single row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import numpy as np
from flax import nnx

from gemini_jax.config import get_preset
from gemini_jax.model import Gemini
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.trainer import Trainer


def vqa_batch(config, *, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tokens with one image of `image_soft_tokens` slots after 5 text tokens and 2 scored answer tokens."""
    vision = config.vision
    rng = np.random.default_rng(seed)
    n_img = vision.num_soft_tokens(vision.max_patches)
    tokens = rng.integers(20, config.vocab_size, (batch_size, seq_len)).astype(np.int32)
    tokens[:, 5:5 + n_img] = config.image_token_id
    spans = np.zeros((batch_size, seq_len), np.int32)
    spans[:, 5:5 + n_img] = 1
    loss_mask = np.zeros((batch_size, seq_len), np.float32)
    loss_mask[:, -3:-1] = 1.0
    side = math.isqrt(vision.max_patches)  # a square image's grid
    coords = np.stack(np.divmod(np.arange(vision.max_patches), side), axis=-1)  # [P, 2] (row, column)
    return {
        "tokens": tokens, "targets": np.roll(tokens, -1, axis=1), "loss_mask": loss_mask,
        "segment_ids": np.ones((batch_size, seq_len), np.int32),
        "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch_size, 1)), "media_spans": spans,
        "image_patches": rng.uniform(-1, 1, (batch_size, 1, vision.max_patches, vision.patch_dim)).astype(np.float32),
        "image_coords": np.broadcast_to(coords, (batch_size, 1, *coords.shape)).astype(np.int32),
        "image_patch_mask": np.ones((batch_size, 1, vision.max_patches), bool),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", help="model preset")
    parser.add_argument("--seq-len", type=int, default=40, help="tokens per row (a demo VQA row is 35-48)")
    parser.add_argument("--batch-sizes", default="1,8,32", help="comma-separated batch sizes")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per batch size")
    args = parser.parse_args()

    config = get_preset(args.preset)
    trainer = Trainer(Gemini(config, rngs=nnx.Rngs(0)), OptimizerConfig(total_steps=10_000))
    results = {}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        batch = vqa_batch(config, batch_size=batch_size, seq_len=args.seq_len)
        jax.block_until_ready(trainer.step(batch))  # compile
        start = time.perf_counter()
        for _ in range(args.steps):
            metrics = trainer.step(batch)
        jax.block_until_ready(metrics)
        results[batch_size] = (time.perf_counter() - start) / args.steps * 1000
    smallest = min(results)
    print(json.dumps({
        "preset": args.preset, "seq_len": args.seq_len, "device": str(jax.devices()[0]), "cpus": os.cpu_count(),
        "step_ms": {str(b): round(ms, 2) for b, ms in results.items()},
        "ms_per_row": {str(b): round(ms / b, 3) for b, ms in results.items()},
        "step_ratio_vs_smallest_batch": {str(b): round(ms / results[smallest], 2) for b, ms in results.items()},
    }, indent=2))


if __name__ == "__main__":
    main()
