"""The embedded demo corpus: four small real tasks built offline from installed wheels, then cached.

    corpus = DemoCorpus.build()                   # ~/.cache/gemini-jax/demo-v5, built on first use
    corpus.examples("vqa", "train")               # list[Example]
    corpus.records("asr", "test")[0].kind         # "number" | "digits" | "phrase"
    sentences = corpus.tokenizer_corpus()         # raw text for training the tokenizer

Tasks (held-out test data is kept apart by construction, never by chance):
- "vqa": easy-VQA (the `easy-vqa` wheel): 64x64 PNGs, a question, a one-word answer out of 13.
  Train and test images are different files; the wheel's own PNG paths are used in place.
- "asr": English speech synthesized with eSpeak NG (`speech.py`): spoken numbers 0..9999
  ("four hundred and twelve"), digit strings ("three one four") and short phrases, as 16 kHz
  mono 16-bit WAV files. A text goes to test when a hash of it says so, so no test transcript is
  ever spoken in train; half the test clips use a voice train never hears.
- "video": 8-frame 32x32 animated GIFs of moving shapes (`shapes.py`) with questions that need
  more than one frame. A clip goes to test when a hash of its full parameter record says so.
- "text": the Python standard library's own source, files split by a hash of their path, cut
  into documents of a few KB.

The corpus is built into a temporary directory beside its final place and renamed into place
once complete, with `manifest.json` written last: a crash mid-build never leaves something that
looks finished, and a directory without a manifest is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gemini_jax.cache_root import cache_root
from gemini_jax.data.corpora.demo_tasks import BUILDERS, DemoSizes, easy_vqa_data_dir
from gemini_jax.data.corpora.held_out import READ_SPLITS, SPLITS, is_test, is_validation
from gemini_jax.data.corpora.speech import number_words
from gemini_jax.data.examples import Content, Example, Part, text_document

__all__ = ["MANIFEST", "READ_SPLITS", "SPLITS", "TASKS", "VERSION", "DemoCorpus", "DemoRecord", "DemoSizes",
           "is_test", "number_split"]

VERSION = 5
TASKS = ("vqa", "asr", "video", "text")
MANIFEST = "manifest.json"
_MEDIA_KIND = {"vqa": "image", "asr": "audio", "video": "video"}
_STALE_PARTIAL_S = 24 * 3600


@dataclasses.dataclass(frozen=True)
class DemoRecord:
    """An example with what evaluation needs to slice it: `kind` (vqa: yes/no, shape, color;
    asr: number, digits, phrase; video: direction, order_first, order_last, size; text: document) and `meta`
    (the parameters it was made from: image id, utterance, clip parameters, source path)."""

    example: Example
    kind: str
    meta: Mapping[str, Any]


class DemoCorpus:
    """A built corpus on disk. Use `DemoCorpus.build(...)`, which builds only when needed."""

    def __init__(self, *, root: Path, manifest: Mapping[str, Any]):
        self.root = Path(root)
        self.manifest = manifest
        self._records: dict[tuple[str, str], list[DemoRecord]] = {}

    @classmethod
    def build(
        cls,
        cache_dir: str | os.PathLike | None = None,
        *,
        sizes: DemoSizes = DemoSizes(),
        progress: bool = True,
    ) -> DemoCorpus:
        """The corpus under `cache_dir` (default $GEMINI_JAX_CACHE, else ~/.cache/gemini-jax),
        built first if it is missing or incomplete. Default sizes live in `demo-v5`, others in
        `demo-v5-<hash of the sizes>`, so a small test corpus never replaces the real one."""
        cache_dir = cache_root(cache_dir)
        root = cache_dir / _subdir(sizes)
        corpus = _open(root, sizes)
        if corpus is not None:
            return corpus
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(cache_dir, root.name)
        partial = Path(tempfile.mkdtemp(prefix=f"{root.name}.partial-", dir=cache_dir))
        try:
            _build_into(partial, sizes=sizes, progress=progress)
            corpus = _open(root, sizes)
            if corpus is not None:  # another process finished first: keep theirs
                shutil.rmtree(partial)
                return corpus
            if root.exists():  # an incomplete corpus (no manifest)
                shutil.rmtree(root)
            try:
                os.replace(partial, root)
            except OSError:
                if _open(root, sizes) is None:  # not a concurrent build that won the race
                    raise
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        corpus = _open(root, sizes)
        if corpus is None:
            raise RuntimeError(f"{root}: the demo corpus was just built but cannot be read back")
        if progress:
            print(f"demo corpus: ready in {root}", file=sys.stderr, flush=True)
        return corpus

    def records(self, task: str, split: str) -> list[DemoRecord]:
        """Examples with their kind and parameters; task in TASKS, split in READ_SPLITS
        ("train" is the train file without the validation items carved from it)."""
        _check(task=task, split=split)
        if (task, split) not in self._records:
            if split == "test":
                self._records[task, split] = self._read(task, "test")
            else:
                rows = self._read(task, "train")
                for name in ("train", "validation"):
                    self._records[task, name] = [r for r in rows if _is_validation(task, r.meta) == (name == "validation")]
        return self._records[task, split]

    def _read(self, task: str, split: str) -> list[DemoRecord]:
        media_root = easy_vqa_data_dir() if task == "vqa" else self.root
        with open(self.root / f"{task}-{split}.jsonl", encoding="utf-8") as f:
            return [_record(task, json.loads(line), media_root=media_root) for line in f]

    def examples(self, task: str, split: str) -> list[Example]:
        """The examples of one task and split, in a fixed order; task in TASKS, split in READ_SPLITS."""
        return [record.example for record in self.records(task, split)]

    def tokenizer_corpus(self) -> Iterator[str]:
        """Raw text for tokenizer training: the training documents, every training prompt and
        answer, and one line holding every training answer word. Nothing of validation or test
        is read: a word only they hold is written in smaller pieces."""
        for record in self.records("text", "train"):
            yield record.meta["text"]
        seen = set()
        for task in ("vqa", "asr", "video"):
            for record in self.records(task, "train"):
                for line in (record.meta["prompt"], record.meta["answer"]):
                    if line not in seen:
                        seen.add(line)
                        yield line
        words = {w for task in ("vqa", "asr", "video") for r in self.records(task, "train")
                 for w in r.meta["answer"].split()}
        yield " ".join(sorted(words))


def _record(task: str, row: dict[str, Any], *, media_root: Path) -> DemoRecord:
    if task == "text":
        return DemoRecord(text_document(row["text"], task="text"), row["kind"], row)
    media = Part(**{_MEDIA_KIND[task]: str(media_root / row["media"])})
    example = Example(
        contents=(
            Content("user", (media, Part(text=row["prompt"]))),
            Content("model", (Part(text=row["answer"]),)),
        ),
        task=task,
    )
    return DemoRecord(example, row["kind"], row)

def _check(*, task: str, split: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown demo task {task!r}; accepted: {', '.join(TASKS)}")
    if split not in READ_SPLITS:
        raise ValueError(f"unknown demo split {split!r}; accepted: {', '.join(READ_SPLITS)}")


# What identifies a training item for the validation rule: every question about one image, every
# clip of one transcript, every chunk of one file falls on the same side.
_VALIDATION_KEY = {"vqa": lambda m: f"image:{m['image_id']}", "asr": lambda m: f"transcript:{m['answer']}",
                   "video": lambda m: "clip:" + json.dumps(m["params"], sort_keys=True),
                   "text": lambda m: f"stdlib:{m['path']}"}


def _is_validation(task: str, meta: Mapping[str, Any]) -> bool:
    return is_validation(_VALIDATION_KEY[task](meta))


def number_split(n: int) -> str:
    """The split whose speech task says the number n ("test", "validation" or "train"): test
    numbers are held out by value, validation carved from train by transcript, as `records` does."""
    if is_test(f"number:{n}"):
        return "test"
    return "validation" if _is_validation("asr", {"answer": number_words(n)}) else "train"


def _subdir(sizes: DemoSizes) -> str:
    if sizes == DemoSizes():
        return f"demo-v{VERSION}"
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(sizes), sort_keys=True).encode()).hexdigest()
    return f"demo-v{VERSION}-{digest[:8]}"


def _open(root: Path, sizes: DemoSizes) -> DemoCorpus | None:
    """The corpus at root if it is complete and was built for these sizes, else None."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("version") != VERSION or manifest.get("sizes") != dataclasses.asdict(sizes):
        return None
    if not all((root / f"{t}-{s}.jsonl").is_file() for t in TASKS for s in SPLITS):
        return None
    return DemoCorpus(root=root, manifest=manifest)


def _remove_stale_partials(cache_dir: Path, name: str) -> None:
    """Leftovers of builds killed too hard to clean up after themselves."""
    for path in cache_dir.glob(f"{name}.partial-*"):
        try:
            if time.time() - path.stat().st_mtime > _STALE_PARTIAL_S:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _build_into(out: Path, *, sizes: DemoSizes, progress: bool) -> None:
    counts, timings, details = {}, {}, {}
    start = time.perf_counter()
    for task, builder in BUILDERS.items():
        if progress:
            print(f"demo corpus: building {task} ...", file=sys.stderr, flush=True)
        task_start = time.perf_counter()
        rows, details[task] = builder(out=out, sizes=sizes)
        for split in SPLITS:
            with open(out / f"{task}-{split}.jsonl", "w", encoding="utf-8") as f:
                for row in rows[split]:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        timings[task] = round(time.perf_counter() - task_start, 3)
        counts[task] = {split: len(rows[split]) for split in SPLITS}
        if progress:
            print(f"demo corpus: {task} {counts[task]} in {timings[task]:.1f} s", file=sys.stderr, flush=True)
    manifest = {
        "version": VERSION,
        "sizes": dataclasses.asdict(sizes),
        "counts": counts,
        "timings_s": timings,
        "total_s": round(time.perf_counter() - start, 3),
        "details": details,
        "python": sys.version.split()[0],
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # Last, and atomically: its presence is what marks the corpus complete.
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, out / MANIFEST)
