"""The fused int4 matmul against what the decoder runs today, on the decoder's shapes (prints JSON).

    python benchmarks/int4_matmul.py                          # nano-1's shapes (a GPU's job)
    python benchmarks/int4_matmul.py --preset test --interpret --reps 2   # CPU: the interpreter

For each weight shape of the preset's decoder (x [M, K] @ W [K, N]: q, k and v, o, gate and
up, down, and the tied table as the logits projection) and each M in --rows, three ways:
  bf16     W held in bfloat16, one XLA dot;
  xla_int4 W held as int4 codes and bfloat16 scales, dequantized then multiplied (the
           decoder's path today, model/quant.py);
  kernel   the Pallas kernel of model/int4_kernel.py on the packed codes, once per --kernels
           setting (columns per program x warps), so that one GPU run also tunes it.
Each is timed as --reps chained calls inside one compiled program (each call's input depends
on the last one's output, so none can be hoisted or merged), median of --repeats, and reported
in microseconds per call with the effective weight bandwidth (weight bytes / time). The
kernel's output is compared with xla_int4's. Weights are random: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp

from gemini_jax.config import get_preset
from gemini_jax.model import quant
from gemini_jax.model.int4_kernel import int4_matmul, pack_halves, supported


def decoder_shapes(preset: str) -> dict[str, tuple[int, int]]:
    c = get_preset(preset)
    return {"q": (c.width, c.num_heads * c.head_dim), "kv": (c.width, c.num_kv_heads * c.head_dim),
            "o": (c.num_heads * c.head_dim, c.width), "gate_up": (c.width, c.mlp_dim), "down": (c.mlp_dim, c.width),
            "logits": (c.width, c.vocab_size)}


def chained(matmul, reps: int):
    """A program calling matmul(x, *weights) reps times, each x carrying one entry of the last output."""
    def run(x, *weights):
        total = jnp.float32(0)
        for _ in range(reps):
            y = matmul(x, *weights)
            x = x.at[0, 0].set(y[0, 0].astype(x.dtype))
            total += y[0, 0]
        return total
    return jax.jit(run)


def time_call(fn, args, repeats: int, reps: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) / reps)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano-1", help="whose decoder shapes")
    parser.add_argument("--rows", default="1,32", help="comma-separated M (tokens per step: the batch)")
    parser.add_argument("--group-size", type=int, default=32, help="int4 group size")
    parser.add_argument("--reps", type=int, default=32, help="chained calls per timed program")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--interpret", action="store_true", help="run the kernel in Pallas's interpreter (CPUs)")
    parser.add_argument("--kernels", default="128x4,256x8,64x4",
                        help="comma-separated kernel settings BLOCKxWARPS: output columns per program, warps")
    args = parser.parse_args()

    g = args.group_size
    settings = {f"kernel_{s}": tuple(int(v) for v in s.split("x")) for s in args.kernels.split(",")}

    def kernel(block_n: int, warps: int):
        return lambda x, p, s: int4_matmul(x, p, s, group_size=g, interpret=args.interpret, block_n=block_n,
                                           num_warps=warps)

    xla_int4 = lambda x, c, s: jnp.dot(x, quant.QuantizedWeight(c, s).dequantize(jnp.bfloat16),  # noqa: E731
                                       preferred_element_type=jnp.float32)
    bf16 = lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32)  # noqa: E731
    ways = {"bf16": chained(bf16, args.reps), "xla_int4": chained(xla_int4, args.reps),
            **{name: chained(kernel(*setting), args.reps) for name, setting in settings.items()}}
    results = {"preset": args.preset, "group_size": g, "device": jax.devices()[0].device_kind,
               "backend": jax.default_backend(), "jax": jax.__version__, "interpret": args.interpret, "shapes": {}}
    for name, (k, n) in decoder_shapes(args.preset).items():
        if (why := supported(k, n, g, min(b for b, _ in settings.values()))) is not None:
            results["shapes"][name] = {"k": k, "n": n, "skipped": why}
            continue
        w = jax.random.normal(jax.random.key(0), (k, n), jnp.bfloat16)
        q = jax.jit(quant.quantize_array, static_argnames=("axis", "group_size"))(w, axis=0, group_size=g)
        packed = pack_halves(q.codes)
        weights = {"bf16": (w,), "xla_int4": (q.codes, q.scales), **{s: (packed, q.scales) for s in settings}}
        int4_bytes = k * n // 2 + q.scales.size * 2
        entry = {"k": k, "n": n, "bf16_bytes": k * n * 2, "int4_bytes": int4_bytes}
        for m in (int(r) for r in args.rows.split(",")):
            x = jax.random.normal(jax.random.key(1), (m, k), jnp.bfloat16)
            row = {}
            for way, fn in ways.items():
                if way in settings and supported(k, n, g, settings[way][0]) is not None:
                    continue
                seconds = time_call(fn, (x, *weights[way]), args.repeats, args.reps)
                nbytes = entry["bf16_bytes"] if way == "bf16" else int4_bytes
                row[way] = {"us": 1e6 * seconds, "weight_gb_per_s": nbytes / seconds / 1e9}
            best = min((w for w in row if w in settings), key=lambda w: row[w]["us"])
            row["best_kernel"] = best
            row["kernel_vs_xla_int4"] = row["xla_int4"]["us"] / row[best]["us"]
            row["kernel_vs_bf16"] = row["bf16"]["us"] / row[best]["us"]
            block_n, warps = settings[best]
            got = int4_matmul(x, packed, q.scales, group_size=g, interpret=args.interpret, block_n=block_n,
                              num_warps=warps)
            want = jax.jit(xla_int4)(x, q.codes, q.scales)
            row["max_abs_difference"] = float(jnp.max(jnp.abs(got - want)))
            entry[f"rows_{m}"] = row
        results["shapes"][name] = entry
        del w, q, packed, weights
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
