"""How the demo pools a video frame into soft tokens, compared over seeds (prints JSON).

    python benchmarks/frame_pooling_seeds.py --seeds 0 1 2 --out runs/frame-pooling
    python benchmarks/frame_pooling_seeds.py --seeds 0 1 2 --demo-runs runs/demo-s0 runs/demo-s1 runs/demo-s2

Three arms, each the whole demo recipe (`gemini-jax train --seed S`) with only the frame pooling
of its vision encoder changed:

- grid+frame: the demo's own (`frame_pooling="grid+frame"`, 5 tokens a frame: four that each pool
  one cell of a 2 x 2 grid over the frame, a fifth the whole frame);
- grid: the four cells alone (4 tokens);
- frame: learned queries over the whole frame alone (`"attention"`, 4 tokens).

Each run is scored on the demo's validation sets (the recipe choice is made there; the test sets
are the recipe's own end-of-training table, in each run's results.json). The JSON gives per arm
and seed the validation metrics (video by question kind), their mean +- sample std, and each
arm minus grid+frame per seed. Runs live under --out (<arm>-sS), each trained in a process of
its own; a finished run is read back, an interrupted one resumes. `--demo-runs` names finished
`gemini-jax train --seed S` runs to use as the grid+frame arm instead of training it again (each
is checked to be the demo preset at its seed).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import multiprocessing
import sys
import time
from pathlib import Path

import seed_stats

from gemini_jax.config import FramePooling, ModelConfig, get_preset
from gemini_jax.recipes import DemoRecipe, train_and_evaluate
from gemini_jax.recipes.runner import RESULTS_FILE, recipe_as_json

TASKS = ("vqa", "asr", "video", "text")
HEADLINE = {"vqa": "exact_match", "asr": "exact_match", "video": "exact_match", "text": "perplexity"}
DEMO_ARM = "grid+frame"
ARMS = {DEMO_ARM: (FramePooling.GRID_AND_FRAME, 5), "grid": (FramePooling.GRID, 4),
        "frame": (FramePooling.ATTENTION, 4)}


def arm_model(arm: str) -> ModelConfig:
    """The demo preset with `arm`'s frame pooling."""
    pooling, tokens = ARMS[arm]
    demo = get_preset("demo")
    return dataclasses.replace(demo, vision=dataclasses.replace(demo.vision, frame_pooling=pooling,
                                                                frame_soft_tokens=tokens))


def trained(run_dir: Path, arm: str, seed: int, steps: int | None) -> Path:
    """`run_dir`, trained first (or resumed) unless its results.json says it finished; a finished
    run of other steps, seed or pooling is refused rather than mixed in."""
    recipe = DemoRecipe(run_dir=str(run_dir), model=None if arm == DEMO_ARM else arm_model(arm))
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(
        recipe.train, seed=seed, steps=steps or recipe.train.steps, progress=False))
    results = run_dir / RESULTS_FILE
    if results.is_file():
        done = json.loads(results.read_text())["recipe"]
        wanted = recipe_as_json(recipe)
        differ = [key for key in ("model", "preset") if done.get(key) != wanted[key]]
        differ += [f"train.{key}" for key in ("steps", "seed") if done["train"].get(key) != wanted["train"][key]]
        if differ:
            raise SystemExit(f"{str(run_dir)!r} is a finished run whose {', '.join(differ)} differ from the {arm} arm "
                             f"at seed {seed}: move it away or give another --out")
        return run_dir
    # Each run trains in a process of its own, which gives back all its memory when it ends.
    child = multiprocessing.get_context("spawn").Process(target=_train, args=(recipe,))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"training {str(run_dir)!r} failed (exit code {child.exitcode}); rerun to resume it")
    return run_dir


def _train(recipe: DemoRecipe) -> None:
    with contextlib.redirect_stdout(sys.stderr):  # the recipe prints its tables; stdout is the JSON
        train_and_evaluate(recipe)


def check_demo_run(run: Path, seed: int, steps: int | None = None) -> None:
    """A run given for the grid+frame arm must be the demo preset trained at `seed` for `steps`
    (None: the recipe's)."""
    path = run / RESULTS_FILE
    if not path.is_file():
        raise SystemExit(f"{str(run)!r} has no {RESULTS_FILE}: give finished `gemini-jax train --seed S` runs")
    recipe = json.loads(path.read_text())["recipe"]
    problems = [f"seed {recipe['train']['seed']} (wanted {seed})"] if recipe["train"]["seed"] != seed else []
    if recipe.get("model") is not None or recipe.get("preset") != "demo":
        problems.append("not the demo preset")
    steps = steps or DemoRecipe().train.steps
    if recipe["train"].get("steps") != steps:
        problems.append(f"{recipe['train'].get('steps')} steps (wanted {steps})")
    if problems:
        raise SystemExit(f"{str(run)!r} cannot be the {DEMO_ARM} arm at seed {seed}: {', '.join(problems)}")


def validation(run: Path, cache: Path) -> dict:
    """The demo's validation sets scored on `run` (numeric metrics), read from `cache` once written."""
    return seed_stats.numeric_metrics(seed_stats.evaluated(run, cache, split="validation"), TASKS)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds, one run per arm each")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="frame poolings compared")
    parser.add_argument("--out", type=Path, default=Path("runs/frame-pooling"),
                        help="where the runs and their validation scores live")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of each run (default: the demo recipe's; fewer is a quick look, not a measurement)")
    parser.add_argument("--demo-runs", type=Path, nargs="+", default=None,
                        help=f"finished demo runs, one per --seeds entry in order, used as the {DEMO_ARM} arm")
    args = parser.parse_args(argv)
    if args.demo_runs is not None and len(args.demo_runs) != len(args.seeds):
        raise SystemExit(f"--demo-runs gives {len(args.demo_runs)} runs for {len(args.seeds)} seeds: one per seed")
    start = time.perf_counter()
    per_arm = {}
    for arm in args.arms:
        per_arm[arm] = []
        for i, seed in enumerate(args.seeds):
            if arm == DEMO_ARM and args.demo_runs is not None:
                run = args.demo_runs[i]
                check_demo_run(run, seed, args.steps)
            else:
                run = trained(args.out / f"{arm}-s{seed}", arm, seed, args.steps)
            per_arm[arm].append(validation(run, args.out / f"{arm}-s{seed}-validation.json"))
    summary = {arm: seed_stats.summarize(runs) for arm, runs in per_arm.items()}
    report = {
        "command": "python benchmarks/frame_pooling_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seeds": args.seeds, "split": "validation",
        "arms": {arm: {"frame_pooling": ARMS[arm][0].value, "frame_soft_tokens": ARMS[arm][1]} for arm in args.arms},
        "headline": {arm: seed_stats.brief(s, HEADLINE) for arm, s in summary.items()},
        "per_arm": {arm: {"per_seed": per_arm[arm], **summary[arm]} for arm in args.arms},
    }
    if DEMO_ARM in per_arm:
        for arm in args.arms:
            if arm != DEMO_ARM:
                diff = seed_stats.difference(per_arm[arm], per_arm[DEMO_ARM])
                report[f"{arm} - {DEMO_ARM}"] = {"per_seed": diff, **seed_stats.summarize(diff)}
                report["headline"][f"{arm} - {DEMO_ARM}"] = seed_stats.brief(seed_stats.summarize(diff), HEADLINE)
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
