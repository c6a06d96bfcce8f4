"""Host memory of one process that trains several demo runs in a row, with and without
`host_memory.release()` at the end of each run (prints JSON).

    python benchmarks/repeated_runs_memory.py --out /tmp/repeated --runs 3 --steps 200

Each mode trains its runs (seeds 0, 1, ...) in a process of its own, spawned fresh, and reports
that process's resident memory after each run; "without" replaces the release by a garbage
collection alone, as before it existed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
from pathlib import Path


def demo_recipe(run_dir: Path, *, steps: int, seed: int):
    from gemini_jax.recipes import demo

    recipe = demo.DemoRecipe(run_dir=str(run_dir), eval_limit=20)
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=steps, seed=seed, progress=False))


def resident_after_runs(recipes, *, release: bool) -> list[float]:
    """Trains each recipe in turn in this process; its resident memory (GB) after each."""
    import gc

    from gemini_jax import host_memory
    from gemini_jax.recipes import train_and_evaluate

    if not release:
        host_memory.release = gc.collect
    after = []
    for recipe in recipes:
        train_and_evaluate(recipe)
        after.append(round(host_memory.resident_bytes() / 1e9, 2))
    return after


def _child(out: Path, runs: int, steps: int, release: bool, results) -> None:
    mode = "with" if release else "without"
    recipes = [demo_recipe(out / mode / f"run{seed}", steps=steps, seed=seed) for seed in range(runs)]
    results[mode] = resident_after_runs(recipes, release=release)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs (two per run: with, without)")
    parser.add_argument("--runs", type=int, default=3, help="runs trained one after another in each process")
    parser.add_argument("--steps", type=int, default=200, help="training steps of each run")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.steps < 1:
        parser.error("--runs and --steps must be 1 or more")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {str(args.out)!r} is not empty: its runs would resume instead of training")
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        results = manager.dict()
        for release in (False, True):
            child = context.Process(target=_child, args=(args.out, args.runs, args.steps, release, results))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"the {'with' if release else 'without'} process failed (exit code {child.exitcode})")
        result = {"steps": args.steps, "resident_gb_after_each_run": dict(results),
                  "growth_gb": {mode: round(v[-1] - v[0], 2) for mode, v in results.items()}}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
