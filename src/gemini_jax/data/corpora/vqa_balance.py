"""Yes/no questions that need the picture: easy-VQA's train set asks whether a shape or colour is
there about one that is absent four times in five (23,258 of its 28,407 yes/no questions), so a
model that answers "absent" without looking scores about 82% on them. The demo trained that way
answered its validation questions about a present shape or colour right in only 25-57% of cases
(docs/robustness.md). Here a share of the absent-thing questions is asked about what the picture
holds instead, so that training sees both about equally often.

What a picture holds: its colour from its pixels (the image judge's rule: the nearest of
easy-VQA's eight colours to the shape's inner pixels; every easy-VQA picture has one shape), its
shape from the image's own questions (a shape question's answer, or what its yes/no answers leave).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from gemini_jax.data.corpora import question_forms
from gemini_jax.data.corpora.demo import DemoRecord
from gemini_jax.data.corpora.question_forms import Meaning
from gemini_jax.data.corpora.robustness import VQA_SHAPES

# Of the questions about an absent shape or colour, the share asked about the present one instead:
# from 18% present to 0.18 + 0.82 * 0.4 = 51%.
ASK_PRESENT = 0.4


@dataclasses.dataclass(frozen=True)
class Scene:
    """What one picture holds; `shape` is None when its questions do not tell."""

    colour: str
    shape: str | None


def picture_colour(pixels: np.ndarray) -> str:
    """The colour of a picture's shape, by the image judge's rule (evals/image_judge.py)."""
    from gemini_jax.evals.image_judge import colour_of, shape_mask

    pixels = np.asarray(pixels)[..., :3]
    mask = shape_mask(pixels)
    if not mask.any():
        raise ValueError("the picture has no pixel unlike its background")
    return colour_of(pixels, mask)


def known_shape(records: Sequence[DemoRecord]) -> str | None:
    """The shape one picture's questions tell: a shape question's answer, or the one shape its
    yes/no answers do not rule out."""
    possible = set(VQA_SHAPES)
    for record in records:
        answer = record.meta["answer"]
        if answer in VQA_SHAPES:
            return answer
        if answer not in ("yes", "no"):
            continue
        m = question_forms.meaning(record.meta["prompt"])
        if m.ask == "exists" and m.shape is not None:
            present = (answer == "yes") != m.negated
            if present:
                return m.shape
            possible.discard(m.shape)
    return possible.pop() if len(possible) == 1 else None


def scenes(records: Sequence[DemoRecord], media_root: Path) -> dict[str, Scene]:
    """{media: Scene} for every picture the records ask about."""
    by_media: dict[str, list[DemoRecord]] = {}
    for record in records:
        by_media.setdefault(record.meta["media"], []).append(record)
    return {media: Scene(picture_colour(np.asarray(Image.open(media_root / media).convert("RGB"))), known_shape(group))
            for media, group in by_media.items()}


def about_present(question: str, answer: str) -> bool | None:
    """Whether a yes/no question in easy-VQA's templates asks about a shape or colour the picture
    holds; None for any other question."""
    if answer not in ("yes", "no"):
        return None
    try:
        m = question_forms.meaning(question)
    except ValueError:
        return None
    return (answer == "yes") != m.negated if m.ask == "exists" else None


def asked_about_present(question: str, answer: str, scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """(question, answer): an easy-VQA question about an absent shape or colour is, ASK_PRESENT of
    the time, asked about the picture's own one instead (same template, same negation); every
    other question comes back as it was."""
    if about_present(question, answer) is not False or rng.random() >= ASK_PRESENT:
        return question, answer
    m = question_forms.meaning(question)
    if m.shape is not None:
        if scene.shape is None:
            return question, answer
        present = dataclasses.replace(m, shape=scene.shape)
    else:
        present = dataclasses.replace(m, colour=scene.colour)
    return _same_template(question, m, present), "no" if m.negated else "yes"


def _same_template(question: str, old: Meaning, new: Meaning) -> str:
    """`question` with the thing it names replaced: "is there a red shape?" -> "is there a blue shape?"."""
    before = old.shape or f"{old.colour} shape"
    after = new.shape or f"{new.colour} shape"
    head, found, tail = question.rpartition(f" {before}")
    if not found:
        raise ValueError(f"{question!r} does not name {before!r}")
    return f"{head} {after}{tail}"
