"""Wall-clock time of a jitted call, shared by the benchmarks that time one function at a time."""

from __future__ import annotations

import time

import jax


def seconds_per_call(fn, args, calls: int) -> float:
    """Mean seconds of `calls` calls of fn(*args) queued back to back, after one untimed call
    (compilation and warm-up)."""
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls
