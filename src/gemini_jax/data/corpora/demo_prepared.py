"""The demo corpus as prepared data directories, one per task: what the demo's mixture file
(recipes/demo.yaml) names.

    root = prepare_demo_sources(corpus)   # <corpus root>/prepared-v2/{vqa,asr,video,text}, built once

Each task's training examples are written as contents-format JSONL and go through
`gemini-jax data prepare` like anyone's data, with its filters off (the corpus is built clean
and split by construction). Validation is left out (the recipe scores the demo's own
validation sets during training, by the corpus's split rule) and test stays in the corpus's
files. An example's `task` is "<task>:<kind>" ("vqa:shape", "asr:number"), which a mixture
source selects with `tasks:`.

Two changes teach questions and voices rather than one generator's strings and speeds
(docs/robustness.md measures them):
- each VQA and video question is written as a person might type it
  (`question_forms.typed_form`: three in ten in other words, from training templates disjoint
  from the robustness suite's; British or American spelling, either case of the first letter,
  with or without its question mark); the demo's case-marking tokenizer makes a capital one
  marker piece more, not other pieces;
- a third of the speech clips are played slower (0.6-0.9 times) and a third faster (1.1-1.3),
  tempo and pitch together (`augment.speed_perturbed`); a slowed clip may be longer than any
  spoken one (up to 4.8 s against 2.9 s), so that a slow speaker's long number is not the first
  audio of its length the model hears.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from filelock import FileLock

from gemini_jax.data.augment import speed_perturbed
from gemini_jax.data.corpora import speech
from gemini_jax.data.corpora.demo import TASKS, DemoCorpus, DemoRecord
from gemini_jax.data.corpora.question_forms import typed_form
from gemini_jax.data.examples import Content, Example, Part, to_json
from gemini_jax.data.prepared import MANIFEST

VERSION = 6  # of this export: a change prepares the sources again
SLOWER, FASTER = (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9), (1.1, 1.15, 1.2, 1.25, 1.3)
SPEED_SEED = 2  # the speeds drawn since version 2: a new version alone does not draw others
# Every stage that could change the corpus is off: the records are checked, embedded and sharded.
OPTIONS = {"validation_fraction": 0.0, "normalize": False, "quality": False, "safety": False, "dedup": False,
           "near_dedup": False, "decontaminate": False}


def prepare_once(out: Path, rows: Callable[[Path], Iterable[dict]], *, progress: bool) -> None:
    """`out`, a prepared data directory of `rows(scratch)` (contents-format JSON, media by absolute
    path; media it makes go under the folder `scratch`), unless it is already complete: written
    as JSONL beside it, then `data prepare`d (which embeds the media)."""
    from gemini_jax.data.prepare.pipeline import PrepareOptions, prepare

    if (out / MANIFEST).is_file():
        return
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        source = Path(tmp) / f"{out.name}.jsonl"
        with open(source, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows(Path(tmp)))
        prepare([str(source)], str(out), PrepareOptions(**OPTIONS, overwrite=True), progress=progress)


def task_rows(corpus: DemoCorpus, task: str, scratch: Path) -> Iterator[dict]:
    """The task's training examples as JSON, each `task` naming its kind; questions retyped and
    speech sped up or slowed down (the module's docstring), new clips written under `scratch`."""
    records = corpus.records(task, "train")
    for index, record in enumerate(records):
        example = record.example
        if task in ("vqa", "video"):
            question = record.meta["prompt"]
            example = _with_question(example, typed_form(question, f"{task}:{record.meta['media']}:{question}"))
        elif task == "asr":
            example = _with_speed(example, record, index, scratch=scratch)
        yield to_json(example) | {"task": f"{task}:{record.kind}"}


def _with_question(example: Example, question: str) -> Example:
    user, *rest = example.contents
    parts = tuple(Part(text=question) if p.text is not None else p for p in user.parts)
    return dataclasses.replace(example, contents=(Content("user", parts), *rest))


def _with_speed(example: Example, record: DemoRecord, index: int, *, scratch: Path) -> Example:
    rng = np.random.default_rng([SPEED_SEED, index])
    speed = (SLOWER[int(rng.integers(len(SLOWER)))], 1.0, FASTER[int(rng.integers(len(FASTER)))])[index % 3]
    if speed == 1.0:
        return example
    user, *rest = example.contents
    source = next(p.audio for p in user.parts if p.audio is not None)
    samples, _ = speech.read_wav(source)
    path = scratch / "speed" / f"{index:05d}.wav"
    path.parent.mkdir(exist_ok=True)
    speech.write_wav(path, speed_perturbed(samples, speed))
    parts = tuple(Part(audio=str(path)) if p.audio is not None else p for p in user.parts)
    return dataclasses.replace(example, contents=(Content("user", parts), *rest))


def prepare_demo_sources(corpus: DemoCorpus, *, progress: bool = True) -> Path:
    """The folder holding one prepared data directory per demo task, prepared on first use."""
    root = corpus.root / f"prepared-v{VERSION}"
    root.mkdir(exist_ok=True)
    with FileLock(root / ".lock"):  # one process prepares; the others of a run wait and reuse it
        for task in TASKS:
            prepare_once(root / task, lambda scratch, task=task: task_rows(corpus, task, scratch), progress=progress)
    return root
