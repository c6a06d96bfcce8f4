"""Prompts with reference answers: what reinforcement learning samples from and checks against.

One conversation per JSONL line, in the contents format (data/examples.py), ending on the
model turn that answers it: that turn is the reference (the text a verifiable reward compares
with), everything before it the prompt. Conversations are split by a hash of their prompt (or
`group`), so held-out prompts are never trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os

from gemini_jax.data.examples import Example, ExampleError, from_json
from gemini_jax.data.jsonl_records import read_jsonl
from gemini_jax.data.prepare.pipeline import hash_split

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Prompt:
    example: Example  # ends on a user turn
    reference: str  # the text of the model turn that answered it
    group: str = ""

    def split_key(self) -> bytes:
        if self.group:
            return b"group:" + self.group.encode("utf-8")
        turns = [[t.role, [{p.kind: str(getattr(p, p.kind))} for p in t.parts]] for t in self.example.contents]
        return json.dumps(turns).encode("utf-8")


def prompt_from_json(data: object, *, base_dir: str | os.PathLike, where: str) -> Prompt:
    example = from_json(data, base_dir=base_dir, where=where)
    roles = [t.role for t in example.contents]
    if len(roles) < 2 or roles[-1] != "model" or roles[-2] != "user":
        raise ExampleError(f"{where}: a prompt conversation must end on a user turn followed by the model turn "
                           f"that answers it (the reference); its turns are {roles}")
    reference = example.contents[-1]
    if any(p.kind != "text" for p in reference.parts):
        raise ExampleError(f"{where}: the reference (the last model turn) must be text only")
    return Prompt(example=dataclasses.replace(example, contents=example.contents[:-1]),
                  reference="".join(p.text for p in reference.parts), group=example.group)


def read_prompts(path: str | os.PathLike, *, max_bad_records: int = 0) -> list[Prompt]:
    """Every prompt of a JSONL file; a malformed line is skipped and counted, past
    `max_bad_records` a DataError names each bad line."""
    return read_jsonl(path, lambda data, base, where: prompt_from_json(data, base_dir=base, where=where),
                      what="prompts", max_bad_records=max_bad_records)


def split_prompts(prompts: list[Prompt], *, validation_fraction: float, test_fraction: float) -> dict[str, list[Prompt]]:
    out: dict[str, list[Prompt]] = {name: [] for name in SPLITS}
    for prompt in prompts:
        out[hash_split(prompt.split_key(), validation_fraction=validation_fraction,
                       test_fraction=test_fraction)].append(prompt)
    return out
