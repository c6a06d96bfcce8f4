"""Builders of the demo corpus's four tasks: each writes its media under `out` and returns its rows
(one JSON object per example) per split, and details for the manifest.

`DemoSizes` says how much of each task to build; `BUILDERS` lists the tasks in build order.
"""

from __future__ import annotations

import dataclasses
import sysconfig
from pathlib import Path

import numpy as np

from gemini_jax.data.corpora import shapes, speech
from gemini_jax.data.corpora.held_out import SPLITS, is_test
from gemini_jax.data.corpora.stdlib_text import TEXT_CHUNK_CHARS, stdlib_sources, text_chunks

ASR_PROMPT = "Transcribe this audio."
ASR_VOICES_TRAIN = ("en", "en-us", "en+f3", "en+m3", "en-us+f2", "en-gb-x-rp+m1", "en+f4", "en+m2", "en-us+f5")
# Heard only in test: a voice variant of an accent that train has (US English); an unseen accent
# would make it a different task (docs/data.md has the measurement).
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


# ---- vqa ----------------------------------------------------------------------------------------


def easy_vqa_data_dir() -> Path:
    try:
        import easy_vqa
    except ImportError as e:
        raise RuntimeError("the demo's VQA task needs the `easy-vqa` wheel (pip install easy-vqa)") from e
    return Path(easy_vqa.__file__).parent / "data"


def build_vqa(*, out: Path, sizes: DemoSizes) -> tuple[dict[str, list], dict]:
    import easy_vqa

    data_dir = easy_vqa_data_dir()
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


def build_asr(*, out: Path, sizes: DemoSizes) -> tuple[dict[str, list], dict]:
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


def build_video(*, out: Path, sizes: DemoSizes) -> tuple[dict[str, list], dict]:
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


def build_text(*, out: Path, sizes: DemoSizes) -> tuple[dict[str, list], dict]:
    rows = {s: [] for s in SPLITS}
    files = {s: 0 for s in SPLITS}
    for relative, source in stdlib_sources(max_bytes=sizes.text_bytes):
        split = "test" if is_test(f"stdlib:{relative}") else "train"
        files[split] += 1
        for i, piece in enumerate(text_chunks(source, limit=TEXT_CHUNK_CHARS)):
            rows[split].append({"kind": "document", "text": piece, "path": relative, "chunk": i})
    details = {
        "stdlib": sysconfig.get_paths()["stdlib"],
        "files": files,
        "chars": {s: sum(len(r["text"]) for r in rows[s]) for s in SPLITS},
    }
    return rows, details


BUILDERS = {"vqa": build_vqa, "asr": build_asr, "video": build_video, "text": build_text}
