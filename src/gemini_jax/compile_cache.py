"""JAX's persistent compilation cache: a second process loads the programs a first one compiled.

    import gemini_jax.compile_cache
    gemini_jax.compile_cache.enable()                 # $GEMINI_JAX_CACHE/jax-compile, else ~/.cache/gemini-jax/jax-compile
    gemini_jax.compile_cache.enable("/fast/disk/jax") # or a directory of your own

Every `gemini-jax` command that compiles calls `enable()` before it loads anything, unless given
--no-compile-cache or run with GEMINI_JAX_NO_COMPILE_CACHE set. docs/start-time.md has the design
and the measurements.
"""

from __future__ import annotations

import os
from pathlib import Path

from gemini_jax.cache_root import cache_root

OFF_ENV = "GEMINI_JAX_NO_COMPILE_CACHE"  # set (non-empty): the commands compile afresh
# JAX deletes the least recently used entries past this size. Setting any size also makes JAX
# take a file lock around each read and write of the directory; without one it writes an entry
# in place, where another process could read half of it.
MAX_BYTES = 4 << 30


def default_dir() -> Path:
    """The project's cache directory ($GEMINI_JAX_CACHE, else ~/.cache/gemini-jax)/jax-compile."""
    return cache_root() / "jax-compile"


def enable(path: str | os.PathLike | None = None) -> Path:
    """Turns on JAX's persistent compilation cache in `path` and returns the directory.

    Without `path`: the directory JAX already has (JAX_COMPILATION_CACHE_DIR, jax.config), with
    its size bound as it is, else `default_dir()`. Every program is cached, however quickly it
    compiled.
    """
    import filelock  # noqa: F401  JAX needs it for the locked, size-bounded cache; fail here, not mid-compile
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    configured = jax.config.jax_compilation_cache_dir
    directory = Path(path or configured or default_dir()).expanduser()
    # Entries are executables that JAX runs: readable and writable by their owner only.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    # JAX's defaults skip programs that compile in under a second; a command's many small ones add up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # any size, and no backend override
    if path is not None or not configured:
        # A directory JAX was already given keeps its own bound: entries written without one have
        # no access-time files, and a bounded cache then fails every write into that directory.
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    # JAX opens its cache once, at the first compile, from the settings of that moment.
    compilation_cache.reset_cache()
    return directory
