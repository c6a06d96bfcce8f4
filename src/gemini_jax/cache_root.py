"""Where the project caches what it builds: corpora, their prepared data, compiled programs."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $GEMINI_JAX_CACHE, else ~/.cache/gemini-jax."""
    return Path(cache_dir or os.environ.get("GEMINI_JAX_CACHE") or Path.home() / ".cache" / "gemini-jax")


def build_once(root: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """`root`, built by `build(directory)` unless `root / marker` (written last) is there: built
    into a fresh directory beside it, then renamed into place, so a crash leaves nothing that
    looks whole and two processes building at once keep the first that finishes."""
    if not (root / marker).is_file():
        root.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{root.name}.partial-", dir=root.parent))
        try:
            build(partial)
            if not (root / marker).is_file():  # else another process finished first
                shutil.rmtree(root, ignore_errors=True)
                os.replace(partial, root)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    return root
