"""Questions a model cannot answer from its image: the demo's easy-VQA images asked about a shape
(or a coloured shape) that is not in them, beside the same question about what is there.

    items = hedge_items(corpus.records("vqa", "test"))
    items[0].unanswerable   # "what color is the triangle?"   (the image shows a circle)
    items[0].answerable     # "what color is the circle?"     -> items[0].answer == "blue"
    items[0].hedge          # "There is no triangle in the image."

Every easy-VQA image holds one shape of one colour; `image_facts` reads both back from the
image's own questions and answers. The questions are written with easy-VQA's own templates
(question_forms.ORIGINAL), so only the absence is new. An item's choices (which absent shape or
colour, which template, which kind) are drawn from a hash of its image, the same in every process.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from gemini_jax.data.corpora.question_forms import ORIGINAL, meaning
from gemini_jax.data.corpora.robustness import VQA_COLOURS, VQA_SHAPES
from gemini_jax.data.examples import Content, Example, Part

KINDS = ("colour", "shape")  # "what color is the {shape}?" or "what is the {colour} shape?"


@dataclasses.dataclass(frozen=True)
class ImageFacts:
    image: str  # the image file
    image_id: str  # "train/12", "test/3": what identifies it across the corpus's splits
    shape: str
    colour: str


def image_facts(records: Sequence[Any]) -> list[ImageFacts]:
    """Each image of the demo's VQA `records` (DemoRecord) once, in first-seen order, with its shape
    and colour as its questions and answers tell them; an image whose questions do not tell both
    is left out."""
    shapes: dict[str, set[str]] = {}
    colours: dict[str, set[str]] = {}
    paths: dict[str, str] = {}
    for record in records:
        image_id, answer = record.meta["image_id"], record.meta["answer"]
        paths.setdefault(image_id, str(record.example.contents[0].parts[0].image))
        m = meaning(record.meta["prompt"])
        found_shape, found_colour = None, None
        if m.ask == "colour":
            found_shape, found_colour = m.shape, answer
        elif m.ask == "shape":
            found_shape, found_colour = answer, m.colour
        elif m.ask == "exists" and (answer == "yes") != m.negated:  # the named shape or colour is there
            found_shape, found_colour = m.shape, m.colour
        if found_shape:
            shapes.setdefault(image_id, set()).add(found_shape)
        if found_colour:
            colours.setdefault(image_id, set()).add(found_colour)
    out = []
    for image_id, path in paths.items():
        shape, colour = shapes.get(image_id, set()), colours.get(image_id, set())
        if len(shape) == 1 and len(colour) == 1:
            out.append(ImageFacts(image=path, image_id=image_id, shape=shape.pop(), colour=colour.pop()))
    return out


@dataclasses.dataclass(frozen=True)
class HedgeItem:
    facts: ImageFacts
    kind: str  # "colour" (a shape is named) or "shape" (a colour is named)
    unanswerable: str  # names a shape or colour the image does not hold
    answerable: str  # the same template, naming what the image holds
    answer: str  # the answerable question's answer
    absent: str  # what is not there: "triangle" or "green shape"

    @property
    def hedge(self) -> str:
        """The reply the tuning data teaches for the unanswerable question."""
        return f"There is no {self.absent} in the image."

    def prompt(self, question: str) -> Example:
        """The question about the image, as the demo's VQA examples ask it (image, then text)."""
        return Example(contents=(Content("user", (Part(image=self.facts.image), Part(text=question))),), task="vqa",
                       group=f"image:{self.facts.image_id}")


def hedge_item(facts: ImageFacts) -> HedgeItem:
    """One unanswerable question about the image and its answerable twin."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"hedge:{facts.image_id}".encode()).digest()[:8], "little"))
    kind = KINDS[int(rng.integers(len(KINDS)))]
    if kind == "colour":
        templates = ORIGINAL[("colour", False)]
        template = templates[int(rng.integers(len(templates)))]
        others = [s for s in VQA_SHAPES if s != facts.shape]
        absent = others[int(rng.integers(len(others)))]
        return HedgeItem(facts=facts, kind=kind, unanswerable=template.format(thing=absent),
                         answerable=template.format(thing=facts.shape), answer=facts.colour, absent=absent)
    (template,) = ORIGINAL[("shape", True)]
    others = [c for c in VQA_COLOURS if c != facts.colour]
    absent = others[int(rng.integers(len(others)))]
    return HedgeItem(facts=facts, kind=kind, unanswerable=template.format(colour=absent),
                     answerable=template.format(colour=facts.colour), answer=facts.shape, absent=f"{absent} shape")


def hedge_items(records: Sequence[Any], *, limit: int | None = None) -> list[HedgeItem]:
    """One item per image of `records` (at most `limit` images), in first-seen order."""
    return [hedge_item(f) for f in image_facts(records)[:limit]]
