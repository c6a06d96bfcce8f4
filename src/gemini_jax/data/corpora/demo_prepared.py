"""The demo corpus as prepared data directories, one per task: what the demo's mixture file
(recipes/demo.yaml) names.

    root = prepare_demo_sources(corpus)   # <corpus root>/prepared-v1/{vqa,asr,video,text}, built once

Each task's training examples are written as contents-format JSONL and go through
`gemini-jax data prepare` like anyone's data, with its filters off (the corpus is built clean
and split by construction). Validation is left out (the recipe scores the demo's own
validation sets during training, by the corpus's split rule) and test stays in the corpus's
files. An example's `task` is "<task>:<kind>" ("vqa:shape", "asr:number"), which a mixture
source selects with `tasks:`.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from filelock import FileLock

from gemini_jax.data.corpora.demo import TASKS, DemoCorpus
from gemini_jax.data.examples import to_json
from gemini_jax.data.prepared import MANIFEST

VERSION = 1  # of this export: a change prepares the sources again
# Every stage that could change the corpus is off: the records are checked, embedded and sharded.
OPTIONS = {"validation_fraction": 0.0, "normalize": False, "quality": False, "safety": False, "dedup": False,
           "near_dedup": False, "decontaminate": False}


def prepare_once(out: Path, rows: Callable[[], Iterable[dict]], *, progress: bool) -> None:
    """`out`, a prepared data directory of `rows()` (contents-format JSON, media by absolute
    path), unless it is already complete: written as JSONL beside it, then `data prepare`d."""
    from gemini_jax.data.prepare.pipeline import PrepareOptions, prepare

    if (out / MANIFEST).is_file():
        return
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        source = Path(tmp) / f"{out.name}.jsonl"
        with open(source, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows())
        prepare([str(source)], str(out), PrepareOptions(**OPTIONS, overwrite=True), progress=progress)


def task_rows(corpus: DemoCorpus, task: str) -> Iterator[dict]:
    """The task's training examples as JSON, each `task` naming its kind."""
    for record in corpus.records(task, "train"):
        yield to_json(record.example) | {"task": f"{task}:{record.kind}"}


def prepare_demo_sources(corpus: DemoCorpus, *, progress: bool = True) -> Path:
    """The folder holding one prepared data directory per demo task, prepared on first use."""
    root = corpus.root / f"prepared-v{VERSION}"
    root.mkdir(exist_ok=True)
    with FileLock(root / ".lock"):  # one process prepares; the others of a run wait and reuse it
        for task in TASKS:
            prepare_once(root / task, lambda task=task: task_rows(corpus, task), progress=progress)
    return root
