"""Preference pairs: one prompt, a reply people preferred and one they did not.

One pair per JSONL line, in the contents format (data/examples.py), the prompt ending on a user
turn and each reply given as the parts of the model turn that would follow it:

    {"contents": [{"role": "user", "parts": [{"image": "cat.png"}, {"text": "What is this?"}]}],
     "chosen": [{"text": "A cat."}], "rejected": [{"text": "A dog."}]}

Media paths are relative to the JSONL file. A pair may carry a `group`: pairs of one group
fall in one split. The split is by a hash of the prompt (or group), so every pair about one
prompt lands on the same side and the held-out pairs ask what training never saw.

A batch of B pairs is 2B rows: the B chosen replies, then the B rejected ones in the same order.
Each row scores its reply only (`train_on="last"`), which is what the reward model and DPO
compare.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence

import grain
import numpy as np

from gemini_jax.config import ModelConfig
from gemini_jax.data.encode import EncodeError, encode_example
from gemini_jax.data.examples import Content, Example, ExampleError, Part, from_json
from gemini_jax.data.jsonl_records import read_jsonl
from gemini_jax.data.prepare.pipeline import hash_split
from gemini_jax.data.records import DataError, Row
from gemini_jax.data.row_shapes import RowShapes, media_shapes, pad_row, stack_rows
from gemini_jax.data.tokenizer import Tokenizer

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt: tuple[Content, ...]  # ends on a user turn
    chosen: tuple[Part, ...]
    rejected: tuple[Part, ...]
    group: str = ""

    def example(self, reply: str) -> Example:
        """The prompt followed by the "chosen" or "rejected" reply, scored on that reply only."""
        parts = {"chosen": self.chosen, "rejected": self.rejected}[reply]
        return Example(contents=(*self.prompt, Content("model", parts)), train_on="last")

    def split_key(self) -> bytes:
        if self.group:
            return b"group:" + self.group.encode("utf-8")
        return json.dumps([[t.role, [_part_json(p) for p in t.parts]] for t in self.prompt]).encode("utf-8")


def _part_json(part: Part) -> dict[str, str]:
    value = getattr(part, part.kind)
    return {part.kind: value if isinstance(value, str) else os.fspath(value)}


def pair_from_json(data: object, *, base_dir: str | os.PathLike, where: str) -> PreferencePair:
    """One pair from its JSON object; an ExampleError naming `where` and the field if it is not one."""
    if not isinstance(data, dict):
        raise ExampleError(f"{where}: expected an object with 'contents', 'chosen' and 'rejected'")
    missing = [k for k in ("contents", "chosen", "rejected") if k not in data]
    if missing:
        raise ExampleError(f"{where}: missing {', '.join(repr(k) for k in missing)}; a preference pair needs "
                           "'contents' (the prompt), 'chosen' and 'rejected' (the parts of each reply)")
    prompt = from_json({"contents": data["contents"], "group": data.get("group", "")}, base_dir=base_dir, where=where)
    if prompt.contents[-1].role != "user":
        raise ExampleError(f"{where}: 'contents' must end on a user turn (the prompt both replies answer); "
                           f"it ends on a {prompt.contents[-1].role} turn")
    replies = {}
    for name in ("chosen", "rejected"):
        turn = {"role": "model", "parts": data[name]}
        replies[name] = from_json({"contents": [turn]}, base_dir=base_dir, where=f"{where}: {name!r}").contents[0].parts
    if replies["chosen"] == replies["rejected"]:
        raise ExampleError(f"{where}: 'chosen' and 'rejected' are identical; a pair must prefer one reply to another")
    return PreferencePair(prompt=prompt.contents, chosen=replies["chosen"], rejected=replies["rejected"],
                          group=prompt.group)


def read_pairs(path: str | os.PathLike, *, max_bad_records: int = 0) -> list[PreferencePair]:
    """Every pair of a JSONL file; a malformed line is skipped and counted, past
    `max_bad_records` (default: none allowed) a DataError names each bad line."""
    return read_jsonl(path, lambda data, base, where: pair_from_json(data, base_dir=base, where=where),
                      what="preference pairs", max_bad_records=max_bad_records)


def split_pairs(pairs: Sequence[PreferencePair], *, validation_fraction: float = 0.1,
                test_fraction: float = 0.1) -> dict[str, list[PreferencePair]]:
    """{"train", "validation", "test"}: each pair by the hash of its prompt (or group)."""
    out: dict[str, list[PreferencePair]] = {name: [] for name in SPLITS}
    for pair in pairs:
        out[hash_split(pair.split_key(), validation_fraction=validation_fraction,
                       test_fraction=test_fraction)].append(pair)
    return out


@dataclasses.dataclass(frozen=True)
class EncodedPairs:
    """Pairs encoded once, each reply a padded row, all at one shape."""

    chosen: list[Row]
    rejected: list[Row]
    shapes: RowShapes

    def __len__(self) -> int:
        return len(self.chosen)

    def batch(self, indices: Sequence[int], batch_size: int) -> Row:
        """The 2 * batch_size rows of pairs `indices` (chosen, then rejected; missing pairs are
        all-padding rows, which no loss or score counts)."""
        stack = stack_rows(batch_size, template=self.chosen[0])
        first, second = stack([self.chosen[i] for i in indices]), stack([self.rejected[i] for i in indices])
        return {k: np.concatenate([first[k], second[k]]) for k in first}


def encode_pairs(pairs: Sequence[PreferencePair], *, tokenizer: Tokenizer, config: ModelConfig,
                 seq_len: int | None = None) -> EncodedPairs:
    """Every reply of `pairs` as a row padded to one shape: `seq_len` (default the longest row,
    rounded up to a multiple of 8) and the most media any row holds."""
    chosen, rejected = [], []
    for i, pair in enumerate(pairs):
        try:
            chosen.append(encode_example(pair.example("chosen"), tokenizer=tokenizer, config=config))
            rejected.append(encode_example(pair.example("rejected"), tokenizer=tokenizer, config=config))
        except (EncodeError, ExampleError, OSError, ValueError) as e:
            raise DataError(f"preference pair {i}: {e}") from e
    rows = chosen + rejected
    longest = max(r["tokens"].shape[0] for r in rows)
    if seq_len is None:
        seq_len = min(8 * math.ceil(longest / 8), config.max_seq_len)

    def most(key: str, axis: int = 0) -> int:
        return max((r[key].shape[axis] for r in rows if key in r), default=0)

    shapes = media_shapes(seq_len=seq_len, config=config, max_images=most("image_patches"),
                          max_frames=most("frame_patches"), max_audio_clips=most("audio_mels"),
                          max_mel_frames=most("audio_mels", 1) or None)
    return EncodedPairs([pad_row(r, shapes) for r in chosen], [pad_row(r, shapes) for r in rejected], shapes)


def pair_batches(pairs: EncodedPairs, *, batch_size: int, seed: int, shuffle: bool = True,
                 num_epochs: int | None = None) -> grain.DatasetIterator:
    """Batches of `batch_size` pairs (2 * batch_size rows), reshuffled every epoch; a Grain
    iterator, so its position is checkpointed with the run."""
    if len(pairs) < batch_size and num_epochs is None:
        raise DataError(f"{len(pairs)} training pairs are fewer than a batch of {batch_size}: lower --batch-size")
    ds = grain.MapDataset.range(len(pairs))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs) if num_epochs != 1 else ds
    drop = num_epochs is None  # an endless stream keeps one shape; a finite one keeps its last pairs
    ds = ds.batch(batch_size, drop_remainder=drop, batch_fn=lambda idx: pairs.batch(list(idx), batch_size))
    return iter(ds.to_iter_dataset())
