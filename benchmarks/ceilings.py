"""What this device can do at best: memory copy bandwidth and bfloat16 matmul rate (prints JSON).

    python benchmarks/ceilings.py                      # on the GPU, before the figures that use them
    python benchmarks/ceilings.py --copy-gb 0.1 --matmul 1024   # a CPU smoke run

Measured: a copy's bandwidth (bytes read plus bytes written, GPU.md's counting: 3.02 TB/s on an
H100), a read's (a sum over every element: what reading a decode step's weights can cost at
best; the roofline of benchmarks/decode.py), and a bf16 matmul's rate on random data. MFU's
denominator stays the datasheet's dense bfloat16 rate, the measured rate beside it. Each is the
time of --reps calls queued back to back, median of --repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp


def _seconds_per_call(fn, args, *, reps: int, repeats: int) -> float:
    """Median over `repeats` of the time of `reps` calls queued back to back, per call."""
    jax.block_until_ready(fn(*args))  # compile, warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / reps)
    return statistics.median(times)


def bandwidths(gigabytes: float, *, reps: int, repeats: int) -> dict[str, float]:
    """Bytes/s of a copy (x + 1 in bfloat16: every byte read and written once) and of a read
    (a sum of every element: what a decode step's weights cost)."""
    x = jnp.zeros((int(gigabytes * 1e9 / 2),), jnp.bfloat16)
    copy = _seconds_per_call(jax.jit(lambda x: x + jnp.bfloat16(1)), (x,), reps=reps, repeats=repeats)
    read = _seconds_per_call(jax.jit(lambda x: jnp.sum(x, dtype=jnp.float32)), (x,), reps=reps, repeats=repeats)
    return {"copy_bytes_per_s": 2 * x.nbytes / copy, "read_bytes_per_s": x.nbytes / read}


def matmul_rate(size: int, *, reps: int, repeats: int) -> float:
    """FLOP/s of a [size, size] @ [size, size] bfloat16 product on random data."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.bfloat16)
    seconds = _seconds_per_call(jax.jit(jnp.matmul), (a, b), reps=reps, repeats=repeats)
    return 2 * size ** 3 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copy-gb", type=float, default=4.0, help="gigabytes copied per operation")
    parser.add_argument("--matmul", type=int, default=8192, help="square matmul size")
    parser.add_argument("--reps", type=int, default=10, help="calls queued back to back per timing")
    parser.add_argument("--repeats", type=int, default=5, help="timed programs; the median is reported")
    args = parser.parse_args()
    measured = bandwidths(args.copy_gb, reps=args.reps, repeats=args.repeats)
    rate = matmul_rate(args.matmul, reps=args.reps, repeats=args.repeats)
    print(json.dumps({
        "device_kind": jax.devices()[0].device_kind, "backend": jax.default_backend(), "jax": jax.__version__,
        **measured, "copy_gb": args.copy_gb,
        "matmul_bf16_flops_per_s": rate, "matmul_size": args.matmul,
    }, indent=2))


if __name__ == "__main__":
    main()
