"""What a demo question means, and other ways of asking it.

easy-VQA writes its questions from 24 lower-case templates and the video task from four; a model
that only ever sees those learns strings, not questions. `meaning` reads a question back into
what it asks, `ask` writes a meaning with a template of a given set, and the surface changes
(`flip_first_case`, `drop_question_mark`, `british`) are what a person changes when typing.

No two template sets share a template: `TRAINING` (what the demo trains on besides the
originals) and `HELD_OUT["validation"]` and `HELD_OUT["test"]` (what only the robustness suite
asks, data/corpora/robustness.py, on each split).

    m = meaning("is there not a red shape?")   # Meaning(ask="exists", colour="red", negated=True)
    ask(m, HELD_OUT["validation"], rng)        # e.g. "Is it true that no red shape is shown?"
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

import numpy as np


@dataclasses.dataclass(frozen=True)
class Meaning:
    """What a question asks. `ask`: "colour" (of `shape`, else of the only shape), "shape" (of
    `colour`, else the only one), "exists" (is a `shape` or a `colour` shape there; `negated`
    flips the answer), "direction", "first", "last", "growth" (video: `colour` and `shape` name
    the moving object)."""

    ask: str
    shape: str | None = None
    colour: str | None = None
    negated: bool = False


# The templates the data is written from: easy-VQA's 24 and the video task's four (shapes.py).
ORIGINAL = {
    ("colour", False): ["what color is the {thing}?", "what is the color of the {thing}?"],
    ("shape", False): ["what shape is in the image?", "what shape does the image contain?", "what shape is present?"],
    ("shape", True): ["what is the {colour} shape?"],
    ("exists", False): ["is a {thing} present?", "is there a {thing}?", "does the image contain a {thing}?",
                        "is there a {thing} in the image?"],
    ("exists", True): ["is no {thing} present?", "is there not a {thing}?", "does the image not contain a {thing}?",
                       "is there not a {thing} in the image?"],
    ("direction", False): ["Which way does the {colour} {shape} move?"],
    ("first", False): ["Which shape appears first?"],
    ("last", False): ["Which shape appears last?"],
    ("growth", False): ["Does the {colour} {shape} get bigger or smaller?"],
}
_WORDS = {"thing": r"[a-z]+(?: shape)?", "shape": "[a-z]+", "colour": "[a-z]+"}


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.sub(r"\\\{(\w+)\\\}", lambda m: f"(?P<{m[1]}>{_WORDS[m[1]]})", re.escape(template)))


_PATTERNS = [(key, _pattern(t)) for key, templates in ORIGINAL.items() for t in templates]


def meaning(question: str) -> Meaning:
    """The meaning of one of ORIGINAL's questions."""
    for (kind, flag), pattern in _PATTERNS:
        found = pattern.fullmatch(question)
        if not found:
            continue
        fields = found.groupdict()
        thing = fields.pop("thing", None)
        if thing is not None and thing != "shape":
            if thing.endswith(" shape"):
                fields["colour"] = thing.removesuffix(" shape")
            else:
                fields["shape"] = thing
        return Meaning(kind, negated=kind == "exists" and flag, **fields)
    raise ValueError(f"{question!r} is not one of the demo's question templates")


# Templates per (ask, which of shape / colour is named, negated). {thing} is "shape", a shape
# name or "<colour> shape"; {shape} and {colour} are the object's.
TRAINING = {
    ("colour", False): ["What is the {thing}'s color?", "Which color does the {thing} have?",
                        "What color does the {thing} have?", "Say the color of the {thing}."],
    ("shape", False): ["What shape do you see?", "What kind of shape is shown?", "Which shape is shown?",
                       "What is the shape?"],
    ("shape", True): ["What is the shape that is {colour}?", "The {colour} shape is which shape?",
                      "What kind of shape is the {colour} one?"],
    ("exists", False): ["Do you see a {thing}?", "Does the picture show a {thing}?", "Is there any {thing}?"],
    ("exists", True): ["Is there no {thing}?", "Does the picture lack a {thing}?", "Is a {thing} absent?"],
    ("direction", False): ["Which direction does the {colour} {shape} move in?", "Where is the {colour} {shape} heading?"],
    ("first", False): ["Which shape is there from the start?", "What shape appears earliest?"],
    ("last", False): ["Which shape appears second?", "Which shape turns up after the other?"],
    ("growth", False): ["Is the {colour} {shape} getting bigger or smaller?", "Bigger or smaller: the {colour} {shape}?"],
}
# The robustness suite's paraphrases (data/corpora/robustness.py), a set per split: recipes are
# chosen on the validation set's scores, and training templates have been written from its
# failures (docs/robustness.md), so wordings nobody has tuned against are a set only test asks.
HELD_OUT = {
    "validation": {
        ("colour", False): ["Name the colour of the {thing}.", "Tell me the colour of the {thing}.",
                            "Which colour is the {thing}?"],
        ("shape", False): ["Which shape is it?", "Name the shape in the picture.", "What sort of shape can you see?"],
        ("shape", True): ["Which shape is {colour}?", "Name the {colour} shape's kind."],
        ("exists", False): ["Is any {thing} shown?", "Can you see a {thing}?", "Does this picture have a {thing} in it?"],
        ("exists", True): ["Is it true that no {thing} is shown?", "Is the picture without any {thing}?"],
        ("direction", False): ["In which direction is the {colour} {shape} moving?", "Where does the {colour} {shape} go?"],
        ("first", False): ["Which shape is shown before the other?", "What shape comes first?"],
        ("last", False): ["Which shape shows up later?", "What shape comes last?"],
        ("growth", False): ["Over the clip, does the {colour} {shape} become bigger or smaller?",
                            "Does the {colour} {shape} grow or shrink: bigger or smaller?"],
    },
    "test": {
        ("colour", False): ["What's the colour of the {thing}?", "Could you tell me what colour the {thing} is?",
                            "The {thing} is what colour?"],
        ("shape", False): ["What's the shape?", "Can you name the shape?", "What shape has been drawn?"],
        ("shape", True): ["Tell me which shape is {colour}.", "The {colour} one is what shape?"],
        ("exists", False): ["Is there a {thing} anywhere in the picture?", "Can a {thing} be seen?",
                            "Does the image include a {thing}?"],
        ("exists", True): ["Does the image have no {thing} at all?", "Is it correct that there is no {thing}?"],
        ("direction", False): ["What direction is the {colour} {shape} travelling in?",
                               "Towards which side does the {colour} {shape} move?"],
        ("first", False): ["Which of the shapes appears first?", "What is the first shape to appear?"],
        ("last", False): ["Which of the shapes appears last?", "What is the last shape to appear?"],
        ("growth", False): ["By the end, is the {colour} {shape} bigger or smaller?",
                            "Bigger or smaller, how does the {colour} {shape} change?"],
    },
}


def ask(m: Meaning, templates: dict[tuple[str, bool], list[str]], rng: np.random.Generator) -> str:
    """A question of `m` from one of `templates` (ORIGINAL, TRAINING or a split's HELD_OUT), chosen by `rng`."""
    if m.ask in ("colour", "shape"):
        key = (m.ask, m.ask == "shape" and m.colour is not None)
    elif m.ask == "exists":
        key = ("exists", m.negated)
    else:
        key = (m.ask, False)
    options = templates[key]
    template = options[int(rng.integers(len(options)))]
    if m.ask == "exists":
        thing = m.shape or f"{m.colour} shape"
    else:
        thing = m.shape or "shape"
    return template.format(thing=thing, shape=m.shape, colour=m.colour)


def about_present(question: str, answer: str) -> bool | None:
    """Whether a yes/no question of ORIGINAL's asks about a shape or colour the picture holds (its
    answer is "yes" unless negated); None for any other question. easy-VQA asks about an absent one
    four times in five, so a model can answer most of its yes/no questions without looking."""
    if answer not in ("yes", "no"):
        return None
    try:
        m = meaning(question)
    except ValueError:
        return None
    return (answer == "yes") != m.negated if m.ask == "exists" else None


def flip_first_case(question: str) -> str:
    """"what shape ..." -> "What shape ..." and back."""
    head = question[:1]
    return (head.lower() if head.isupper() else head.upper()) + question[1:]


PARAPHRASE_RATE = 0.3  # of training questions rewritten from a TRAINING template


def typed_form(question: str, key: str) -> str:
    """`question` (one of ORIGINAL's) as a person might type it: rewritten from a TRAINING template
    (three in ten), then British spelling (three in ten), the first letter's case flipped (even
    odds), no question mark (one in four). Drawn by generators seeded by `key` (what identifies the
    example), so every process writes the same form; the paraphrase has a generator of its own, so
    the other changes are drawn as they were without it. What the demo trains on."""
    paraphrase = _generator("paraphrase", key)
    if paraphrase.random() < PARAPHRASE_RATE:
        question = ask(meaning(question), TRAINING, paraphrase)
    rng = _generator("question", key)
    if rng.random() < 0.3:
        question = british(question)
    if rng.random() < 0.5:
        question = flip_first_case(question)
    if rng.random() < 0.25:
        question = drop_question_mark(question)
    return question


def _generator(purpose: str, key: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(f"{purpose}:{key}".encode()).digest()[:8], "little"))


def drop_question_mark(question: str) -> str:
    return question.rstrip().rstrip("?").rstrip()


_BRITISH = {"color": "colour", "gray": "grey"}


def british(question: str) -> str:
    """American spellings of the demo's questions in British ("color" -> "colour", "gray" -> "grey")."""
    return re.sub(r"\b(color|gray)\b", lambda m: _BRITISH[m[1]], question)


def has_american_spelling(question: str) -> bool:
    return british(question) != question
