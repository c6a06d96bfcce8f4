"""Decode speed, float vs int4 weights, against the memory-bandwidth roofline (prints JSON).

    python benchmarks/decode.py                          # nano-1, random weights (a GPU's job)
    python benchmarks/decode.py --preset demo --steps 32 # the demo model on CPU

A decode step reads every decoder weight once (and the tied embedding table, for the logits),
so at small batch its time is bounded below by weight bytes / memory bandwidth: the roofline.
The default bandwidth is the device-to-device copy measured on the lent H100 (3.02 TB/s, see
GPU.md); pass --bandwidth for another device. Reported per variant and batch size: ms per step,
tokens/s, the roofline and measured / roofline. The "float" variant holds its weights in the
preset's compute dtype (bfloat16 for nano-1; float32 for demo), as a server would, not in
float32 master copies; "int4" holds codes and scales and dequantizes inside the step.

Weights are random: speed does not depend on their values. They are made on the device one
parameter at a time (under jit, directly in the target dtype and quantized there), so no
float32 copy of the whole model ever exists on the host. The encoders are left out: decoding
never runs them. The step is the model's `decode_step` plus a greedy argmax, timed over
--steps steps after a compiled warm-up, from a cache already holding --prompt-len tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

import device_profile
from gemini_jax.config import ModelConfig, get_preset, override
from gemini_jax.model import Gemini, quant

H100_COPY_BANDWIDTH = 3.02e12  # bytes/s, device-to-device copy (bytes read + written), GPU.md


def random_model(config: ModelConfig, *, dtype: jnp.dtype, group_size: int | None) -> Gemini:
    """A Gemini with random weights in `dtype`, quantized to int4 if `group_size` is given,
    built leaf by leaf on the default device."""
    model = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(0), len(leaves))

    @functools.partial(jax.jit, static_argnums=(1,))
    def fill(key, shape):
        fan_in = shape[0] if len(shape) > 1 else 1
        return (jax.random.normal(key, shape, jnp.float32) * fan_in ** -0.5).astype(dtype)

    values = [fill(k, tuple(leaf.shape)) for k, leaf in zip(keys, leaves)]
    quant.set_params(model, jax.tree_util.tree_unflatten(treedef, values))
    if group_size is not None:
        like = quant.quantized_params_like(model, group_size=group_size, bits=4)
        flat_like, _ = jax.tree_util.tree_flatten_with_path(like, is_leaf=lambda x: isinstance(x, quant.QuantizedWeight))
        axes = {}  # the group axis of each quantized leaf, read off its abstract scales
        for path, leaf in flat_like:
            if isinstance(leaf, quant.QuantizedWeight):
                axes[tuple(k.key for k in path)] = leaf.group_axis
        quantize = jax.jit(quant.quantize_array, static_argnames=("axis", "group_size", "bits"))
        variables = {tuple(p): v for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}
        for path, axis in axes.items():
            variable = variables[path]
            variable.set_value(quantize(variable.get_value(), axis=axis, group_size=group_size, bits=4))
    return model


def weight_bytes(model: Gemini) -> int:
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    return sum(math.prod(x.shape) * (0.5 if x.dtype == jnp.int4 else x.dtype.itemsize) for x in leaves)


# XLA options that make a whole decode step one CUDA graph ("command buffer"): every kind of
# command, and graphs of any size. Launching some 400 small kernels one by one is what a
# batch-1 step spends beyond reading the weights.
WHOLE_STEP_GRAPH = {
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE",
    "xla_gpu_graph_min_graph_size": 1,
}


def time_decode(model: Gemini, *, batch_size: int, prompt_len: int, steps: int,
                compiler_options: dict[str, Any] | None = None, profile: str | None = None) -> tuple[float, dict]:
    """Seconds per decode step at `batch_size`, from a cache holding `prompt_len` tokens per row,
    and where the device time of --profile-steps more goes (empty without `profile`)."""
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, donate_argnums=(2,), compiler_options=compiler_options)
    def step(state, tokens, cache):
        logits, cache = nnx.merge(graphdef, state).decode_step(tokens, cache)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

    cache = model.init_cache(batch_size=batch_size, max_len=prompt_len + steps + 8)
    cache = dataclasses.replace(
        cache, index=jnp.full((batch_size,), prompt_len, jnp.int32),
        valid=cache.valid.at[:, :prompt_len].set(True),
    )
    tokens = jnp.full((batch_size,), 5, jnp.int32)
    tokens, cache = step(state, tokens, cache)  # compile and warm up
    tokens, cache = step(state, tokens, cache)
    jax.block_until_ready(tokens)
    start = time.perf_counter()
    for _ in range(steps):
        tokens, cache = step(state, tokens, cache)
    jax.block_until_ready((tokens, cache))
    seconds = (time.perf_counter() - start) / steps
    summary = {}
    if profile:
        profile_steps = min(steps, 16)
        with device_profile.traced(profile):
            for _ in range(profile_steps):
                tokens, cache = step(state, tokens, cache)
            jax.block_until_ready((tokens, cache))
        summary = device_profile.summarize(profile, steps=profile_steps, top=12)
    return seconds, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nano-1", help="model preset (encoders are dropped)")
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--prompt-len", type=int, default=128, help="tokens already in each row's cache")
    parser.add_argument("--steps", type=int, default=128, help="timed decode steps")
    parser.add_argument("--group-size", type=int, default=32, help="int4 group size")
    parser.add_argument("--bandwidth", type=float, default=H100_COPY_BANDWIDTH,
                        help="memory bandwidth in bytes/s for the roofline (default: the H100's measured copy)")
    parser.add_argument("--variants", default="float,int4", help="comma-separated: float, int4")
    parser.add_argument("--attention", choices=("auto", "xla", "cudnn"), default="auto",
                        help="attention over the cache (auto: XLA, the faster for decode steps on the H100; cudnn forces the kernel)")
    parser.add_argument("--graphs", choices=("off", "on", "both"), default="off",
                        help="compile the step as one CUDA graph (WHOLE_STEP_GRAPH's XLA options): off, on, or "
                             "both (each timed; rows named '<variant>+graph')")
    parser.add_argument("--profile", default=None, metavar="DIR",
                        help="also trace 16 steps of each row into DIR and report where their device time goes")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=INT",
                        help="override an integer ModelConfig field of the preset, e.g. --set mlp_dim=16384 "
                             "(nano-1 with Gemma-2B's MLP is the Gemma-2B shape); repeatable")
    args = parser.parse_args()

    changes = {}
    for item in args.set:
        field, _, value = item.partition("=")
        if not value.lstrip("-").isdigit():
            parser.error(f"--set expects FIELD=INT, got {item!r}")
        changes[field] = int(value)
    config = override(get_preset(args.preset).text_only, attention_impl=args.attention, **changes)
    dtype = jnp.dtype(config.dtype)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    results: dict[str, Any] = {
        "preset": args.preset, "overrides": changes, "attention": args.attention, "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
        "jax": jax.__version__, "compute_dtype": dtype.name, "prompt_len": args.prompt_len, "steps": args.steps,
        "bandwidth_bytes_per_s": args.bandwidth, "variants": {},
    }
    for variant in args.variants.split(","):
        model = random_model(config, dtype=dtype, group_size=args.group_size if variant == "int4" else None)
        nbytes = weight_bytes(model)
        roofline = nbytes / args.bandwidth
        entry: dict[str, Any] = {"weight_bytes": nbytes, "roofline_ms_per_step": 1e3 * roofline}
        graphs = {"off": [False], "on": [True], "both": [False, True]}[args.graphs]
        for graph in graphs:
            row = dict(entry)
            for batch_size in batch_sizes:
                seconds, profile = time_decode(
                    model, batch_size=batch_size, prompt_len=args.prompt_len, steps=args.steps,
                    compiler_options=WHOLE_STEP_GRAPH if graph else None,
                    profile=args.profile and f"{args.profile}/{variant}{'_graph' * graph}_b{batch_size}")
                row[f"batch_{batch_size}"] = {
                    "ms_per_step": 1e3 * seconds, "tokens_per_s": batch_size / seconds,
                    "measured_over_roofline": seconds / roofline, **({"profile": profile} if profile else {}),
                }
            results["variants"][variant + "+graph" * graph] = row
        del model
    for suffix in ("", "+graph"):
        if {"float" + suffix, "int4" + suffix} <= results["variants"].keys():
            f, q = results["variants"]["float" + suffix], results["variants"]["int4" + suffix]
            results["int4_speedup" + suffix] = {
                f"batch_{b}": f[f"batch_{b}"]["ms_per_step"] / q[f"batch_{b}"]["ms_per_step"] for b in batch_sizes}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
