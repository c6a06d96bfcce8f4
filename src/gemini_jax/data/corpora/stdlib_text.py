"""The Python standard library's own source as a text corpus: files, and documents cut from them."""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

TEXT_CHUNK_CHARS = 4096
_TEXT_MAX_FILE_BYTES = 200_000
_TEXT_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}


def stdlib_sources(*, max_bytes: int) -> list[tuple[str, str]]:
    """(relative path, source) of standard-library modules, test suites and files over
    200 KB left out, at most max_bytes in all, taken in an order fixed by a hash of the path
    (a spread of the library, not its first letters)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    candidates = []
    for directory, subdirs, files in os.walk(stdlib):
        subdirs[:] = sorted(d for d in subdirs if d not in _TEXT_SKIP_DIRS)
        for name in files:
            path = Path(directory) / name
            if name.endswith(".py") and not name.startswith("test_") and path.stat().st_size <= _TEXT_MAX_FILE_BYTES:
                candidates.append((path.relative_to(stdlib).as_posix(), path.stat().st_size))
    candidates.sort(key=lambda c: hashlib.sha256(c[0].encode()).digest())
    sources, total = [], 0
    for relative, size in candidates:
        if total + size > max_bytes:
            continue
        try:
            text = (stdlib / relative).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        total += size
        sources.append((relative, text))
    return sources


def text_chunks(text: str, *, limit: int) -> list[str]:
    """Pieces of at most `limit` characters cut at line ends (a longer line stands alone)."""
    pieces, current, length = [], [], 0
    for line in text.splitlines(keepends=True):
        if current and length + len(line) > limit:
            pieces.append("".join(current))
            current, length = [], 0
        current.append(line)
        length += len(line)
    if current:
        pieces.append("".join(current))
    return [p for p in pieces if p.strip()]
