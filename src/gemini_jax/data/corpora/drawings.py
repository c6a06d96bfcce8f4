"""Drawing tasks in the easy-VQA style: a model turn that is an image.

    corpus = DrawingCorpus.build()                  # ~/.cache/gemini-jax/drawings-v4-<sizes>, built on first use
    corpus.records("draw", "test")                  # 300 held-out text-to-image requests
    corpus.examples("train")                        # list[Example]: drawing and editing, mixed
    corpus.images("train")                          # uint8 [N, 64, 64, 3]: every train target image

Two tasks, each an `Example` in the contents format (data/examples.py):

- "draw" (text to image): user "Draw a blue circle." (or one of DRAW_TEMPLATES' other
  phrasings) -> model: the picture.
- "edit", a conversation: user "Draw a green circle." -> model: the source picture -> user "Make
  the shape red." (a "colour" change) or "Change the circle into a triangle." (a "shape" change)
  -> model: the same scene with that one change: same position, size, background (and a
  rectangle's proportions, kept in every scene for that reason). Only the last turn is trained
  on (`train_on="last"`); the source picture is read as the codes the model would have written,
  so an edit can copy it code by code. The first request is one of DRAW_TEMPLATES whose drawing
  request lies in train, so no held-out drawing prompt is ever part of a training edit.

With `layout=True` (the image_generation recipe's `reply_layout`) each model turn first says where its
picture's shape is, "At 40, 20, size 12." (layout_text), then shows it: a drawing commits to a
place and size in words before its codes, and an edit can copy its source's place as text.

A scene is one of easy-VQA's three shapes in one of its eight colours on one of four pale
backgrounds (easy-VQA's are pale), drawn by robustness.draw_scene at the image tokenizer's 64x64:
radius 8, 12 or 16 pixels (easy-VQA's shapes cover up to 961 pixels; below 8 an 8x8 grid of codes
barely holds a shape's outline), centres on a 4-pixel grid, rectangles of three proportions. Fewer
kinds of picture than easy-VQA's continuous ranges, on purpose: a model that trains in minutes
learns a few thousand code patterns, not every sub-pixel offset (docs/image-output.md: with
continuous positions, sizes and backgrounds the same recipe drew 26% of the requests right).

Splits: a request goes to test when a hash of its content says so (held_out.is_test), to validation
(carved from the rest) when another hash does: for "draw" the prompt's text (shape, colour and
phrasing), for "edit" the change requested with the source's shape and colour. So a held-out prompt is
never seen in training, word for word, while every shape, colour and phrasing is (each in other
combinations): the model is tested on wording and combinations it has not seen, not on concepts it
could not know. Scenes come from the item's own seed; a train request with a picture (target or source)
equal to a held-out picture of either kind (parameters rounded as stored) is dropped, so no held-out
picture is a training picture either.

Built once into <cache root>/drawings-v<VERSION>-<hash of the sizes> (PNGs and records.json, written last),
in a temporary folder renamed into place: a crash never leaves something that looks finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gemini_jax.cache_root import build_once, cache_root
from gemini_jax.data.corpora.held_out import READ_SPLITS, is_test, is_validation
from gemini_jax.data.corpora.robustness import VQA_COLOURS, VQA_SHAPES, draw_scene
from gemini_jax.data.examples import Content, Example, Part

VERSION = 4  # 3: edits are conversations that draw their source picture first; 4: held out across kinds
TASK = "image_generation"  # Example.task of every drawing example
KINDS = ("draw", "edit")
CHANGES = ("colour", "shape")  # what an edit changes
SHAPES = VQA_SHAPES
COLOURS = tuple(VQA_COLOURS)
IMAGE_SIZE = 64
RADII = (8, 12, 16)
STEP = 4  # pixels between the centres a shape may have, on each axis
ASPECTS = (0.625, 1.0, 1.6)  # a rectangle's width / height
# Pale backgrounds, as easy-VQA's are (between 230 and 255 in each channel).
BACKGROUNDS = ((250, 246, 236), (236, 232, 250), (232, 248, 238), (236, 242, 250))
RECORDS_FILE = "records.json"

DRAW_TEMPLATES = (
    "Draw a {colour} {shape}.", "Draw a {shape} that is {colour}.", "Please draw a {colour} {shape}.",
    "Can you draw a {colour} {shape}?", "Show me a {colour} {shape}.", "Make a picture of a {colour} {shape}.",
    "Paint a {colour} {shape}.", "Sketch a {colour} {shape}.", "I would like a picture of a {colour} {shape}.",
    "Draw a {shape} in {colour}.", "Create an image of a {colour} {shape}.", "Picture a {colour} {shape}.",
)
COLOUR_TEMPLATES = (
    "Make the shape {colour}.", "Colour the shape {colour}.", "Change the colour to {colour}.",
    "Paint the {shape} {colour}.", "Turn the {shape} {colour}.", "Make it {colour}.",
)
SHAPE_TEMPLATES = (
    "Change the {shape} into a {new}.", "Make it a {new}.", "Turn the {shape} into a {new}.",
    "Replace the {shape} with a {new}.", "Draw a {new} instead of the {shape}.",
)


@dataclasses.dataclass(frozen=True)
class DrawingSizes:
    """Requests of each kind per split (validation is carved from train's side of the hash)."""

    draw_train: int = 36000
    edit_train: int = 36000
    draw_validation: int = 200
    edit_validation: int = 200
    draw_test: int = 300
    edit_test: int = 300

    def count(self, kind: str, split: str) -> int:
        return getattr(self, f"{kind}_{split}")


@dataclasses.dataclass(frozen=True)
class Scene:
    """One picture's parameters; `aspect` (width / height) shapes rectangles only, and is kept by
    every scene so that an edit into a rectangle has it."""

    shape: str
    colour: str
    background: tuple[int, int, int]
    x: float  # centre, pixels
    y: float
    radius: int
    aspect: float

    def __post_init__(self):
        object.__setattr__(self, "background", tuple(int(v) for v in self.background))
        if self.shape not in SHAPES or self.colour not in COLOURS:
            raise ValueError(f"a scene of shape {self.shape!r} and colour {self.colour!r}; accepted shapes: "
                             f"{', '.join(SHAPES)}; colours: {', '.join(COLOURS)}")

    def pixels(self) -> np.ndarray:
        """uint8[64, 64, 3]"""
        return draw_scene(shape=self.shape, fill=VQA_COLOURS[self.colour], background=self.background, x=self.x,
                          y=self.y, radius=self.radius, aspect=self.aspect if self.shape == "rectangle" else 1.0)

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Drawing:
    """One request: its `example`, and what judging it needs (the target scene, the source scene
    and the change for an edit)."""

    kind: str  # "draw" | "edit"
    prompt: str
    target: Scene
    source: Scene | None  # edits only
    change: str | None  # edits only: "colour" | "shape"
    content_key: str  # what the split hashes
    image: Path  # the target's PNG
    source_image: Path | None
    source_prompt: str | None  # edits only: the request that drew the source picture
    layout: bool = False  # the reply says where it draws (layout_text) before its picture
    source_layout: bool = False  # so does an edit's source picture's reply

    @property
    def example(self) -> Example:
        reply = Content("model", _picture_reply(self.target, self.image, layout=self.layout))
        if self.source_image is None:
            return Example(contents=(Content("user", (Part(text=self.prompt),)), reply), task=TASK,
                           group=self.content_key)
        source = _picture_reply(self.source, self.source_image, layout=self.source_layout)
        return Example(contents=(Content("user", (Part(text=self.source_prompt),)), Content("model", source),
                                 Content("user", (Part(text=self.prompt),)), reply),
                       train_on="last", task=TASK, group=self.content_key)

    @property
    def request(self) -> Example:
        """What the model is asked: every turn but the reply."""
        return Example(contents=self.example.contents[:-1])


def layout_text(scene: Scene) -> str:
    """Where a picture's shape is, as its reply says before drawing it: "At 40, 20, size 12." (centre
    in pixels from the top left, radius; no brackets, so each number and its comma can be one piece)."""
    return f"At {int(scene.x)}, {int(scene.y)}, size {scene.radius}."


def _picture_reply(scene: Scene, image: Path, *, layout: bool) -> tuple[Part, ...]:
    picture = Part(image=str(image))
    return (Part(text=layout_text(scene)), picture) if layout else (picture,)


def source_keeps_layout(content_key: str, image: Path) -> bool:
    """Whether a training edit's source reply says where it drew: three in four do, chosen by a
    hash of the request, so that the model also learns to edit pictures it was not told the place
    of (`generate --edit`'s)."""
    digest = hashlib.sha256(f"{content_key}|{image.parent.name}/{image.name}".encode()).hexdigest()
    return int(digest[:8], 16) % 4 != 0


class DrawingCorpus:
    """A built corpus on disk; `DrawingCorpus.build(...)` builds it when needed. With `layout`, every
    picture's reply first says where it draws (layout_text): held-out edits' source replies always,
    training ones three times in four (source_keeps_layout)."""

    def __init__(self, root: Path, *, layout: bool = False):
        self.root = Path(root)
        self.layout = layout
        rows = json.loads((self.root / RECORDS_FILE).read_text())
        self._records = {split: [_drawing(row, self.root, layout=layout, split=split) for row in rows[split]]
                         for split in READ_SPLITS}

    @classmethod
    def build(cls, cache_dir: str | os.PathLike | None = None, *, sizes: DrawingSizes = DrawingSizes(),
              layout: bool = False) -> DrawingCorpus:
        """The corpus under `cache_dir` (default $GEMINI_JAX_CACHE, else ~/.cache/gemini-jax), drawn
        first if it is missing, in `drawings-v<VERSION>-<hash of the sizes>`."""
        root = cache_root(cache_dir) / _subdir(sizes)
        return cls(build_once(root, RECORDS_FILE, lambda partial: _build_into(partial, sizes)), layout=layout)

    def records(self, kind: str, split: str) -> list[Drawing]:
        """The requests of `kind` ("draw" or "edit") in `split` (train, validation or test)."""
        if kind not in KINDS or split not in READ_SPLITS:
            raise ValueError(f"drawings have kinds {KINDS} and splits {READ_SPLITS}, not {kind!r}, {split!r}")
        return [d for d in self._records[split] if d.kind == kind]

    def examples(self, split: str) -> list[Example]:
        """Every request of `split`, both kinds, in the corpus's (mixed) order."""
        if split not in READ_SPLITS:
            raise ValueError(f"drawings have splits {READ_SPLITS}, not {split!r}")
        return [d.example for d in self._records[split]]

    def images(self, split: str) -> np.ndarray:
        """uint8 [N, 64, 64, 3]: the target image of every request of `split`, in order."""
        return np.stack([load_png(d.image) for d in self._records[split]])


def load_png(path: str | os.PathLike) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _subdir(sizes: DrawingSizes) -> str:
    # Named by the sizes, defaults included: a corpus built under other defaults is never taken for
    # today's.
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(sizes), sort_keys=True).encode()).hexdigest()
    return f"drawings-v{VERSION}-{digest[:8]}"


def _split(content_key: str) -> str:
    if is_test(content_key):
        return "test"
    return "validation" if is_validation(content_key) else "train"


def sample_scene(rng: np.random.Generator, *, shape: str, colour: str) -> Scene:
    radius = RADII[int(rng.integers(len(RADII)))]
    aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    x, y = (float(v) for v in rng.choice(np.arange(radius, IMAGE_SIZE - radius + 1, STEP), size=2))
    return Scene(shape, colour, background, x, y, radius, aspect)


def sample_request(rng: np.random.Generator, kind: str) -> dict[str, Any]:
    """One request's content and scenes: {prompt, target, source, change, content_key}."""
    def pick(options):
        return options[int(rng.integers(len(options)))]

    shape, colour = pick(SHAPES), pick(COLOURS)
    if kind == "draw":
        prompt = pick(DRAW_TEMPLATES).format(shape=shape, colour=colour)
        return {"prompt": prompt, "target": sample_scene(rng, shape=shape, colour=colour), "source": None,
                "change": None, "content_key": f"draw|{prompt}", "source_prompt": None}
    source = sample_scene(rng, shape=shape, colour=colour)
    trained = [t.format(shape=shape, colour=colour) for t in DRAW_TEMPLATES]
    trained = [p for p in trained if _split(f"draw|{p}") == "train"]
    if not trained:  # not with these templates: each request is held out about one time in seven
        raise RuntimeError(f"drawings: every drawing request for a {colour} {shape} is held out")
    source_prompt = pick(trained)
    change = pick(CHANGES)
    if change == "colour":
        new = pick([c for c in COLOURS if c != colour])
        prompt = pick(COLOUR_TEMPLATES).format(shape=shape, colour=new)
        target = dataclasses.replace(source, colour=new)
    else:
        new = pick([s for s in SHAPES if s != shape])
        prompt = pick(SHAPE_TEMPLATES).format(shape=shape, new=new)
        target = dataclasses.replace(source, shape=new)
    return {"prompt": prompt, "target": target, "source": source, "change": change,
            "content_key": f"edit|{shape}|{colour}|{prompt}", "source_prompt": source_prompt}


def plan(sizes: DrawingSizes) -> dict[str, list[dict[str, Any]]]:
    """{split: [request, ...]}: request i drawn from seed (VERSION, kind, i) and sent to its content's
    split until every split of every kind is full; train scenes equal to a held-out one dropped."""
    planned: dict[str, list[dict[str, Any]]] = {split: [] for split in READ_SPLITS}
    for k, kind in enumerate(KINDS):
        wanted = {split: sizes.count(kind, split) for split in READ_SPLITS}
        got = {split: [] for split in READ_SPLITS}
        i = 0
        while any(len(got[s]) < wanted[s] for s in READ_SPLITS):
            if i > 100 * sum(wanted.values()) + 10_000:
                raise RuntimeError(f"drawings: cannot fill the {kind} splits {wanted} (got "
                                   f"{ {s: len(v) for s, v in got.items()} })")
            request = {"kind": kind, **sample_request(np.random.default_rng([VERSION, k, i]), kind)}
            split = _split(request["content_key"])
            if len(got[split]) < wanted[split]:
                got[split].append(request)
            i += 1
        for split in READ_SPLITS:
            planned[split] += got[split]
    # A held-out picture of one kind may be drawn by a request of the other: none is a train picture.
    held_out = {scene.key() for split in ("validation", "test") for r in planned[split] for scene in _scenes(r)}
    planned["train"] = [r for r in planned["train"] if not any(scene.key() in held_out for scene in _scenes(r))]
    for split in READ_SPLITS:  # kinds interleaved, in a fixed order
        order = np.random.default_rng([VERSION, 99]).permutation(len(planned[split]))
        planned[split] = [planned[split][j] for j in order]
    return planned


def _scenes(request: dict[str, Any]) -> list[Scene]:
    return [request["target"]] + ([] if request["source"] is None else [request["source"]])


def _build_into(out: Path, sizes: DrawingSizes) -> None:
    rows: dict[str, list[dict[str, Any]]] = {}
    for split, requests in plan(sizes).items():
        (out / split).mkdir()
        rows[split] = []
        for i, request in enumerate(requests):
            row = {"kind": request["kind"], "prompt": request["prompt"], "change": request["change"],
                   "content_key": request["content_key"], "target": dataclasses.asdict(request["target"]),
                   "image": f"{split}/{i:05d}.png", "source": None, "source_image": None,
                   "source_prompt": request["source_prompt"]}
            Image.fromarray(request["target"].pixels()).save(out / row["image"])
            if request["source"] is not None:
                row["source"] = dataclasses.asdict(request["source"])
                row["source_image"] = f"{split}/{i:05d}-source.png"
                Image.fromarray(request["source"].pixels()).save(out / row["source_image"])
            rows[split].append(row)
    (out / RECORDS_FILE).write_text(json.dumps(rows))  # last: its presence marks the build complete


def _drawing(row: dict[str, Any], root: Path, *, layout: bool, split: str) -> Drawing:
    image = root / row["image"]
    return Drawing(kind=row["kind"], prompt=row["prompt"], target=Scene(**row["target"]),
                   source=None if row["source"] is None else Scene(**row["source"]), change=row["change"],
                   content_key=row["content_key"], image=image,
                   source_image=None if row["source_image"] is None else root / row["source_image"],
                   source_prompt=row["source_prompt"], layout=layout,
                   source_layout=layout and (split != "train" or source_keeps_layout(row["content_key"], image)))
