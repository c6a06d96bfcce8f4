"""The demo's input pipeline alone: CPU seconds it spends per 1,000 batches (prints JSON).

    python benchmarks/demo_input.py [--batches 7000] [--steps 10000]

Builds the demo's training stream exactly as `gemini-jax train` does (corpus and prepared data
from the cache, built if missing) and reads `--batches` batches with no training step, timing the
process's CPU (every thread; hashing the batches included) and wall clock per 1,000. On two cores the step and the pipeline share
the processors, so the pipeline's CPU is what it takes from the step. The SHA-256 of every batch
read (keys, dtypes, bytes) shows whether a change to the pipeline changed what the model sees:
run it on two commits and compare `digest`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=7000, help="batches to read (default 7000)")
    parser.add_argument("--steps", type=int, default=10_000,
                        help="the run length the stages are laid out for (default 10000, the demo's)")
    args = parser.parse_args()

    from gemini_jax.recipes.demo import DemoRecipe
    from gemini_jax.recipes.runner import Timings

    recipe = DemoRecipe()
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=args.steps, progress=False))
    with tempfile.TemporaryDirectory() as run_dir:
        stream = iter(recipe.setup(Path(run_dir), Timings()).data)
        digest = hashlib.sha256()
        per_thousand = []
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(args.batches):
            batch = next(stream)
            for key in sorted(batch):
                digest.update(key.encode())
                digest.update(str(batch[key].dtype).encode())
                digest.update(batch[key].tobytes())
            if (i + 1) % 1000 == 0 or i + 1 == args.batches:
                now_cpu, now_wall = time.process_time(), time.perf_counter()
                per_thousand.append({"batches": i + 1, "cpu_s": round(now_cpu - cpu, 2),
                                     "wall_s": round(now_wall - wall, 2)})
                cpu, wall = now_cpu, now_wall
    print(json.dumps({"batches": args.batches, "cpu_s": round(sum(p["cpu_s"] for p in per_thousand), 1),
                      "per_thousand": per_thousand, "digest": digest.hexdigest()}, indent=1))


if __name__ == "__main__":
    main()
