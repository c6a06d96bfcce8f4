"""Where the project caches what it builds: corpora, their prepared data, compiled programs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else $GEMINI_JAX_CACHE, else ~/.cache/gemini-jax."""
    return Path(cache_dir or os.environ.get("GEMINI_JAX_CACHE") or Path.home() / ".cache" / "gemini-jax")
