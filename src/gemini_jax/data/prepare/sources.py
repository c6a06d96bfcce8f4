"""Reading the user's sources: JSONL files, text files and folders, one raw record at a time.

    for raw in iter_sources(["chats.jsonl", "docs/"]):      # RawRecord(where="chats.jsonl:3", ...)
        example = load_record(raw)                          # validated, media read into bytes

A `.jsonl` file holds one example a line in the `contents` shape (`examples.from_json`),
media paths relative to the file's folder; any other file is one text document; a folder
is read recursively in name order (hidden entries and media files skipped: they are what
the JSONL files point at). Reading is cheap and done in order; `load_record` does the
checking (JSON, roles, part kinds, media that exist and decode) and may run in a worker.
A bad record raises RecordInvalid naming file, line and field; `BadRecords` counts them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from gemini_jax.data import media
from gemini_jax.data.examples import Content, Example, ExampleError, Part, from_json, text_document
from gemini_jax.data.prepare.record_codec import media_bytes
from gemini_jax.data.records import DataError

# Files a folder may hold next to its JSONL that are not text documents.
MEDIA_SUFFIXES = frozenset(
    ".png .jpg .jpeg .gif .webp .bmp .ico .tif .tiff .wav .flac .ogg .mp3 .mp4 .apng .npy".split())
# Small limits for validation: enough to prove a file decodes, not a cap on what training accepts.
VALIDATE_VIDEO_FRAMES = 1
# Media already proven to decode, by content: a dataset asks many questions about one image.
_DECODED: set[tuple[str, bytes]] = set()
_DECODED_MAX = 1 << 20


class RecordInvalid(ValueError):
    """One record that cannot be used; the message starts with its file and line."""


@dataclasses.dataclass(frozen=True)
class RawRecord:
    where: str  # "path:line" for JSONL, "path" for a document
    kind: str  # "jsonl" | "text" | "bad" (an unreadable file) | "skip" (an empty file in a folder): `payload` says why
    payload: str  # the JSON line, the document's text, or the reason
    base_dir: str = "."


def check_sources(sources: Sequence[str]) -> None:
    if not sources:
        raise DataError("no sources given: name JSONL files, text files or folders")
    for source in sources:
        if not Path(source).exists():
            raise DataError(f"source {source!r} does not exist (accepted: a .jsonl file, a text file or a folder)")


def _iter_jsonl(path: Path) -> Iterator[RawRecord]:
    count = 0
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    count += 1
                    yield RawRecord(f"{path}:{number}", "jsonl", line, str(path.parent))
    except UnicodeDecodeError as e:
        yield RawRecord(f"{path}", "bad", f"not UTF-8 text ({e.reason} at byte {e.start} of a block)")
        return
    except OSError as e:
        yield RawRecord(f"{path}", "bad", f"unreadable ({e.strerror})")
        return
    if count == 0:
        yield RawRecord(f"{path}", "bad", "an empty JSONL file: no records (one JSON object a line expected)")


def _iter_text(path: Path, *, in_folder: bool) -> Iterator[RawRecord]:
    try:
        data = path.read_bytes()
    except OSError as e:
        yield RawRecord(f"{path}", "bad", f"unreadable ({e.strerror})")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield RawRecord(f"{path}", "bad", f"not UTF-8 text ({e.reason} at byte {e.start})")
        return
    if not text.strip():
        # An empty __init__.py in a package is normal; an empty file named as a source is a mistake.
        yield RawRecord(f"{path}", "skip" if in_folder else "bad", "an empty text file: no document")
        return
    yield RawRecord(f"{path}", "text", text)


def _iter_file(path: Path, *, in_folder: bool) -> Iterator[RawRecord]:
    yield from (_iter_jsonl(path) if path.suffix == ".jsonl" else _iter_text(path, in_folder=in_folder))


def _folder_files(folder: Path) -> Iterator[Path]:
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if entry.is_dir():
            yield from _folder_files(entry)
        elif entry.is_file() and entry.suffix.lower() not in MEDIA_SUFFIXES:
            yield entry


def iter_source(source: str) -> Iterator[RawRecord]:
    """The raw records of one source path, in order; an empty source is a DataError."""
    path = Path(source)
    files = _folder_files(path) if path.is_dir() else iter([path])
    count = 0
    for file in files:
        for raw in _iter_file(file, in_folder=path.is_dir()):
            count += 1
            yield raw
    if count == 0:
        raise DataError(f"source {source!r} is an empty folder: no files to read (hidden files and media are skipped)")


def iter_sources(sources: Sequence[str]) -> Iterator[RawRecord]:
    check_sources(sources)
    for source in sources:
        yield from iter_source(source)


def _checked_media(kind: str, value: object, field: str) -> bytes:
    """The media file's bytes once they decode (small limits: this proves the file, it does not preprocess)."""
    try:
        data = media_bytes(kind, value)
        key = (kind, hashlib.blake2b(data, digest_size=16).digest())
        if key in _DECODED:
            return data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resampling and downmix notices belong to training, not here
            if kind == "image":
                media.load_image(data)
            elif kind == "audio":
                import soundfile

                media.load_audio(data, sample_rate=soundfile.info(io.BytesIO(data)).samplerate)
            else:
                media.load_video(data, num_frames=VALIDATE_VIDEO_FRAMES)
    except (ExampleError, media.MediaError, OSError, RuntimeError) as e:
        name = os.fspath(value) if isinstance(value, (str, os.PathLike)) else f"<{type(value).__name__}>"
        raise RecordInvalid(f"{field}: {kind} {name!r}: {e}") from None
    if len(_DECODED) >= _DECODED_MAX:
        _DECODED.clear()
    _DECODED.add(key)
    return data


def _embed_media(example: Example, where: str) -> Example:
    """The example with every media part checked and replaced by its bytes."""
    turns = []
    for i, turn in enumerate(example.contents):
        parts = []
        for j, part in enumerate(turn.parts):
            if part.kind != "text":
                field = f"{where}: contents[{i}].parts[{j}].{part.kind}"
                part = Part(**{part.kind: _checked_media(part.kind, getattr(part, part.kind), field)})
            parts.append(part)
        turns.append(Content(turn.role, tuple(parts)))
    return dataclasses.replace(example, contents=tuple(turns))


def _parse_json(raw: RawRecord) -> Example:
    try:
        data = json.loads(raw.payload)
    except json.JSONDecodeError as e:
        raise RecordInvalid(f"{raw.where}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, dict):
        raise RecordInvalid(f"{raw.where}: expected a JSON object with 'contents', got {type(data).__name__}")
    if "contents" not in data:
        raise RecordInvalid(f"{raw.where}: no 'contents' (expected {{\"contents\": [{{\"role\": \"user\", "
                            "\"parts\": [{\"text\": ...}]}]}})")
    for key in ("train_on", "task"):
        if key in data and not isinstance(data[key], str):
            raise RecordInvalid(f"{raw.where}: {key} must be a string, got {data[key]!r}")
    for i, turn in enumerate(data["contents"] if isinstance(data["contents"], list) else ()):
        for j, part in enumerate(turn.get("parts", ()) if isinstance(turn, dict) else ()):
            if isinstance(part, dict) and len(part) == 1 and not isinstance(next(iter(part.values())), str):
                raise RecordInvalid(f"{raw.where}: contents[{i}].parts[{j}]: the value must be a string "
                                    "(text, or a media path relative to the JSONL file)")
    try:
        return from_json(data, base_dir=raw.base_dir, where=raw.where)
    except ExampleError as e:
        message = str(e)
        raise RecordInvalid(message if message.startswith(raw.where) else f"{raw.where}: {message}") from None


def load_record(raw: RawRecord) -> Example:
    """The checked example of one raw record, media as bytes; RecordInvalid if it is bad."""
    if raw.kind in ("bad", "skip"):
        raise RecordInvalid(f"{raw.where}: {raw.payload}")
    if raw.kind == "text":
        return text_document(raw.payload)
    return _embed_media(_parse_json(raw), raw.where)


class BadRecords:
    """Counts bad records, keeps the first few messages, and raises past `budget`."""

    def __init__(self, *, budget: int, keep: int = 5):
        self.budget = budget
        self.keep = keep
        self.count = 0
        self.first: list[str] = []

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.first) < self.keep:
            self.first.append(message)
        if self.count > self.budget:
            raise DataError(
                f"{self.count} bad records exceed --max-bad-records={self.budget}; first errors:\n  "
                + "\n  ".join(self.first))

    def report(self) -> dict:
        return {"count": self.count, "first": list(self.first)}
