"""Speed of causal self-attention alone, forward and forward+backward (prints JSON).

    python benchmarks/attention_speed.py                     # nano-1's heads, 2K-32K, on a GPU
    python benchmarks/attention_speed.py --lengths 256,512 --dtype float32   # a CPU smoke run

For each length (batch chosen so each row set holds --tokens tokens, at least one row) and
each variant, one attention call on random q, k, v of the preset's shape (N query heads,
K key/value heads, head dimension H) is jitted, warmed up and timed over --repeats calls:

    kernel     jax.nn.dot_product_attention(is_causal=True), no mask: the kernel alone
               (cuDNN on GPU in 16 bits, XLA elsewhere)
    model      the model's path for rows of one document each (model/attention.py's
               causal_self_attention): the kernel given each row's length
    packed_mask  the model's path for packed rows: the mask built from segment ids,
               with the causal promise
    blockwise  model/blockwise.py's online-softmax attention (CPU/TPU's long-context path)

FLOPs count causal attention the usual way: forward 2 * 2 * T^2/2 * N * H per row (q k^T
and p v, half of the scores), forward+backward 3.5x that (the backward recomputes the
scores: 2.5x forward), so figures compare with flash-attention benchmarks.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
from timing import seconds_per_call

from gemini_jax.config import get_preset
from gemini_jax.model.attention import (
    causal_self_attention,
    default_implementation,
    dot_product_attention,
)
from gemini_jax.model.blockwise import blockwise_attention
from gemini_jax.model.mask import SegmentMask, attention_mask


def _attend(variant: str, q, k, v, segments):
    if variant == "kernel":
        with jax.numpy_dtype_promotion("standard"):
            return jax.nn.dot_product_attention(q, k, v, is_causal=True, scale=q.shape[-1] ** -0.5,
                                                implementation=default_implementation(q.dtype, q.shape[-1]))
    if variant == "model":  # one document per row: the lengths path
        return causal_self_attention(q, k, v, segments=SegmentMask(segments, jnp.zeros_like(segments), causal=True))
    if variant == "packed_mask":
        mask = attention_mask(segment_ids=segments, media_spans=jnp.zeros_like(segments))
        return dot_product_attention(q, k, v, mask=mask, causal=True)
    return blockwise_attention(q, k, v, segment_ids=segments, media_spans=jnp.zeros_like(segments))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano-1", help="preset whose heads and head dimension to use")
    parser.add_argument("--lengths", default="2048,8192,32768", help="comma-separated sequence lengths")
    parser.add_argument("--tokens", type=int, default=32768, help="tokens per call (batch = tokens / length)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="q, k, v dtype")
    parser.add_argument("--variants", default="kernel,model,packed_mask", help="comma-separated: kernel, model, packed_mask, blockwise")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement")
    args = parser.parse_args()

    config = get_preset(args.preset)
    n, kv, h = config.num_heads, config.num_kv_heads, config.head_dim
    dtype = jnp.dtype(args.dtype)
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        batch = max(1, args.tokens // length)
        keys = jax.random.split(jax.random.key(0), 3)
        q = jax.random.normal(keys[0], (batch, length, n, h), dtype)
        k = jax.random.normal(keys[1], (batch, length, kv, h), dtype)
        v = jax.random.normal(keys[2], (batch, length, kv, h), dtype)
        segments = jnp.ones((batch, length), jnp.int32)
        forward_flops = batch * 2 * 2 * length * length / 2 * n * h
        for variant in args.variants.split(","):
            forward = jax.jit(lambda q, k, v, s, variant=variant: _attend(variant, q, k, v, s))
            both = jax.jit(jax.grad(
                lambda q, k, v, s, variant=variant: jnp.sum(_attend(variant, q, k, v, s).astype(jnp.float32)),
                argnums=(0, 1, 2)))
            row = {"length": length, "batch": batch, "variant": variant}
            try:
                fwd = seconds_per_call(forward, (q, k, v, segments), args.repeats)
                fwd_bwd = seconds_per_call(both, (q, k, v, segments), args.repeats)
            except Exception as e:  # noqa: BLE001 (a variant the backend cannot run is reported, not fatal)
                rows.append({**row, "error": f"{type(e).__name__}: {str(e)[:300]}"})
                continue
            rows.append({
                **row, "forward_ms": 1e3 * fwd, "forward_tflops": forward_flops / fwd / 1e12,
                "forward_backward_ms": 1e3 * fwd_bwd, "forward_backward_tflops": 3.5 * forward_flops / fwd_bwd / 1e12,
            })
    print(json.dumps({
        "preset": args.preset, "heads": n, "kv_heads": kv, "head_dim": h, "dtype": dtype.name,
        "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind, "rows": rows,
    }, indent=1))


if __name__ == "__main__":
    main()
