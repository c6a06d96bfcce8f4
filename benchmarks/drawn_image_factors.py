"""Which change of the robustness suite's drawn images costs a run its answers (prints JSON).

    python benchmarks/drawn_image_factors.py --runs runs/demo-s0 runs/demo-s1 runs/demo-s2

The suite's "images" kind changes three things at once: shapes of radius 3 or 22-30 (easy-VQA's
are mostly 5 to 17), dark backgrounds, pixel noise. Here each variant changes one (or all) of them
on easy-VQA-style scenes drawn by the suite's own renderer, and asks easy-VQA's templates as the
suite does (`robustness.scene_question`), but half of the yes/no questions about what is there
(the suite asks the plain set's 18%), so that both kinds are measured.
Accuracy is given per variant and per kind of question, the yes/no questions apart by whether
they ask about a shape or colour the picture holds ("present") or one it lacks ("absent"), since a
model can answer the second kind from its prior alone (docs/robustness.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from gemini_jax.data.corpora import robustness
from gemini_jax.data.corpora.question_forms import about_present
from gemini_jax.data.examples import Content, Example, Part

# (shape size, dark background, noise); "easy-vqa" sizes are radius 8-16, backgrounds 230-255 a channel.
VARIANTS = {
    "easy-vqa-like": ("easy-vqa", False, False), "small": ("small", False, False), "large": ("large", False, False),
    "dark": ("easy-vqa", True, False), "noise": ("easy-vqa", False, True),
    "small+dark+noise": ("small", True, True), "large+dark+noise": ("large", True, True),
}
SEED = 7  # of the scenes; the suite's own splits use 1 and 2


# How each variant draws its shape's radius: easy-VQA's sizes are mostly radius 5 to 17.
RADII = {"easy-vqa": lambda rng: int(rng.integers(8, 17)), "small": lambda rng: 3,
         "large": lambda rng: int(rng.integers(22, 31))}


def pale_background(rng: np.random.Generator) -> tuple[int, int, int]:
    """easy-VQA's: each channel in 230-255."""
    return tuple(int(v) for v in rng.integers(230, 256, size=3))


def scene(rng: np.random.Generator, size: str, dark: bool, noise: bool) -> tuple[str, str, np.ndarray]:
    """(shape, colour, uint8 [64, 64, 3]) of one scene of a variant, drawn as the suite draws its own."""
    shape, colour, _, pixels = robustness.scene(
        rng, pick_background=robustness.dark_background if dark else pale_background, pick_radius=RADII[size],
        noise=noise)
    return shape, colour, pixels


def questions(count: int, folder: Path) -> tuple[list[Example], list[tuple[str, str]]]:
    """`count` questions per variant, pictures written under `folder`; with (variant, kind) each."""
    examples, labels = [], []
    for v, (name, (size, dark, noise)) in enumerate(VARIANTS.items()):
        rng = np.random.default_rng([SEED, v])
        for i in range(count):
            shape, colour, pixels = scene(rng, size, dark, noise)
            question, answer, kind = robustness.scene_question(rng, shape, colour, present_share=0.5)
            if kind == "yes/no":
                kind = "present" if about_present(question, answer) else "absent"
            path = folder / f"{name}-{i}.png"
            Image.fromarray(pixels).save(path)
            examples.append(Example(contents=(Content("user", (Part(image=str(path)), Part(text=question))),
                                              Content("model", (Part(text=answer),))), task="vqa"))
            labels.append((name, kind))
    return examples, labels


def accuracies(run_dir: str, examples: list[Example], labels: list[tuple[str, str]]) -> dict[str, float]:
    from gemini_jax.api import load
    from gemini_jax.data.encode import MediaCache
    from gemini_jax.evals.tasks.demo import ANSWER_TOKENS, answer_questions
    from gemini_jax.sample.sampler import Sampler

    run = load(run_dir)
    sampler = Sampler(run.model, run.tokenizer, media_cache=MediaCache(max_bytes=1 << 30))
    scored = answer_questions(sampler, examples, batch_size=256, max_new_tokens=ANSWER_TOKENS["vqa"])
    groups: dict[str, list[bool]] = {}
    for (variant, kind), record in zip(labels, scored):
        for key in (variant, f"{variant}:{kind}"):
            groups.setdefault(key, []).append(record.correct)
    return {key: round(100.0 * float(np.mean(values)), 1) for key, values in groups.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="trained demo runs (directories) to ask")
    parser.add_argument("--count", type=int, default=150, help="questions per variant (default 150)")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error(f"--count must be 1 or more, got {args.count}")
    with tempfile.TemporaryDirectory() as folder:
        examples, labels = questions(args.count, Path(folder))
        runs = {run: accuracies(run, examples, labels) for run in args.runs}
    keys = list(next(iter(runs.values())))
    result = {"count": args.count, "variants": {k: list(v) for k, v in VARIANTS.items()}, "runs": runs,
              "mean": {k: round(float(np.mean([r[k] for r in runs.values()])), 1) for k in keys},
              "std": {k: round(float(np.std([r[k] for r in runs.values()], ddof=1)), 1) if len(runs) > 1 else 0.0
                      for k in keys}}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
