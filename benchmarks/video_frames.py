"""What a demo video batch costs, by frame setting: reading it and training on it (prints JSON).

    python benchmarks/video_frames.py [--cache-dir DIR] [--batches 40] [--steps 10] [--rounds 6]

For each setting of the vision encoder's frames (patches per frame, how frame queries pool):
build the demo's video stream (`custom.source_streams` over its prepared source, as training does) and time its first
`--batches` batches (the clips are decoded, resized and cut into patches on first use: the
first epoch's cost). Then compiled training steps on one batch per setting, with a VQA
batch's step as the unit of the demo's other batches: `--rounds` rounds of `--steps` steps
for each, the settings taking turns so that a slow spell of the machine hits them alike;
the median round is reported. Ratios are against the first setting.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import time

import jax
from flax import nnx

from gemini_jax.config import get_preset
from gemini_jax.data.corpora.demo import DemoCorpus
from gemini_jax.data.corpora.demo_prepared import prepare_demo_sources
from gemini_jax.data.mixture_file import load_mixture
from gemini_jax.data.prepared import open_prepared
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.model import Gemini
from gemini_jax.recipes import custom, demo
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.trainer import Trainer

# (name, vision overrides of the demo preset); ratios are against the first.
SETTINGS = (
    ("2x2-patches-attention", {"frame_max_patches": 4, "frame_pooling": "attention"}),
    ("4x4-patches-grid", {"frame_max_patches": 16, "frame_pooling": "grid"}),  # the preset's
)


def first_batches(corpus: DemoCorpus, tokenizer: Tokenizer, config, task: str, count: int) -> tuple[list, float]:
    """The first `count` batches of a task's training stream, and seconds per batch to read them."""
    source = load_mixture(demo.demo_mixture(), base=prepare_demo_sources(corpus, progress=False)).sources[task]
    (stream, _), = custom.source_streams(source, open_prepared(source.path), tokenizer=tokenizer, config=config,
                                         batch_size=demo.DemoRecipe().batch_size, seq_len=None, seed=0).values()
    start = time.perf_counter()
    batches = list(itertools.islice(iter(stream), count))
    return batches, (time.perf_counter() - start) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None, help="demo corpus cache (default: as `gemini-jax train`)")
    parser.add_argument("--batches", type=int, default=40, help="first-epoch video batches read per setting")
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=6, help="timed rounds per setting and task")
    args = parser.parse_args()

    corpus = DemoCorpus.build(args.cache_dir, progress=False)
    preset = get_preset("demo")
    tokenizer = Tokenizer.load(demo.prepare_tokenizer(corpus, vocab_size=preset.vocab_size))
    runs, results = {}, {}
    for name, overrides in SETTINGS:
        config = dataclasses.replace(preset, vision=dataclasses.replace(preset.vision, **overrides))
        video, read_s = first_batches(corpus, tokenizer, config, "video", args.batches)
        vqa, _ = first_batches(corpus, tokenizer, config, "vqa", 1)
        trainer = Trainer(Gemini(config, rngs=nnx.Rngs(0)), OptimizerConfig(total_steps=10_000))
        for batch in (video[-1], vqa[-1]):
            jax.block_until_ready(trainer.step(batch))  # compile
        runs[name] = (trainer, {"video": video[-1], "vqa": vqa[-1]})
        results[name] = {"vision": overrides, "video_read_ms_per_batch": round(read_s * 1000, 1),
                         "frame_patches_shape": list(video[-1]["frame_patches"].shape)}
    rounds = {(name, task): [] for name in runs for task in ("video", "vqa")}
    for _ in range(args.rounds):
        for (name, task), times in rounds.items():
            trainer, batches = runs[name]
            start = time.perf_counter()
            for _ in range(args.steps):
                metrics = trainer.step(batches[task])
            jax.block_until_ready(metrics)
            times.append((time.perf_counter() - start) / args.steps)
    for (name, task), times in rounds.items():
        results[name][f"{task}_step_ms"] = round(statistics.median(times) * 1000, 1)
    base = results[SETTINGS[0][0]]
    for row in results.values():
        for key in ("video_step_ms", "vqa_step_ms", "video_read_ms_per_batch"):
            row[key.replace("_ms", "").replace("_per_batch", "") + "_ratio"] = round(row[key] / base[key], 2)
    print(json.dumps({"device": str(jax.devices()[0]), "cpus": os.cpu_count(), "settings": results}, indent=2))


if __name__ == "__main__":
    main()
