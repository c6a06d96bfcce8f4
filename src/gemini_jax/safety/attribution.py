"""Attribution to a given source: short synthetic passages of a few facts ("The red box is under the
table. The green ball is on the shelf.") and a question about one of them, with the rule that says
whether an answer is supported by the passage.

    p = passage(7)
    p.prompt().contents[0].parts[0].text   # "Passage: The ... Question: Where is the green ball? ..."
    p.answer                               # "The green ball is on the shelf."
    supported("It is on the shelf.", p)    # True

A passage is made from its seed alone (the same in every process) and lands in a split by a hash
of its text (the demo's rule, data/corpora/held_out.py: 10% test, 5% of the rest validation), so
no test passage is ever trained on. Every object is seen in every place across the passages, so a
model cannot answer from what it remembers of other passages: only this one says where it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Iterator

import numpy as np

from gemini_jax.data.corpora.held_out import READ_SPLITS, is_test, is_validation
from gemini_jax.data.examples import Content, Example, Part
from gemini_jax.safety.judge import normalize

COLOURS = ("red", "green", "blue", "yellow", "black", "white", "brown", "orange")
OBJECTS = ("box", "ball", "cup", "book", "key", "hat", "lamp", "shoe", "bag", "clock")
PLACES = ("on the shelf", "under the table", "in the drawer", "behind the door", "next to the bed",
          "in the garden", "on the chair", "under the sofa", "in the basket", "beside the window")
FACTS = (2, 3, 4)  # facts per passage, drawn evenly
INSTRUCTION = "Answer the question from the passage only."


@dataclasses.dataclass(frozen=True)
class Passage:
    seed: int
    facts: tuple[tuple[str, str], ...]  # (object, place), e.g. ("red box", "under the table")
    asked: int  # the index of the fact the question is about

    @property
    def text(self) -> str:
        return " ".join(f"The {thing} is {place}." for thing, place in self.facts)

    @property
    def thing(self) -> str:
        return self.facts[self.asked][0]

    @property
    def place(self) -> str:
        return self.facts[self.asked][1]

    @property
    def question(self) -> str:
        return f"Where is the {self.thing}?"

    @property
    def answer(self) -> str:
        """The supported answer the tuning data teaches."""
        return f"The {self.thing} is {self.place}."

    @property
    def split(self) -> str:
        key = f"attribution:{self.text}"
        return "test" if is_test(key) else "validation" if is_validation(key) else "train"

    def prompt(self) -> Example:
        """One user turn: the passage, then the question."""
        text = f"Passage: {self.text}\nQuestion: {self.question} {INSTRUCTION}"
        return Example(contents=(Content("user", (Part(text=text),)),), task="attribution",
                       group=f"passage:{self.text}")


def passage(seed: int) -> Passage:
    """The passage of `seed`: 2 to 4 facts about distinct objects in distinct places."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(f"passage:{seed}".encode()).digest()[:8], "little"))
    count = FACTS[int(rng.integers(len(FACTS)))]
    objects = rng.choice(len(OBJECTS), size=count, replace=False)
    places = rng.choice(len(PLACES), size=count, replace=False)
    facts = tuple((f"{COLOURS[int(rng.integers(len(COLOURS)))]} {OBJECTS[o]}", PLACES[p]) for o, p in zip(objects, places))
    return Passage(seed=seed, facts=facts, asked=int(rng.integers(count)))


def passages(split: str, count: int) -> list[Passage]:
    """The first `count` passages of `split`, by seed from 0, each text once."""
    if split not in READ_SPLITS:
        raise ValueError(f"split must be one of {READ_SPLITS}, got {split!r}")
    out, seen = [], set()
    for p in _all_passages():
        if len(out) == count:
            break
        if p.split == split and p.text not in seen:
            seen.add(p.text)
            out.append(p)
    return out


def _all_passages() -> Iterator[Passage]:
    seed = 0
    while True:
        yield passage(seed)
        seed += 1


def _words(text: str) -> str:
    """Lower-case words separated by single spaces, with a space at each end (to match whole words)."""
    return " " + " ".join(re.sub(r"[^a-z0-9']+", " ", normalize(text)).split()) + " "


def supported(answer: str, p: Passage) -> bool:
    """The support rule: the answer states the passage's place for the object asked about, and
    names no other place (of PLACES), so "The red box is under the table." or "under the table"
    is supported and "on the shelf", or both places, is not."""
    words = _words(answer)
    named = {place for place in PLACES if _words(place) in words}
    return named == {p.place}
