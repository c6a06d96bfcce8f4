"""Safety-tuning data (`gemini-jax safety data --out DIR`): contents-format JSONL files to prepare
and fine-tune on, and a mixture file that also replays the demo's own tasks.

    files = write_tuning_data("data/safety", policy=load_policy(), corpus=DemoCorpus.build())

Written to DIR:
- `refusals.jsonl`: the policy's TRAIN refuse requests, plain and under every red-team wrapper,
  each answered with the policy's refusal (task "safety_refuse");
- `allowed.jsonl`: its TRAIN allow requests (benign look-alikes), plain and wrapped, each answered
  with HELPFUL_REPLY, a short non-refusal: the demo cannot really answer them, and what is
  taught and measured is only that it does not refuse them (task "safety_allow");
- `hedging.jsonl`: the demo's TRAIN easy-VQA images asked about a shape or colour they do not hold,
  answered "There is no triangle in the image.", each beside the same question about what the
  image holds, answered as easy-VQA answers it, so that hedging is taught as a contrast rather
  than as a reply to the template (task "hedging");
- `attribution.jsonl`: TRAIN passages and questions, answered with the passage's fact (task
  "attribution");
- `mixture.yaml`: those four (prepared into DIR/prepared) and a replay share of the demo's prepared
  VQA, speech, video and code (data/corpora/demo_prepared.py), so that task accuracy holds.

Nothing of validation or test is written: requests by their template's split, images by the demo
corpus's split, passages by their own (tests/test_safety_evals.py checks each). Given the run to
tune (`length`), text examples longer than its context (requests under the base64 wrapper grow
several-fold) are left out and counted, and each text source's rows are as long as its longest
example: training sizes a source's rows from a sample of it, which the long tail would exceed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gemini_jax.data.examples import Content, Example, Part, to_json
from gemini_jax.safety.attribution import passages
from gemini_jax.safety.hedging import hedge_items
from gemini_jax.safety.policy import Policy
from gemini_jax.safety.requests import MAX_PER_TEMPLATE, policy_requests, red_team, sft_examples

HELPFUL_REPLY = "Sure, I can help with that. Here is some general, safe information to start with."
TRAIN_PASSAGES = 3000
PREPARED = "prepared"  # DIR/prepared: where the printed `data prepare` command writes the four files
# Mixture weights: the four safety sources and the demo's replay (two fifths of each batch), and the
# tuning the printed command runs; chosen on validation (docs/safety.md, "Tuning the demo").
WEIGHTS = {"refusals": 2.0, "allowed": 2.0, "hedging": 2.0, "attribution": 1.0,
           "vqa": 2.0, "asr": 1.5, "video": 1.0, "text": 0.25}
TUNING_STEPS, TUNING_LEARNING_RATE = 4000, 3e-3
SOURCES = {"refusals": "safety_refuse", "allowed": "safety_allow", "hedging": "hedging", "attribution": "attribution"}
REPLAY = {"vqa": {"cache": True}, "asr": {"buckets": 2, "augment": "specaugment", "cache": True},
          "video": {"cache": True}, "text": {"seq_len": 128, "batch_size": 16}}  # as recipes/demo.yaml reads them
EVAL_TASKS = ["vqa", "asr", "video", "safety", "hedging", "attribution"]


@dataclasses.dataclass(frozen=True)
class TuningFiles:
    out: Path
    counts: dict[str, int]  # examples per file (refusals, allowed, hedging, attribution)
    too_long: dict[str, int]  # examples left out per file for not fitting the run's context
    seq_len: dict[str, int]  # row length per text source, where the run was given
    mixture: Path
    replay: Path | None  # the demo's prepared sources the mixture replays; None: no replay

    def prepare_command(self, run: str = "runs/demo") -> str:
        """The `data prepare` command for the four files (every filter off: the safety filter would
        drop the refuse requests, dedup the shared replies; no validation split: the evaluations'
        `_validation` tasks are the held-out sets)."""
        files = " ".join(str(self.out / f"{name}.jsonl") for name in SOURCES)
        return (f"gemini-jax data prepare {files} --out {self.out / PREPARED} --tokenizer {run} "
                "--validation-fraction 0 --no-normalize --no-quality --no-safety --no-dedup --no-near-dedup "
                "--no-decontaminate")

    def train_command(self, run: str = "runs/demo", run_dir: str = "runs/demo-safety") -> str:
        return (f"gemini-jax train --data {self.mixture} --init-from {run} --run-dir {run_dir} "
                f"--steps {TUNING_STEPS} --learning-rate {TUNING_LEARNING_RATE:g}")


def tuning_examples(policy: Policy, corpus: Any, *, max_per_template: int = MAX_PER_TEMPLATE,
                    train_passages: int = TRAIN_PASSAGES) -> dict[str, list[Example]]:
    """The four sets of training examples, by source name (SOURCES), from the TRAIN split only."""
    train = [r for r in policy_requests(policy, max_per_template=max_per_template) if r.split == "train"]
    sft = sft_examples([*train, *red_team(train)], policy)
    helpful = Content("model", (Part(text=HELPFUL_REPLY),))
    hedging = []
    for item in hedge_items(corpus.records("vqa", "train")):
        for question, reply in ((item.unanswerable, item.hedge), (item.answerable, item.answer)):
            asked = item.prompt(question)
            hedging.append(dataclasses.replace(asked, contents=(*asked.contents, Content("model", (Part(text=reply),))),
                                               task=SOURCES["hedging"]))
    attribution = []
    for p in passages("train", train_passages):
        asked = p.prompt()
        attribution.append(dataclasses.replace(asked, contents=(*asked.contents, Content("model", (Part(text=p.answer),)))))
    return {
        "refusals": [dataclasses.replace(e, task=SOURCES["refusals"]) for e in sft.refusals],
        "allowed": [dataclasses.replace(e, contents=(*e.contents, helpful), task=SOURCES["allowed"]) for e in sft.prompts],
        "hedging": hedging,
        "attribution": attribution,
    }


TEXT_SOURCES = ("refusals", "allowed", "attribution")  # the sets whose length varies with their text


def write_tuning_data(out: str | os.PathLike, *, policy: Policy, corpus: Any, replay: Path | None,
                      max_per_template: int = MAX_PER_TEMPLATE, train_passages: int = TRAIN_PASSAGES,
                      length: Callable[[Example], int | None] | None = None) -> TuningFiles:
    """The four JSONL files and mixture.yaml in `out`; `replay` is the folder of the demo's
    prepared sources (`prepare_demo_sources(corpus)`), or None for a mixture without replay;
    `length(example)`: a text example's row length for the run to tune, None where it does not
    fit (`run_lengths`); None: keep every example and let training size the rows."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sets = tuning_examples(policy, corpus, max_per_template=max_per_template, train_passages=train_passages)
    too_long, seq_len = dict.fromkeys(sets, 0), {}
    if length is not None:
        for name in TEXT_SOURCES:
            lengths = [length(e) for e in sets[name]]
            kept = [e for e, n in zip(sets[name], lengths) if n is not None]
            too_long[name] = len(sets[name]) - len(kept)
            sets[name] = kept
            if kept:
                seq_len[name] = 8 * math.ceil(max(n for n in lengths if n is not None) / 8)
    for name, examples in sets.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(to_json(e), ensure_ascii=False) + "\n" for e in examples)
    sources: dict[str, dict[str, Any]] = {
        name: {"path": PREPARED, "tasks": [task], **({"seq_len": seq_len[name]} if name in seq_len else {})}
        for name, task in SOURCES.items()}
    if replay is not None:
        sources |= {name: {"path": str(Path(replay).resolve() / name), **spec} for name, spec in REPLAY.items()}
    mixture = {"sources": sources, "weights": {name: WEIGHTS[name] for name in sources}, "eval_tasks": EVAL_TASKS}
    path = out / "mixture.yaml"
    path.write_text("# Safety tuning (gemini-jax safety data): the four safety sources, prepared into "
                    f"{PREPARED}/,\n# and a replay of the demo's own tasks so that their accuracy holds.\n"
                    + yaml.safe_dump(mixture, sort_keys=False), encoding="utf-8")
    return TuningFiles(out=out, counts={name: len(v) for name, v in sets.items()}, too_long=too_long,
                       seq_len=seq_len, mixture=path, replay=replay)


def run_lengths(run_dir: str | os.PathLike) -> Callable[[Example], int | None]:
    """An example's length in tokens, encoded for training with the run's tokenizer; None where
    it exceeds the run's context."""
    from gemini_jax import checkpoint
    from gemini_jax.data.encode import EncodeError, encode_example
    from gemini_jax.data.tokenizer import Tokenizer

    config = checkpoint.read_config(run_dir)
    tokenizer = Tokenizer.load(checkpoint.tokenizer_path(run_dir))

    def length(example: Example) -> int | None:
        try:
            return len(encode_example(example, tokenizer=tokenizer, config=config)["tokens"])
        except EncodeError:
            return None

    return length
