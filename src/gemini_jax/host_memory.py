"""Giving freed host memory back to the system between runs.

A training run frees gigabytes of host buffers (decoded media, batches, prefetch queues) from many
threads. glibc keeps freed blocks in per-thread arenas rather than returning them, so a process
that trains several runs in a row (a seed sweep, a notebook) kept much of each run's peak
(docs/training.md). `release()` asks glibc to hand every arena's free pages back.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
from pathlib import Path


def release() -> bool:
    """Collect garbage, then return free heap pages to the system (glibc's `malloc_trim(0)`).
    True when glibc released some; False when it had none to release or there is no glibc."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return False
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # another C library (musl) or none found
        return False
    return bool(trim(0))


def resident_bytes(pid: int | str = "self") -> int:
    """A process's resident memory now, this one's by default (Linux: /proc/<pid>/statm; an
    OSError where the process is gone)."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
