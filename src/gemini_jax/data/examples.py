"""Examples in the shape of the Gemini API's `contents`: turns with roles, each a list of parts.

    Example(contents=[
        Content(role="user", parts=[Part(image="cat.png"), Part(text="What is this?")]),
        Content(role="model", parts=[Part(text="A cat.")]),
    ])

A part holds exactly one of text, image, audio or video. Media may be a file path, the
file's bytes (an uploaded image or WAV: no temporary file), or already-decoded data: an
image as uint8[H, W, 3], audio as `Audio` (float32 samples and
their rate), a video as uint8[F, H, W, 3]. `from_json` reads the API's JSON spelling
(`{"role": ..., "parts": [{"text": ...}, {"image": "path"}]}`), paths relative to a base.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

import numpy as np

Role = Literal["user", "model"]
ROLES = ("user", "model")
PART_KINDS = ("text", "image", "audio", "video")
TRAIN_ON = ("model", "last", "all")


class ExampleError(ValueError):
    """An example that does not follow the contents format."""


@dataclasses.dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32[N] (mono) or [N, channels]
    sample_rate: int


MediaSource = str | os.PathLike | bytes | np.ndarray | Audio


@dataclasses.dataclass(frozen=True)
class Part:
    text: str | None = None
    image: MediaSource | None = None
    audio: MediaSource | None = None
    video: MediaSource | None = None

    def __post_init__(self):
        given = [k for k in PART_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ExampleError(f"a part holds exactly one of {PART_KINDS}, got {given or 'none'}")

    @property
    def kind(self) -> str:
        return next(k for k in PART_KINDS if getattr(self, k) is not None)


@dataclasses.dataclass(frozen=True)
class Content:
    role: Role
    parts: tuple[Part, ...]

    def __post_init__(self):
        if self.role not in ROLES:
            raise ExampleError(f"role must be one of {ROLES}, got {self.role!r}")
        object.__setattr__(self, "parts", tuple(self.parts))
        if not self.parts:
            raise ExampleError(f"a {self.role} turn has no parts")


@dataclasses.dataclass(frozen=True)
class Example:
    """One training or evaluation example.

    `train_on` says where the loss goes: "model" (the model's turns, the default), "last"
    (the last model turn only: the reply a preference pair compares, earlier turns being its
    context) or "all" (every text token, for plain language modelling). `raw_text` examples are
    rendered without the chat template (a document, not a conversation). Examples that share a
    `group` (e.g. several questions on one image, or augmented copies of one original) land in one
    split together: `data prepare` splits by the group's hash instead of the example's.
    """

    contents: tuple[Content, ...]
    train_on: Literal["model", "last", "all"] = "model"
    raw_text: bool = False
    task: str = ""
    group: str = ""

    def __post_init__(self):
        object.__setattr__(self, "contents", tuple(self.contents))
        if not self.contents:
            raise ExampleError("an example has no contents")
        if self.train_on not in TRAIN_ON:
            raise ExampleError(f"train_on must be one of {TRAIN_ON}, got {self.train_on!r}")


def text_document(text: str, *, task: str = "text") -> Example:
    """A plain document for language modelling: loss on every token, no chat template."""
    return Example(contents=(Content("model", (Part(text=text),)),), train_on="all", raw_text=True, task=task)


def from_json(data: dict[str, Any], *, base_dir: str | os.PathLike = ".", where: str = "example") -> Example:
    """Reads `{"contents": [{"role": ..., "parts": [...]}], ...}`; media paths relative to base_dir."""
    if not isinstance(data, dict) or not isinstance(data.get("contents"), list):
        raise ExampleError(f"{where}: expected an object with a 'contents' list")
    contents = []
    for i, turn in enumerate(data["contents"]):
        if not isinstance(turn, dict) or not isinstance(turn.get("parts"), list):
            raise ExampleError(f"{where}: contents[{i}] needs 'role' and a 'parts' list")
        parts = []
        for j, part in enumerate(turn["parts"]):
            if not isinstance(part, dict) or len(part) != 1 or next(iter(part)) not in PART_KINDS:
                raise ExampleError(
                    f"{where}: contents[{i}].parts[{j}] must be one of {{'text'|'image'|'audio'|'video': ...}}"
                )
            (kind, value), = part.items()
            if kind != "text":
                value = os.path.join(base_dir, value)
            parts.append(Part(**{kind: value}))
        try:
            contents.append(Content(turn.get("role", "user"), tuple(parts)))
        except ExampleError as e:
            raise ExampleError(f"{where}: contents[{i}]: {e}") from None
    group = data.get("group", "")
    if isinstance(group, bool) or not isinstance(group, (str, int)):
        raise ExampleError(f"{where}: 'group' must be a string or an integer, got {group!r}")
    return Example(
        contents=tuple(contents),
        train_on=data.get("train_on", "model"),
        raw_text=bool(data.get("raw_text", False)),
        task=str(data.get("task", "")),
        group=str(group),
    )


def to_json(example: Example) -> dict[str, Any]:
    """The JSON `from_json` reads back (media given as file paths, written as they are)."""
    turns = []
    for turn in example.contents:
        parts = []
        for part in turn.parts:
            value = getattr(part, part.kind)
            if part.kind != "text" and not isinstance(value, (str, os.PathLike)):
                raise ExampleError(f"a {part.kind} part holds a {type(value).__name__}; to_json writes file paths only")
            parts.append({part.kind: os.fspath(value) if part.kind != "text" else value})
        turns.append({"role": turn.role, "parts": parts})
    data: dict[str, Any] = {"contents": turns, "train_on": example.train_on, "raw_text": example.raw_text}
    data |= {key: getattr(example, key) for key in ("task", "group") if getattr(example, key)}
    return data
