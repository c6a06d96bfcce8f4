"""Compile time of the training step, decoder blocks unrolled vs one `lax.scan` (prints JSON).

    python benchmarks/compile_time.py                       # nano-1, 1 x 2,048 tokens
    python benchmarks/compile_time.py --preset demo --seq-len 256 --batch 8

The step is built from abstract parameters (nnx.eval_shape) on a one-device mesh, lowered and
compiled for the default backend without allocating a weight or running anything, once with
`scan_layers=False` and once with `scan_layers=True`. Reported per variant: seconds to lower,
seconds to compile, and the compiled program's temporary memory (XLA's memory analysis).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from gemini_jax import sharding
from gemini_jax.config import REMAT_POLICIES, get_preset, override
from gemini_jax.model import Gemini
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.trainer import Trainer


def compile_step(config, *, batch: int, seq_len: int) -> dict[str, Any]:
    mesh = sharding.make_mesh(sharding.MeshShape(data=1, fsdp=1, tensor=1))
    abstract = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
    trainer = Trainer(abstract, OptimizerConfig(total_steps=10_000), mesh=mesh)
    shapes = {k: jax.ShapeDtypeStruct((batch, seq_len), np.float32 if k == "loss_mask" else np.int32)
              for k in ("tokens", "targets", "loss_mask", "segment_ids", "positions", "media_spans", "loss_positions")}
    start = time.perf_counter()
    lowered = trainer.lower(shapes)
    lowered_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    return {"lower_s": round(lowered_s, 2), "compile_s": round(compile_s, 2),
            "temp_bytes": None if memory is None else int(memory.temp_size_in_bytes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano-1", help="model preset (the text decoder is compiled)")
    parser.add_argument("--batch", type=int, default=1, help="rows per step")
    parser.add_argument("--seq-len", type=int, default=2048, help="tokens per row")
    parser.add_argument("--remat", choices=REMAT_POLICIES, default="none", help="decoder block remat policy")
    args = parser.parse_args()
    config = override(get_preset(args.preset).text_only, remat=args.remat)
    results: dict[str, Any] = {"preset": args.preset, "depth": config.depth, "batch": args.batch,
                               "seq_len": args.seq_len, "remat": args.remat, "backend": jax.default_backend(),
                               "jax": jax.__version__}
    for name, scan in (("unrolled", False), ("scan", True)):
        results[name] = compile_step(override(config, scan_layers=scan), batch=args.batch, seq_len=args.seq_len)
    results["compile_speedup"] = round(results["unrolled"]["compile_s"] / results["scan"]["compile_s"], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
