"""The demo's robustness suite: its held-out questions asked the way people ask, and its media
made the way its training data was not.

Seven kinds, each with the plain set it is compared with:

- "case", "punctuation", "spelling", "paraphrase": the VQA and video questions of a split with the
  first letter's case flipped, without the question mark, with British spellings (only questions
  that have an American one), or rewritten from the split's `question_forms.HELD_OUT` templates
  (validation and test have sets of their own). Same images and clips, same answers: compared
  with the same records asked plainly.
- "images": easy-VQA-style scenes drawn here, with shapes of radius 3 pixels (smaller than 95% of
  easy-VQA's) or 22-30 (larger than any: its largest covers 961 pixels), at any position, on
  darker backgrounds (easy-VQA's are pastel) with pixel noise; asked with easy-VQA's own
  templates, in its mix of questions. Compared with the plain VQA set.
- "clips": the video task's clips with shapes smaller or larger than its training ranges, on dark
  backgrounds with pixel noise. Compared with the plain video set.
- "speech": spoken numbers at rates (100-130 and 230-260 words a minute) and pitches (10-25 and
  75-90) outside the training ranges (140-210, 35-65), by training voices. Compared with the
  plain set's spoken numbers.

Nothing here is trained on: the media are drawn from their own seeds, the paraphrases from their
own templates, and the numbers and questions are the split's. Media are built once per split,
under <corpus root>/robustness-v2/<split>, with the corpus's atomic-build pattern.

    suite = RobustnessSuite.build(corpus, "test")
    suite.records("images")     # list[DemoRecord]
    suite.plain("images")       # the records it is compared with
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gemini_jax.cache_root import build_once
from gemini_jax.data.corpora import question_forms, shapes, speech
from gemini_jax.data.corpora.demo import DemoCorpus, DemoRecord, number_split
from gemini_jax.data.corpora.demo_tasks import ASR_PROMPT, ASR_VOICES_TRAIN, VIDEO_KINDS
from gemini_jax.data.examples import Content, Example, Part

VERSION = 2
KINDS = ("case", "punctuation", "spelling", "paraphrase", "images", "clips", "speech")
TEXT_KINDS = KINDS[:4]
SIZES = {"images": 600, "clips": 600, "speech": 300}
_SEEDS = {"validation": 1, "test": 2}  # of the drawn media; never the corpus's seed (0)
# Of easy-VQA's yes/no questions, the share about a shape or colour the picture holds (5,149 of the
# train set's 28,407; 1,246 of the test set's 7,136): the drawn images are asked in the plain set's
# mix, so that their gap measures the pictures alone (docs/robustness.md).
PRESENT_SHARE = 0.18

VQA_SHAPES = ("circle", "rectangle", "triangle")
# easy-VQA's colours, as its images hold them.
VQA_COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
               "gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (165, 42, 42), "yellow": (255, 255, 0)}
_IMAGE_SIZE = 64
_SUPERSAMPLE = 4  # drawn 4x larger and reduced: edges anti-aliased as easy-VQA's are
MIN_CONTRAST = 120  # RGB distance between a shape and its background


class RobustnessSuite:
    """One split's suite: `records(kind)` and the `plain(kind)` records it is compared with."""

    def __init__(self, corpus: DemoCorpus, split: str, root: Path):
        self.corpus, self.split, self.root = corpus, split, root
        rows = json.loads((root / "records.json").read_text())
        self._media = {kind: [_media_record(kind, row, root) for row in rows[kind]] for kind in ("images", "clips", "speech")}

    @classmethod
    def build(cls, corpus: DemoCorpus, split: str, *, sizes: dict[str, int] | None = None) -> RobustnessSuite:
        """The suite of `split` ("validation" or "test"), its media drawn on first use; `sizes`
        ({"images": n, "clips": n, "speech": n}, default SIZES) draws fewer, into a folder of its own."""
        if split not in _SEEDS:
            raise ValueError(f"the robustness suite has splits {list(_SEEDS)}, not {split!r}")
        sizes = SIZES if sizes is None else {**SIZES, **sizes}
        name = split if sizes == SIZES else f"{split}-" + "-".join(str(sizes[k]) for k in SIZES)
        root = build_once(corpus.root / f"robustness-v{VERSION}" / name, "records.json",
                          lambda partial: _build_media(partial, split, sizes))
        return cls(corpus, split, root)

    def records(self, kind: str) -> list[DemoRecord]:
        if kind in TEXT_KINDS:
            return [_reworded(r, kind, self.split, np.random.default_rng([_SEEDS[self.split], i]))
                    for i, r in enumerate(self._questions(kind))]
        if kind not in self._media:
            raise ValueError(f"unknown robustness kind {kind!r}; accepted: {', '.join(KINDS)}")
        return self._media[kind]

    def plain(self, kind: str) -> list[DemoRecord]:
        """The records `kind` is compared with, asked as the corpus asks them."""
        if kind in TEXT_KINDS:
            return self._questions(kind)
        if kind == "speech":
            return [r for r in self.corpus.records("asr", self.split) if r.kind == "number"]
        return self.corpus.records({"images": "vqa", "clips": "video"}[kind], self.split)

    def _questions(self, kind: str) -> list[DemoRecord]:
        rows = self.corpus.records("vqa", self.split) + self.corpus.records("video", self.split)
        if kind == "spelling":
            return [r for r in rows if question_forms.has_american_spelling(r.meta["prompt"])]
        return rows


def _reworded(record: DemoRecord, kind: str, split: str, rng: np.random.Generator) -> DemoRecord:
    question = record.meta["prompt"]
    if kind == "case":
        question = question_forms.flip_first_case(question)
    elif kind == "punctuation":
        question = question_forms.drop_question_mark(question)
    elif kind == "spelling":
        question = question_forms.british(question)
    else:
        question = question_forms.ask(question_forms.meaning(question), question_forms.HELD_OUT[split], rng)
    user, model = record.example.contents
    media = [p for p in user.parts if p.text is None]
    example = dataclasses.replace(record.example, contents=(Content("user", (*media, Part(text=question))), model))
    return DemoRecord(example, record.kind, {**record.meta, "prompt": question})


def _media_record(kind: str, row: dict, root: Path) -> DemoRecord:
    part = {"images": "image", "clips": "video", "speech": "audio"}[kind]
    example = Example(contents=(Content("user", (Part(**{part: str(root / row["media"])}), Part(text=row["prompt"]))),
                                Content("model", (Part(text=row["answer"]),))),
                      task={"images": "vqa", "clips": "video", "speech": "asr"}[kind])
    return DemoRecord(example, row["kind"], row)


# ---- drawing ------------------------------------------------------------------------------------


def _build_media(out: Path, split: str, sizes: dict[str, int]) -> None:
    rng = np.random.default_rng([_SEEDS[split], 0])
    rows = {"images": _draw_images(out, rng, sizes["images"]), "clips": _draw_clips(out, rng, sizes["clips"]),
            "speech": _speak_numbers(out, rng, sizes["speech"], split)}
    (out / "records.json").write_text(json.dumps(rows, indent=0))  # last: its presence marks the build complete


def dark_background(rng: np.random.Generator) -> tuple[int, int, int]:
    """Each channel in 40-160 (easy-VQA's backgrounds are 230-255)."""
    return tuple(int(v) for v in rng.integers(40, 161, size=3))


def _contrast(a, b) -> float:
    return float(np.linalg.norm(np.subtract(a, b, dtype=float)))


def noisy(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 pixels with Gaussian noise of a standard deviation drawn in 6-14."""
    sigma = float(rng.uniform(6, 14))
    return np.clip(pixels + rng.normal(0, sigma, pixels.shape), 0, 255).astype(np.uint8)


def outside_radius(rng: np.random.Generator) -> int:
    """3 pixels (smaller than 95% of easy-VQA's shapes) or 22-30 (larger than any), at even odds."""
    return 3 if rng.random() < 0.5 else int(rng.integers(22, 31))


def scene(rng: np.random.Generator, *,
          pick_background: Callable[[np.random.Generator], tuple[int, int, int]] = dark_background,
          pick_radius: Callable[[np.random.Generator], int] = outside_radius,
          noise: bool = True) -> tuple[str, str, tuple[int, int, int], np.ndarray]:
    """(shape, colour, background, uint8[64, 64, 3]) of one easy-VQA-style scene: by default out of
    easy-VQA's range (the suite's); `pick_background` and `pick_radius` draw those, `noise` adds
    pixel noise."""
    shape = VQA_SHAPES[int(rng.integers(3))]
    background = pick_background(rng)
    colours = [c for c, rgb in VQA_COLOURS.items() if _contrast(rgb, background) >= MIN_CONTRAST]
    colour = colours[int(rng.integers(len(colours)))]
    radius = pick_radius(rng)
    aspect = float(rng.uniform(0.6, 1.6)) if shape == "rectangle" else 1.0
    half_w, half_h = radius * min(aspect, 1.0), radius * min(1 / aspect, 1.0)
    x = float(rng.uniform(half_w, _IMAGE_SIZE - half_w))
    y = float(rng.uniform(half_h, _IMAGE_SIZE - half_h))
    pixels = draw_scene(shape=shape, fill=VQA_COLOURS[colour], background=background, x=x, y=y, radius=radius,
                        aspect=aspect)
    return shape, colour, background, noisy(pixels.astype(np.float64), rng) if noise else pixels


def draw_scene(*, shape: str, fill: tuple[int, int, int], background: tuple[int, int, int], x: float, y: float,
               radius: float, aspect: float = 1.0) -> np.ndarray:
    """uint8[64, 64, 3]: one easy-VQA-style shape centred at (x, y) on a plain background, edges
    anti-aliased; a rectangle `aspect` times as wide as high, within the square of `radius`."""
    half_w, half_h = radius * min(aspect, 1.0), radius * min(1 / aspect, 1.0)
    s = _SUPERSAMPLE
    image = Image.new("RGB", (_IMAGE_SIZE * s, _IMAGE_SIZE * s), background)
    draw = ImageDraw.Draw(image)
    box = ((x - half_w) * s, (y - half_h) * s, (x + half_w) * s, (y + half_h) * s)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "rectangle":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x) * s, (y - radius) * s), ((x + radius) * s, (y + radius) * s),
                      ((x - radius) * s, (y + radius) * s)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; accepted: {', '.join(VQA_SHAPES)}")
    image = image.resize((_IMAGE_SIZE, _IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


def scene_question(rng: np.random.Generator, shape: str, colour: str, *,
                   present_share: float = PRESENT_SHARE) -> tuple[str, str, str]:
    """(question, answer, kind) in easy-VQA's own templates and proportions: a third ask what the
    shape or colour is, two thirds whether a shape or colour is there, that many of them
    (`present_share`) about the one there."""
    draw = rng.random()
    if draw < 1 / 6:
        m = question_forms.Meaning("colour", shape=shape if rng.random() < 0.5 else None)
        return question_forms.ask(m, question_forms.ORIGINAL, rng), colour, "color"
    if draw < 1 / 3:
        m = question_forms.Meaning("shape", colour=colour if rng.random() < 0.25 else None)
        return question_forms.ask(m, question_forms.ORIGINAL, rng), shape, "shape"
    present = rng.random() < present_share
    if rng.random() < 0.5:
        named = shape if present else [s for s in VQA_SHAPES if s != shape][int(rng.integers(2))]
        m = question_forms.Meaning("exists", shape=named, negated=bool(rng.random() < 0.5))
    else:
        others = [c for c in VQA_COLOURS if c != colour]
        named = colour if present else others[int(rng.integers(len(others)))]
        m = question_forms.Meaning("exists", colour=named, negated=bool(rng.random() < 0.5))
    answer = "yes" if present != m.negated else "no"
    return question_forms.ask(m, question_forms.ORIGINAL, rng), answer, "yes/no"


def _draw_images(out: Path, rng: np.random.Generator, count: int) -> list[dict]:
    (out / "images").mkdir()
    rows = []
    for i in range(count):
        shape, colour, background, pixels = scene(rng)
        question, answer, kind = scene_question(rng, shape, colour)
        media = f"images/{i:05d}.png"
        Image.fromarray(pixels).save(out / media)
        rows.append({"kind": kind, "prompt": question, "answer": answer, "media": media, "shape": shape,
                     "colour": colour, "background": list(background)})
    return rows


# Radii outside the video task's training ranges (shapes.sample, at 32 pixels: direction 5-8,
# order 4-5, growth 4-5 <-> 8-10).
_CLIP_SIZE, _CLIP_FRAMES = 32, 8


def _clip(rng: np.random.Generator, kind: str) -> shapes.Clip:
    colours, pick = list(shapes.COLOURS), (lambda options: options[int(rng.integers(len(options)))])
    size, steps = _CLIP_SIZE, _CLIP_FRAMES - 1
    if kind == "direction":
        radius, speed = int(rng.integers(3, 5)), int(rng.integers(2, 4))
        direction = pick(list(shapes.DIRECTIONS))
        (ux, uy) = shapes.DIRECTIONS[direction]
        x = shapes.start_coordinate(rng, radius=radius, size=size, move=ux * speed * steps)
        y = shapes.start_coordinate(rng, radius=radius, size=size, move=uy * speed * steps)
        return shapes.Motion(pick(shapes.SHAPES), pick(colours), "", direction, x, y, radius, speed)
    if kind == "order":
        first, second = rng.choice(len(shapes.SHAPES), size=2, replace=False)
        dx, dy = shapes.random_drift(rng)
        first_frame = int(rng.integers(0, 2))
        second_frame = int(rng.integers(first_frame + 2, _CLIP_FRAMES))
        (x1, y1), (x2, y2) = shapes.apart_centres(rng, radius=3, size=size, drift=(dx * steps, dy * steps))
        return shapes.Order(shapes.SHAPES[first], pick(colours), shapes.SHAPES[second], pick(colours), "",
                            bool(rng.integers(2)), first_frame, second_frame, x1, y1, x2, y2, dx, dy, 3)
    small, large = int(rng.integers(2, 4)), int(rng.integers(11, 13))
    start, end = (small, large) if rng.integers(2) else (large, small)
    dx, dy = shapes.random_drift(rng)
    x = shapes.start_coordinate(rng, radius=large, size=size, move=dx * steps)
    y = shapes.start_coordinate(rng, radius=large, size=size, move=dy * steps)
    return shapes.Growth(pick(shapes.SHAPES), pick(colours), "", x, y, dx, dy, start, end)


def _draw_clips(out: Path, rng: np.random.Generator, count: int) -> list[dict]:
    (out / "clips").mkdir()
    rows = []
    for i in range(count):
        clip = _clip(rng, VIDEO_KINDS[i % len(VIDEO_KINDS)])
        background = dark_background(rng)
        while any(_contrast(shapes.COLOURS[c], background) < MIN_CONTRAST for c in _clip_colours(clip)):
            background = dark_background(rng)
        drawn = shapes.render(clip, frames=_CLIP_FRAMES, size=_CLIP_SIZE, background=background)
        frames = [Image.fromarray(noisy(np.asarray(image, dtype=np.float64), rng)) for image in drawn]
        media = f"clips/{i:05d}.gif"
        shapes.save_gif(out / media, frames)
        rows.append({"kind": shapes.question_kind(clip), "prompt": clip.question(), "answer": clip.answer(),
                     "media": media, "background": list(background), "params": dataclasses.asdict(clip)})
    return rows


def _clip_colours(clip: shapes.Clip) -> list[str]:
    return [clip.first_colour, clip.second_colour] if isinstance(clip, shapes.Order) else [clip.colour]


def _speak_numbers(out: Path, rng: np.random.Generator, count: int, split: str) -> list[dict]:
    """Numbers of the split (test numbers, or the validation side of train's), at rates and
    pitches the corpus never uses."""
    numbers = [n for n in range(10_000) if number_split(n) == split]
    utterances = []
    for _ in range(count):
        n = numbers[int(rng.integers(len(numbers)))]
        rate = int(rng.integers(100, 131)) if rng.random() < 0.5 else int(rng.integers(230, 261))
        pitch = int(rng.integers(10, 26)) if rng.random() < 0.5 else int(rng.integers(75, 91))
        voice = ASR_VOICES_TRAIN[int(rng.integers(len(ASR_VOICES_TRAIN)))]
        utterances.append(speech.Utterance(text=speech.number_words(n), voice=voice, rate=rate, pitch=pitch))
    paths = [out / f"speech/{i:05d}.wav" for i in range(count)]
    speech.synthesize_to_wav(utterances=utterances, paths=paths)
    return [{"kind": "number", "prompt": ASR_PROMPT, "answer": u.text, "media": f"speech/{i:05d}.wav",
             "voice": u.voice, "rate": u.rate, "pitch": u.pitch} for i, u in enumerate(utterances)]
