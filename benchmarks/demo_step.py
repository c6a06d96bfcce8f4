"""The demo's training step with its input pipeline running and on the same batches replayed
(prints JSON).

    python benchmarks/demo_step.py [--skip 2000] [--steps 300] [--repeats 2]

Builds the demo's stream as `gemini-jax train` does, reads `--skip` batches (to reach a stage;
rows read so far stay cached), compiles the step for every batch shape, then `--repeats` times:
`--steps` steps on batches read live from the pipeline, and the same batches again from memory.
Live minus replay is what the pipeline's threads take from the step on this machine; replay
alone is the step's own time, comparable between commits run in one session (the same machine
can be much faster or slower in another session).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip", type=int, default=2000, help="batches read before timing (default 2000)")
    parser.add_argument("--steps", type=int, default=300, help="steps per timing (default 300)")
    parser.add_argument("--repeats", type=int, default=2, help="live and replay timings each (default 2)")
    args = parser.parse_args()

    import jax
    from flax import nnx

    from gemini_jax.model import Gemini
    from gemini_jax.recipes.demo import DemoRecipe
    from gemini_jax.recipes.runner import Timings
    from gemini_jax.train.trainer import Trainer

    recipe = DemoRecipe()
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, progress=False))
    with tempfile.TemporaryDirectory() as run_dir:
        setup = recipe.setup(Path(run_dir), Timings())
        stream = iter(setup.data)
        for _ in range(args.skip):
            next(stream)
        optimizer = dataclasses.replace(recipe.train.optimizer, total_steps=recipe.train.steps)
        trainer = Trainer(Gemini(setup.config, rngs=nnx.Rngs(0)), optimizer)
        shapes = set()
        for batch in [next(stream) for _ in range(60)]:  # compile every shape met, untimed
            shape = tuple((k, v.shape) for k, v in sorted(batch.items()))
            if shape not in shapes:
                shapes.add(shape)
                jax.block_until_ready(trainer.step(batch))

        def timed(batches):
            cpu, wall, seen, metrics = time.process_time(), time.perf_counter(), [], None
            for batch in batches:
                seen.append(batch)
                metrics = trainer.step(batch)
            jax.block_until_ready(metrics)
            per_step = lambda s: round(1e3 * s / len(seen), 1)
            return seen, {"ms_per_step": per_step(time.perf_counter() - wall),
                          "cpu_ms_per_step": per_step(time.process_time() - cpu)}

        runs = []
        for _ in range(args.repeats):
            recorded, live = timed(next(stream) for _ in range(args.steps))
            _, replay = timed(recorded)
            runs.append({"live": live, "replay": replay})
    print(json.dumps({"skip": args.skip, "steps": args.steps, "shapes": len(shapes), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
