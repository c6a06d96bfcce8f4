"""Distilled against from-scratch demo-half students over several teacher seeds (prints JSON).

    python benchmarks/distill_seeds.py runs/demo-s0 runs/demo-s1 runs/demo-s2 --steps 1000 --out runs/distill-seeds

For each teacher run (a `gemini-jax train --seed S` run), with S the teacher's own seed, two
demo-half students train for --steps on the same data stream, seed and schedule:

    gemini-jax distill --teacher TEACHER --student-preset demo-half --steps 1000 --seed S
    gemini-jax train --preset demo-half --steps 1000 --seed S

and each is evaluated on the demo's test sets at the end (the recipe's final evaluation, written
to the run's results.json). The JSON gives both arms per seed, their mean +- sample std, and
distilled minus scratch per seed and over seeds. Runs live under --out (distill-sS, scratch-sS):
a finished run is read back, an interrupted one resumes, so a rerun costs only what is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import seed_stats

from gemini_jax.recipes import DemoRecipe, distill_and_evaluate, train_and_evaluate
from gemini_jax.recipes.runner import RESULTS_FILE
from gemini_jax.train.distill import DistillConfig

TASKS = ("vqa", "asr", "video", "text")
HEADLINE = {"vqa": "exact_match", "asr": "exact_match", "video": "exact_match", "text": "perplexity"}


def teacher_seed(run: Path) -> int:
    """The seed the teacher run was trained with (its results.json's recipe)."""
    path = run / RESULTS_FILE
    if not path.is_file():
        raise SystemExit(f"teacher {str(run)!r} has no {RESULTS_FILE}: give a finished `gemini-jax train` run")
    return int(json.loads(path.read_text())["recipe"]["train"]["seed"])


def student(run_dir: Path, *, steps: int, seed: int) -> DemoRecipe:
    """`gemini-jax train --preset demo-half --steps STEPS --seed SEED --no-progress`'s recipe."""
    recipe = DemoRecipe(preset="demo-half", run_dir=str(run_dir))
    return dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=steps, seed=seed, progress=False))


def finished(run_dir: Path, steps: int) -> dict | None:
    """The final evaluation of a run that finished `steps` steps, or None (to train or resume)."""
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    done = results.get("recipe", {}).get("train", {}).get("steps") == steps and all(t in results for t in TASKS)
    return results if done else None


def train_arm(run_dir: Path, *, steps: int, seed: int, teacher: Path | None, config: DistillConfig) -> dict:
    results = finished(run_dir, steps)
    if results is None:
        recipe = student(run_dir, steps=steps, seed=seed)
        with contextlib.redirect_stdout(sys.stderr):  # the recipe prints its tables; stdout is the JSON
            if teacher is None:
                train_and_evaluate(recipe)
            else:
                distill_and_evaluate(recipe, teacher=str(teacher), config=config)
        results = finished(run_dir, steps)
    return {**seed_stats.numeric_metrics(results, TASKS), "training_s": results["run"]["training_s"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("teachers", nargs="+", type=Path, help="trained demo runs, one per seed")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of each student")
    parser.add_argument("--out", type=Path, default=Path("runs/distill-seeds"), help="where the students' runs live")
    parser.add_argument("--temperature", type=float, default=DistillConfig.temperature)
    parser.add_argument("--alpha", type=float, default=DistillConfig.alpha)
    args = parser.parse_args(argv)
    config = DistillConfig(temperature=args.temperature, alpha=args.alpha)
    seeds = [teacher_seed(t) for t in args.teachers]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"teachers share a seed ({seeds}): give runs trained with different --seed")
    start = time.perf_counter()
    distilled, scratch = [], []
    for teacher, seed in zip(args.teachers, seeds):
        distilled.append(train_arm(args.out / f"distill-s{seed}", steps=args.steps, seed=seed,
                                   teacher=teacher.resolve(), config=config))
        scratch.append(train_arm(args.out / f"scratch-s{seed}", steps=args.steps, seed=seed, teacher=None,
                                 config=config))
    quality = [{t: r[t] for t in TASKS} for r in distilled], [{t: r[t] for t in TASKS} for r in scratch]
    summary = {arm: seed_stats.summarize(q) for arm, q in zip(("distilled", "scratch"), quality)}
    diff = seed_stats.difference(*quality)
    report = {
        "command": "python benchmarks/distill_seeds.py " + " ".join(map(str, args.teachers))
        + f" --steps {args.steps} --out {args.out}",
        "teachers": [str(t) for t in args.teachers], "seeds": seeds, "steps": args.steps,
        "distill": dataclasses.asdict(config), "student_preset": "demo-half",
        "headline": {arm: seed_stats.brief(s, HEADLINE) for arm, s in summary.items()}
        | {"distilled - scratch": seed_stats.brief(seed_stats.summarize(diff), HEADLINE)},
        "distilled": {"per_seed": distilled, **summary["distilled"]},
        "scratch": {"per_seed": scratch, **summary["scratch"]},
        "distilled - scratch": {"per_seed": diff, **seed_stats.summarize(diff)},
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
