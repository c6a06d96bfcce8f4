"""The standard library's training files as a prepared data directory: the text source that the
long-context recipes' mixture files (recipes/kv_retrieval.yaml, recipes/long_text.yaml) name
`stdlib`.

    base = prepare_stdlib_source()   # <cache>/stdlib-v1-<digest>/stdlib, prepared on first use
    mixture = load_mixture(long_text_mixture(), base=base)

The files of the demo's training split (`standard_library_files("train")`) are written as
raw-text documents, one a file in their order, and go through `gemini-jax data prepare` like
anyone's data with its filters off: the text is source code kept whole, and the held-out files
are set apart by the demo's split rule, not by prepare (so no validation split). The folder is
named by a digest of the texts, so that another Python's standard library is prepared apart.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from filelock import FileLock

from gemini_jax.cache_root import cache_root
from gemini_jax.data.corpora.demo_prepared import prepare_once
from gemini_jax.data.corpora.kv_retrieval import standard_library_files
from gemini_jax.data.examples import text_document, to_json

VERSION = 1  # of this export: a change prepares the source again
SOURCE = "stdlib"  # the prepared folder's name, the path the mixture files give


def prepare_stdlib_source(cache_dir: str | os.PathLike | None = None, *, progress: bool = True) -> Path:
    """The folder holding the prepared `stdlib` source, prepared on first use."""
    files = standard_library_files("train")
    digest = hashlib.sha256("\0".join(files).encode()).hexdigest()[:16]
    root = cache_root(cache_dir) / f"stdlib-v{VERSION}-{digest}"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / ".lock"):  # one process prepares; the others wait and reuse it
        prepare_once(root / SOURCE, lambda scratch: (to_json(text_document(text)) for text in files), progress=progress)
    return root
