"""Memory of a training step at long context, dense vs blockwise attention (prints JSON).

    python benchmarks/long_context.py [--lengths 2048,4096,8192,16384,32768] [--preset demo]

For each sequence length and attention implementation, the forward and backward pass of
a text-only model (the preset's decoder, batch 1) is jitted and compiled, never run, and
XLA's compiled memory analysis gives its buffers: temp (activations and scratch),
arguments, outputs and their sum. The program is the same whatever the segment ids
hold, so abstract inputs suffice. `growth` is the ratio of temp memory between
consecutive lengths: about 2 per doubling when memory is linear in the length, about 4
when it is quadratic (the dense path's [T, T] mask and scores; the blockwise path's
fixed buffers make its ratio lower still at short lengths). A second sweep measures one
attention layer alone, including blockwise attention differentiated by plain autodiff
through its scans (jax.checkpoint per step) instead of its custom VJP, the alternative
model/blockwise.py explains it did not take. Compiling, not running, is what lets 32K
fit a laptop.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gemini_jax.config import ModelConfig, get_preset
from gemini_jax.model import Gemini, attention_mask
from gemini_jax.model.attention import dot_product_attention
from gemini_jax.model.blockwise import blockwise_attention


def _memory(compiled) -> dict[str, int]:
    stats = compiled.memory_analysis()
    # The sum bounds the peak from above; XLA's own peak_memory_in_bytes is not
    # meaningful on the CPU backend (it reports less than the temp buffers alone).
    memory = {
        "temp_bytes": int(stats.temp_size_in_bytes),
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
    }
    return {**memory, "total_bytes": sum(memory.values())}


def _batch_spec(length: int) -> dict[str, jax.ShapeDtypeStruct]:
    spec = {k: jax.ShapeDtypeStruct((1, length), jnp.int32)
            for k in ("tokens", "targets", "segment_ids", "positions", "media_spans")}
    spec["loss_mask"] = jax.ShapeDtypeStruct((1, length), jnp.float32)
    return spec


def model_step_memory(config: ModelConfig, length: int) -> dict[str, int]:
    """Compiled memory of grad(loss) w.r.t. the parameters for one row of `length` tokens."""
    abstract = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(abstract, nnx.Param)

    def loss(params, batch):
        model = nnx.merge(graphdef, params)
        logits = model({k: batch[k] for k in ("tokens", "segment_ids", "positions", "media_spans")}).logits
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])  # [1, T]
        return jnp.sum(losses * batch["loss_mask"]) / jnp.sum(batch["loss_mask"])

    return _memory(jax.jit(jax.grad(loss)).lower(params, _batch_spec(length)).compile())


def attention_memory(kind: str, length: int, *, heads: int, kv_heads: int, head_dim: int, block: int) -> dict:
    """Compiled memory of grad w.r.t. q, k, v of one attention call."""
    spec = jax.ShapeDtypeStruct
    q = spec((1, length, heads, head_dim), jnp.float32)
    kv = spec((1, length, kv_heads, head_dim), jnp.float32)
    ids = spec((1, length), jnp.int32)

    def loss(q, k, v, segments):
        if kind == "xla":
            mask = attention_mask(segment_ids=segments, media_spans=jnp.zeros_like(segments))
            out = dot_product_attention(q, k, v, mask=mask, implementation="xla")
        else:
            out = blockwise_attention(q, k, v, segment_ids=segments, media_spans=jnp.zeros_like(segments),
                                      q_block=block, kv_block=block, checkpoint_steps=kind == "blockwise_autodiff")
        return jnp.sum(out * out)

    return _memory(jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, ids).compile())


def _sweep(lengths: list[int], measure: Callable[[int], dict[str, int]]) -> dict:
    rows, previous = [], None
    for length in lengths:
        start = time.perf_counter()
        row = {"length": length, **measure(length), "compile_s": round(time.perf_counter() - start, 2)}
        if previous:
            row["growth"] = round(row["temp_bytes"] / max(previous["temp_bytes"], 1), 2)
        rows.append(row)
        previous = row
    return {"rows": rows, "temp_gib_at_longest": round(rows[-1]["temp_bytes"] / 2**30, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="2048,4096,8192,16384,32768", help="comma-separated sequence lengths")
    parser.add_argument("--preset", default="demo", help="model preset (its decoder only; text, batch 1)")
    parser.add_argument("--block", type=int, default=512, help="blockwise attention's query and key block")
    parser.add_argument("--impls", default="xla,blockwise", help="attention implementations of the model sweep")
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]

    base = dataclasses.replace(get_preset(args.preset).text_only, max_seq_len=max(lengths),
                               attention_block=args.block)
    result = {
        "backend": jax.default_backend(),
        "preset": args.preset,
        "model": {k: getattr(base, k) for k in ("width", "depth", "num_heads", "num_kv_heads", "head_dim",
                                                "vocab_size", "dtype")},
        "batch_size": 1,
        "block": args.block,
        "model_step": {},
        "attention_layer": {},
    }
    for impl in args.impls.split(","):
        config = dataclasses.replace(base, attention_impl=impl)
        result["model_step"][impl] = _sweep(lengths, lambda n, c=config: model_step_memory(c, n))
    for kind in ("xla", "blockwise", "blockwise_autodiff"):
        result["attention_layer"][kind] = _sweep(lengths, lambda n, k=kind: attention_memory(
            k, n, heads=base.num_heads, kv_heads=base.num_kv_heads, head_dim=base.head_dim, block=args.block))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
