"""One example as one self-contained record: its JSON with every media file's bytes embedded.

    data = encode_record(example)     # b"GJR1" + uint32 JSON length + JSON + blobs
    example = decode_record(data)     # media parts come back as bytes: Part(image=b"\\x89PNG...")

The JSON is the `contents` shape with each media part replaced by `{"image": {"bytes": N}}`;
the blobs follow in part order, N bytes each. Keys are sorted and separators fixed, so the
same example always encodes to the same bytes (the split hashes them). No pickle: a record
from anywhere decodes to plain strings and bytes, or raises RecordError.
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import numpy as np

from gemini_jax.data.examples import PART_KINDS, Audio, Content, Example, ExampleError, Part

MAGIC = b"GJR1"
_HEADER = struct.Struct("<4sI")  # magic, JSON length


class RecordError(ValueError):
    """Bytes that are not a record this codec wrote."""


def _array_bytes(kind: str, value: np.ndarray | Audio) -> bytes:
    """Decoded media as a lossless file: PNG for an image, APNG for a video, float WAV for audio."""
    from PIL import Image
    import soundfile

    out = io.BytesIO()
    if kind == "audio" and isinstance(value, Audio):
        soundfile.write(out, np.asarray(value.samples, dtype=np.float32), int(value.sample_rate),
                        format="WAV", subtype="FLOAT")
    elif kind == "image" and isinstance(value, np.ndarray):
        Image.fromarray(np.asarray(value, dtype=np.uint8)).save(out, format="PNG")
    elif kind == "video" and isinstance(value, np.ndarray) and value.ndim == 4:
        frames = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in value]
        frames[0].save(out, format="PNG", save_all=True, append_images=frames[1:])
    else:
        raise ExampleError(f"a {kind} part holds a {type(value).__name__}, which a record cannot store; "
                           "accepted: a file path, the file's bytes, or a decoded array")
    return out.getvalue()


def media_bytes(kind: str, value: object) -> bytes:
    """The bytes a record stores for one media part (a path is read; bytes are kept as they are)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.is_file():
            raise ExampleError(f"{kind} file {str(path)!r} does not exist")
        return path.read_bytes()
    return _array_bytes(kind, value)


def encode_record(example: Example) -> bytes:
    """The example with its media embedded, as canonical bytes."""
    blobs: list[bytes] = []
    turns = []
    for turn in example.contents:
        parts = []
        for part in turn.parts:
            if part.kind == "text":
                parts.append({"text": part.text})
            else:
                blob = media_bytes(part.kind, getattr(part, part.kind))
                blobs.append(blob)
                parts.append({part.kind: {"bytes": len(blob)}})
        turns.append({"role": turn.role, "parts": parts})
    head = {"contents": turns, "train_on": example.train_on, "raw_text": example.raw_text, "task": example.task}
    if example.group:  # absent when empty: an example without one encodes as it always has
        head["group"] = example.group
    try:
        text = json.dumps(head, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise ExampleError(f"text is not valid Unicode ({e.reason} at character {e.start})") from None
    return _HEADER.pack(MAGIC, len(text)) + text + b"".join(blobs)


def _blob_length(spec: object, kind: str) -> int:
    if not isinstance(spec, dict) or not isinstance(spec.get("bytes"), int) or spec["bytes"] < 0:
        raise RecordError(f"a {kind} part should be {{'bytes': N}}, got {spec!r}")
    return spec["bytes"]


def decode_record(data: bytes) -> Example:
    """The example a record holds, media as bytes."""
    if len(data) < _HEADER.size:
        raise RecordError(f"a record of {len(data)} bytes is shorter than its header")
    magic, length = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise RecordError(f"not a gemini-jax record: starts with {magic!r}, expected {MAGIC!r}")
    start = _HEADER.size
    try:
        head = json.loads(data[start:start + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"the record's JSON is unreadable ({e})") from None
    offset = start + length
    try:
        contents = []
        for turn in head["contents"]:
            parts = []
            for part in turn["parts"]:
                (kind, value), = part.items()
                if kind not in PART_KINDS:
                    raise RecordError(f"unknown part kind {kind!r}")
                if kind != "text":
                    n = _blob_length(value, kind)
                    if offset + n > len(data):
                        raise RecordError(f"a {kind} of {n} bytes runs past the record's end")
                    value, offset = bytes(data[offset:offset + n]), offset + n
                parts.append(Part(**{kind: value}))
            contents.append(Content(turn["role"], tuple(parts)))
        example = Example(contents=tuple(contents), train_on=head["train_on"], raw_text=head["raw_text"],
                          task=head["task"], group=str(head.get("group", "")))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        if isinstance(e, RecordError):
            raise
        raise RecordError(f"the record's JSON does not hold an example ({e})") from None
    if offset != len(data):
        raise RecordError(f"the record has {len(data) - offset} bytes after its last blob")
    return example
