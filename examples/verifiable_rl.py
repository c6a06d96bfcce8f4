"""RL with a verifiable reward against continued supervised training, on a skill the demo is weak at.

The demo run answers "Which shape appears last?" about its clips far worse than its other video
questions (about 68% on test, against 97% for "first"). This script writes that skill's
questions as data for both ways of improving it, on the same prompts:

    python examples/verifiable_rl.py data/order_last
    # train.jsonl        the demo's training clips of this kind (its validation carve-out left out)
    # rl_train.jsonl     those `gemini-jax rl` trains on after its own 5% validation split,
    #                    which is also what continued supervised training gets
    # replay.jsonl       the demo's other training clips (direction, size, which comes first),
    #                    replayed beside them by sft_replay.yaml
    # validation.jsonl   300 new clips drawn by the demo's renderer: for choosing steps and rates
    # test.jsonl         500 more new clips, read once at the end (besides the demo's own test set)

    gemini-jax rl --data data/order_last/train.jsonl --init-from runs/demo --reward exact_match \\
        --validation-fraction 0.05 --test-fraction 0 --max-new-tokens 4 --steps 100 --run-dir runs/ol-rl
    gemini-jax data prepare data/order_last/rl_train.jsonl --out data/order_last/sft \\
        --tokenizer runs/demo --no-decontaminate --validation-fraction 0
    gemini-jax train --data data/order_last/sft.yaml --init-from runs/demo --steps 100 --batch-size 8 \\
        --run-dir runs/ol-sft      # 8 prompts a step, as RL draws
    gemini-jax data prepare data/order_last/replay.jsonl --out data/order_last/replay \\
        --tokenizer runs/demo --no-decontaminate --validation-fraction 0
    gemini-jax train --data data/order_last/sft_replay.yaml --init-from runs/demo --steps 100 \\
        --batch-size 16 --learning-rate 1e-3 --run-dir runs/ol-sft-replay
    gemini-jax eval --checkpoint runs/ol-rl --tasks prepared --data-dir data/order_last/validation.jsonl

New clips are drawn with the demo's own sampler and renderer and kept only when their parameters
differ from every demo clip, so they are held out from training as the demo's test clips are.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from gemini_jax.data.corpora import shapes
from gemini_jax.data.corpora.demo import DemoCorpus
from gemini_jax.recipes.rl import read_prompts, split_prompts

KIND = "order_last"
NEW_CLIPS = {"validation": 300, "test": 500}
RL_VALIDATION_FRACTION = 0.05  # what the commands above pass to `gemini-jax rl`


def example(video: Path, question: str, answer: str, group: str | None = None, kind: str = KIND) -> dict:
    line = {"contents": [{"role": "user", "parts": [{"video": str(video)}, {"text": question}]},
                         {"role": "model", "parts": [{"text": answer}]}], "task": f"video:{kind}"}
    return line | ({"group": group} if group else {})


def write_jsonl(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    print(f"wrote {path}: {len(lines)} questions")


def main(out: Path, seed: int = 20261204) -> None:
    out.mkdir(parents=True, exist_ok=True)
    corpus = DemoCorpus.build(None)
    train = [r for r in corpus.records("video", "train") if r.kind == KIND]
    lines = [example(corpus.root / r.meta["media"], r.meta["prompt"], r.meta["answer"], group=r.meta["media"])
             for r in train]
    write_jsonl(out / "train.jsonl", lines)
    # The prompts `gemini-jax rl` keeps for training after its own split: supervised training gets these.
    kept = split_prompts(read_prompts(out / "train.jsonl", max_bad_records=0),
                         validation_fraction=RL_VALIDATION_FRACTION, test_fraction=0.0)["train"]
    by_group = {line["group"]: line for line in lines}
    write_jsonl(out / "rl_train.jsonl", [by_group[p.group] for p in kept])
    (out / "sft.yaml").write_text("sources:\n  order_last: {path: sft}\n", encoding="utf-8")
    others = [r for r in corpus.records("video", "train") if r.kind != KIND]
    write_jsonl(out / "replay.jsonl", [example(corpus.root / r.meta["media"], r.meta["prompt"], r.meta["answer"], kind=r.kind)
                                       for r in others])
    (out / "sft_replay.yaml").write_text("sources:\n  order_last: {path: sft}\n  replay: {path: replay}\n"
                                         "weights: {order_last: 1, replay: 1}\n", encoding="utf-8")

    seen = {shapes.key(shapes.Order(**r.meta["params"])) for split in ("train", "validation", "test")
            for r in corpus.records("video", split) if r.meta["clip"] == "Order"}
    rng = np.random.default_rng(seed)
    for split, count in NEW_CLIPS.items():
        (out / split).mkdir(exist_ok=True)
        lines = []
        while len(lines) < count:
            clip = dataclasses.replace(shapes.sample(rng, kind="order", frames=8, size=32), ask_last=True)
            if shapes.key(clip) in seen:
                continue
            seen.add(shapes.key(clip))
            path = out / split / f"{len(lines):05d}.gif"
            shapes.save_gif(path, shapes.render(clip, frames=8, size=32))
            lines.append(example(path, clip.question(), clip.answer()))
        write_jsonl(out / f"{split}.jsonl", lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
