"""What a demo video batch costs, by frame setting: reading it and training on it (prints JSON).

    python benchmarks/video_frames.py [--cache-dir DIR] [--batches 40] [--steps 30]

For each setting of the vision encoder's frames (patches per frame, how frame queries pool),
one process: build the demo's video stream (`demo._task_streams`, as training does), time
its first `--batches` batches (the clips are decoded, resized and cut into patches on first
use: the first epoch's cost) and then `--steps` compiled training steps on one of them (after
a warm-up step). A VQA batch's step is timed alongside, as the unit of the demo's other
batches. Ratios are against the first setting, the demo preset's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import time

import jax
from flax import nnx

from gemini_jax import demo
from gemini_jax.config import get_preset
from gemini_jax.data.demo import DemoCorpus
from gemini_jax.data.encode import MediaCache
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.model import Gemini
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.trainer import Trainer

# (name, vision overrides); the first is the preset unchanged.
SETTINGS = (
    ("preset", {}),
    ("4x4-grid", {"frame_max_patches": 16, "frame_pooling": "grid"}),
)


def time_steps(trainer: Trainer, batch, steps: int) -> float:
    """Mean seconds per compiled training step on `batch`."""
    jax.block_until_ready(trainer.step(batch))  # compile
    start = time.perf_counter()
    for _ in range(steps):
        metrics = trainer.step(batch)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


def measure(corpus: DemoCorpus, tokenizer: Tokenizer, config, *, batches: int, steps: int) -> dict:
    recipe = demo.DemoRecipe()
    cache = MediaCache(max_bytes=2 << 30)
    row = {}
    for task in ("video", "vqa"):
        (stream, _), = demo._task_streams(corpus, task, tokenizer=tokenizer, config=config, recipe=recipe,
                                         media_cache=cache).values()
        start = time.perf_counter()
        first = list(itertools.islice(iter(stream), batches))
        read_s = (time.perf_counter() - start) / batches
        trainer = Trainer(Gemini(config, rngs=nnx.Rngs(0)), OptimizerConfig())
        row[task] = {"read_ms_per_batch": round(read_s * 1000, 1),
                     "step_ms": round(time_steps(trainer, first[-1], steps) * 1000, 1),
                     "seq_len": int(first[-1]["tokens"].shape[1])}
        if "frame_patches" in first[-1]:
            row[task]["frame_patches_shape"] = list(first[-1]["frame_patches"].shape)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=None, help="demo corpus cache (default: as `gemini-jax train`)")
    parser.add_argument("--batches", type=int, default=40, help="first-epoch batches read per setting")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per setting and task")
    args = parser.parse_args()

    corpus = DemoCorpus.build(args.cache_dir, progress=False)
    preset = get_preset("demo")
    tokenizer = Tokenizer.load(demo.prepare_tokenizer(corpus, vocab_size=preset.vocab_size))
    results = {}
    for name, overrides in SETTINGS:
        config = dataclasses.replace(preset, vision=dataclasses.replace(preset.vision, **overrides))
        results[name] = {"vision": overrides, **measure(corpus, tokenizer, config, batches=args.batches,
                                                       steps=args.steps)}
    base = results[SETTINGS[0][0]]["video"]
    for row in results.values():
        row["video"]["step_ratio"] = round(row["video"]["step_ms"] / base["step_ms"], 2)
        row["video"]["read_ratio"] = round(row["video"]["read_ms_per_batch"] / base["read_ms_per_batch"], 2)
    print(json.dumps({"device": str(jax.devices()[0]), "cpus": os.cpu_count(), "settings": results}, indent=2))


if __name__ == "__main__":
    main()
