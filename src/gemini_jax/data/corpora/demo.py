"""The embedded demo corpus: four small real tasks built offline from installed wheels, then cached.

    corpus = DemoCorpus.build()                   # ~/.cache/gemini-jax/demo-v4, built on first use
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
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gemini_jax.data.corpora import shapes, speech
from gemini_jax.data.examples import Content, Example, Part, text_document

VERSION = 5
TASKS = ("vqa", "asr", "video", "text")
SPLITS = ("train", "test")
MANIFEST = "manifest.json"
TEST_PERCENT = 10  # share of the hash space that goes to test

ASR_PROMPT = "Transcribe this audio."
ASR_VOICES_TRAIN = ("en", "en-us", "en+f3", "en+m3", "en-us+f2", "en-gb-x-rp+m1", "en+f4", "en+m2", "en-us+f5")
# Heard only in test: a voice variant of an accent that train has (US English). An unseen
# accent is a different task: a Caribbean voice ("tree" for "three") held out here made
# half its numbers wrong while every train-accent voice scored above 90%.
ASR_VOICES_HELD_OUT = ("en-us+m4",)
# Texts longer than this many words are spoken faster, to keep every clip near 3 s or less.
_ASR_LONG_WORDS = 5
ASR_PHRASES = (
    "the cat sat on the mat", "please open the door", "turn on the light", "what time is it",
    "the sun is bright today", "i like green apples", "the dog runs in the park", "close the window",
    "it is cold outside", "we are going home", "the bus is late again", "read the book aloud",
    "my name is sam", "the sky is blue", "put the cup on the table", "the bird can sing",
    "see you tomorrow", "thank you very much", "the train leaves at noon", "bring me some water",
    "she plays the piano", "he walks to school", "the milk is in the fridge", "good morning to you",
    "the road is long", "the baby is asleep", "wash your hands", "the phone is ringing",
    "the rain has stopped", "a red ball is on the grass", "the tea is too hot", "where is my hat",
    "the moon is full tonight", "let us go outside", "the fish swim in the pond", "the door is locked",
    "the car is very fast", "we need more bread", "the shop opens at nine", "count to ten slowly",
    "the garden has many flowers", "pass me the salt", "the clock is on the wall", "i can hear music",
    "the children are laughing", "the box is empty", "take the left turn", "the snow is falling",
)

VIDEO_KINDS = ("direction", "order", "size")
TEXT_CHUNK_CHARS = 4096
_TEXT_MAX_FILE_BYTES = 200_000
_TEXT_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
_MEDIA_KIND = {"vqa": "image", "asr": "audio", "video": "video"}
_STALE_PARTIAL_S = 24 * 3600


@dataclasses.dataclass(frozen=True)
class DemoSizes:
    """How much of each task to build. None for VQA means all of easy-VQA."""

    vqa_train: int | None = None  # of 38,575
    vqa_test: int | None = None  # of 9,673
    asr_train: int = 10_000
    asr_test: int = 600
    video_train: int = 6000
    video_test: int = 600
    text_bytes: int = 4_000_000  # cap on the standard-library source read, train and test together
    video_frames: int = 8
    video_size: int = 32

    @classmethod
    def tiny(cls) -> DemoSizes:
        """A corpus that builds in a few seconds, for tests."""
        return cls(vqa_train=60, vqa_test=20, asr_train=40, asr_test=12, video_train=30, video_test=12, text_bytes=60_000)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"DemoSizes.{field.name} must be a non-negative integer, got {value!r}")
        if self.video_frames < 3 or self.video_size < 16:
            raise ValueError(
                f"DemoSizes needs video_frames >= 3 and video_size >= 16, got {self.video_frames} and {self.video_size}"
            )


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
        built first if it is missing or incomplete. Default sizes live in `demo-v4`, others in
        `demo-v4-<hash of the sizes>`, so a small test corpus never replaces the real one."""
        cache_dir = Path(cache_dir or os.environ.get("GEMINI_JAX_CACHE") or Path.home() / ".cache" / "gemini-jax")
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
        """Examples with their kind and parameters; task in TASKS, split in SPLITS."""
        _check(task=task, split=split)
        if (task, split) not in self._records:
            media_root = _easy_vqa_data_dir() if task == "vqa" else self.root
            with open(self.root / f"{task}-{split}.jsonl", encoding="utf-8") as f:
                self._records[task, split] = [_record(task, json.loads(line), media_root=media_root) for line in f]
        return self._records[task, split]

    def examples(self, task: str, split: str) -> list[Example]:
        """The examples of one task and split, in a fixed order; task in TASKS, split in SPLITS."""
        return [record.example for record in self.records(task, split)]

    def tokenizer_corpus(self) -> Iterator[str]:
        """Raw text for tokenizer training: the training documents, every training prompt and
        answer, and one line holding every answer word of both splits, so the tokenizer knows
        each word a model may have to write (no test prompt or transcript is included)."""
        for record in self.records("text", "train"):
            yield record.meta["text"]
        seen = set()
        for task in ("vqa", "asr", "video"):
            for record in self.records(task, "train"):
                for line in (record.meta["prompt"], record.meta["answer"]):
                    if line not in seen:
                        seen.add(line)
                        yield line
        words = {w for task in ("vqa", "asr", "video") for split in SPLITS for r in self.records(task, split)
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


def is_test(key: str) -> bool:
    """The split rule: a stable hash of what identifies an item (never Python's salted hash)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % 100 < TEST_PERCENT


def _check(*, task: str, split: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown demo task {task!r}; accepted: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown demo split {split!r}; accepted: {', '.join(SPLITS)}")


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
    builders = {"vqa": _build_vqa, "asr": _build_asr, "video": _build_video, "text": _build_text}
    counts, timings, details = {}, {}, {}
    start = time.perf_counter()
    for task, builder in builders.items():
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


# ---- vqa ----------------------------------------------------------------------------------------


def _easy_vqa_data_dir() -> Path:
    try:
        import easy_vqa
    except ImportError as e:
        raise RuntimeError("the demo's VQA task needs the `easy-vqa` wheel (pip install easy-vqa)") from e
    return Path(easy_vqa.__file__).parent / "data"


def _build_vqa(*, out: Path, sizes: DemoSizes) -> tuple[dict[str, list], dict]:
    import easy_vqa

    data_dir = _easy_vqa_data_dir()
    answers = easy_vqa.get_answers()
    shape_answers = {"circle", "rectangle", "triangle"}
    sources = {
        "train": (easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths(), sizes.vqa_train),
        "test": (easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths(), sizes.vqa_test),
    }
    rows = {}
    for split, ((questions, answer_list, image_ids), image_paths, limit) in sources.items():
        rows[split] = []
        for question, answer, image_id in list(zip(questions, answer_list, image_ids))[:limit]:
            kind = "yes/no" if answer in ("yes", "no") else "shape" if answer in shape_answers else "color"
            media = Path(image_paths[image_id]).relative_to(data_dir).as_posix()
            rows[split].append(
                {"kind": kind, "prompt": question, "answer": answer, "media": media, "image_id": f"{split}/{image_id}"}
            )
    return rows, {"answers": answers}


# ---- asr ----------------------------------------------------------------------------------------


def asr_plan(*, train: int, test: int, seed: int = 0) -> dict[str, list[tuple[str, speech.Utterance]]]:
    """(kind, utterance) per split, as a pure function of the counts: five in eight numbers,
    two digit strings, one phrase (48 phrases need few clips; numbers have 10,000 texts).
    Test texts never occur in train; every other test clip is spoken by a held-out voice,
    the rest by train voices."""
    rng = np.random.default_rng(seed)
    numbers = {s: [n for n in range(10_000) if is_test(f"number:{n}") == (s == "test")] for s in SPLITS}
    phrases = {s: [p for p in ASR_PHRASES if is_test(f"phrase:{p}") == (s == "test")] for s in SPLITS}

    def text_for(kind: str, split: str) -> str:
        if kind == "number":
            # Stratified by magnitude, else nine numbers in ten would have four digits.
            low, high = ((0, 20), (20, 100), (100, 1000), (1000, 10_000))[int(rng.choice(4, p=(0.1, 0.2, 0.3, 0.4)))]
            pool = [n for n in numbers[split] if low <= n < high] or numbers[split]
            return speech.number_words(pool[int(rng.integers(len(pool)))])
        if kind == "digits":
            while True:
                digits = "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(3, 7))))
                if is_test(f"digits:{digits}") == (split == "test"):
                    return speech.digit_words(digits)
        pool = phrases[split]
        return pool[int(rng.integers(len(pool)))]

    plan = {}
    for split, count in (("train", train), ("test", test)):
        items, seen = [], set()
        while len(items) < count:
            kind = ("number", "number", "digits", "number", "phrase", "number", "digits", "number")[len(items) % 8]
            text = text_for(kind, split)
            held_out = split == "test" and len(items) % 2 == 0
            voices = ASR_VOICES_HELD_OUT if held_out else ASR_VOICES_TRAIN
            long_text = len(text.split()) > _ASR_LONG_WORDS
            utterance = speech.Utterance(
                text=text,
                voice=voices[int(rng.integers(len(voices)))],
                rate=int(rng.integers(170, 211) if long_text else rng.integers(140, 201)),
                pitch=int(rng.integers(35, 66)),
            )
            if utterance not in seen:
                seen.add(utterance)
                items.append((kind, utterance))
        plan[split] = items
    return plan


def _build_asr(*, out: Path, sizes: DemoSizes) -> tuple[dict[str, list], dict]:
    plan = asr_plan(train=sizes.asr_train, test=sizes.asr_test)
    media = {s: [f"asr/{s}/{i:05d}.wav" for i in range(len(plan[s]))] for s in SPLITS}
    everything = [u for s in SPLITS for _, u in plan[s]]
    durations = iter(speech.synthesize_to_wav(utterances=everything, paths=[out / m for s in SPLITS for m in media[s]]))
    rows = {s: [] for s in SPLITS}
    for split in SPLITS:
        for (kind, utterance), path in zip(plan[split], media[split]):
            rows[split].append(
                {
                    "kind": kind, "prompt": ASR_PROMPT, "answer": utterance.text, "media": path,
                    "voice": utterance.voice, "rate": utterance.rate, "pitch": utterance.pitch,
                    "duration_s": round(next(durations), 4),
                }
            )
    all_durations = [r["duration_s"] for s in SPLITS for r in rows[s]]
    details = {
        "sample_rate": speech.SAMPLE_RATE,
        "voices_train": list(ASR_VOICES_TRAIN),
        "voices_held_out": list(ASR_VOICES_HELD_OUT),
        "max_duration_s": max(all_durations, default=0.0),
        "mean_duration_s": round(float(np.mean(all_durations)), 3) if all_durations else 0.0,
    }
    return rows, details


# ---- video --------------------------------------------------------------------------------------


def video_plan(*, train: int, test: int, frames: int, size: int, seed: int = 0) -> dict[str, list[shapes.Clip]]:
    """Distinct clips per split, kinds in turn; a clip's split is decided by a hash of its
    full parameter record, so no test clip's parameters occur in train."""
    rng = np.random.default_rng(seed)
    plan = {"train": [], "test": []}
    # Per split, an even share of each kind.
    quota = {
        split: {kind: count // len(VIDEO_KINDS) + (i < count % len(VIDEO_KINDS)) for i, kind in enumerate(VIDEO_KINDS)}
        for split, count in (("train", train), ("test", test))
    }
    seen = set()
    for attempt in range(1000 * (train + test + 1)):
        if not any(any(q.values()) for q in quota.values()):
            return plan
        kind = VIDEO_KINDS[attempt % len(VIDEO_KINDS)]
        clip = shapes.sample(rng, kind=kind, frames=frames, size=size)
        clip_key = shapes.key(clip)
        split = "test" if is_test(clip_key) else "train"
        if clip_key in seen or quota[split][kind] == 0:
            continue
        seen.add(clip_key)
        quota[split][kind] -= 1
        plan[split].append(clip)
    raise RuntimeError(f"could not draw {train} + {test} distinct clips of {frames} frames at {size} pixels")


def _build_video(*, out: Path, sizes: DemoSizes) -> tuple[dict[str, list], dict]:
    frames, size = sizes.video_frames, sizes.video_size
    plan = video_plan(train=sizes.video_train, test=sizes.video_test, frames=frames, size=size)
    rows = {}
    for split in SPLITS:
        (out / "video" / split).mkdir(parents=True, exist_ok=True)
        rows[split] = []
        for i, clip in enumerate(plan[split]):
            media = f"video/{split}/{i:05d}.gif"
            shapes.save_gif(out / media, shapes.render(clip, frames=frames, size=size))
            rows[split].append(
                {
                    "kind": shapes.question_kind(clip), "prompt": clip.question(), "answer": clip.answer(), "media": media,
                    "clip": type(clip).__name__, "params": dataclasses.asdict(clip),
                }
            )
    return rows, {"frames": frames, "size": size, "frame_ms": shapes.FRAME_MS}


# ---- text ---------------------------------------------------------------------------------------


def stdlib_sources(*, max_bytes: int) -> list[tuple[str, str]]:
    """(relative path, source) of standard-library modules, test suites and files over
    200 KB left out, at most max_bytes in all, taken in an order fixed by a hash of the path
    (a spread of the library, not its first letters)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    candidates = []
    for directory, subdirs, files in os.walk(stdlib):
        subdirs[:] = sorted(d for d in subdirs if d not in _TEXT_SKIP_DIRS)
        for name in files:
            path = Path(directory) / name
            if name.endswith(".py") and not name.startswith("test_") and path.stat().st_size <= _TEXT_MAX_FILE_BYTES:
                candidates.append((path.relative_to(stdlib).as_posix(), path.stat().st_size))
    candidates.sort(key=lambda c: hashlib.sha256(c[0].encode()).digest())
    sources, total = [], 0
    for relative, size in candidates:
        if total + size > max_bytes:
            continue
        try:
            text = (stdlib / relative).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        total += size
        sources.append((relative, text))
    return sources


def _chunks(text: str, *, limit: int) -> list[str]:
    """Pieces of at most `limit` characters cut at line ends (a longer line stands alone)."""
    pieces, current, length = [], [], 0
    for line in text.splitlines(keepends=True):
        if current and length + len(line) > limit:
            pieces.append("".join(current))
            current, length = [], 0
        current.append(line)
        length += len(line)
    if current:
        pieces.append("".join(current))
    return [p for p in pieces if p.strip()]


def _build_text(*, out: Path, sizes: DemoSizes) -> tuple[dict[str, list], dict]:
    rows = {s: [] for s in SPLITS}
    files = {s: 0 for s in SPLITS}
    for relative, source in stdlib_sources(max_bytes=sizes.text_bytes):
        split = "test" if is_test(f"stdlib:{relative}") else "train"
        files[split] += 1
        for i, piece in enumerate(_chunks(source, limit=TEXT_CHUNK_CHARS)):
            rows[split].append({"kind": "document", "text": piece, "path": relative, "chunk": i})
    details = {
        "stdlib": sysconfig.get_paths()["stdlib"],
        "files": files,
        "chars": {s: sum(len(r["text"]) for r in rows[s]) for s in SPLITS},
    }
    return rows, details
