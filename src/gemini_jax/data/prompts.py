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
from pathlib import Path

from gemini_jax.data.examples import Example, ExampleError, from_json
from gemini_jax.data.prepare.pipeline import hash_split
from gemini_jax.data.records import DataError

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
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such prompt file (JSONL, one conversation per line)")
    prompts, bad = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                prompts.append(prompt_from_json(json.loads(line), base_dir=path.parent, where=where))
            except json.JSONDecodeError as e:
                bad.append(f"{where}: not JSON ({e.msg} at column {e.colno})")
            except ExampleError as e:
                bad.append(str(e))
    if len(bad) > max_bad_records:
        shown = "\n  ".join(bad[:5])
        raise DataError(f"{path}: {len(bad)} bad prompt records (at most {max_bad_records} may be skipped: "
                        f"--max-bad-records):\n  {shown}")
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def split_prompts(prompts: list[Prompt], *, validation_fraction: float, test_fraction: float) -> dict[str, list[Prompt]]:
    out: dict[str, list[Prompt]] = {name: [] for name in SPLITS}
    for prompt in prompts:
        out[hash_split(prompt.split_key(), validation_fraction=validation_fraction,
                       test_fraction=test_fraction)].append(prompt)
    return out
