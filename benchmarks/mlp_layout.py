"""The MLP layer's forward and backward with its tokens on one axis, against the same MLP over
[B, T, D] (prints JSON).

    python benchmarks/mlp_layout.py [--shapes 32x200x64x192,32x104x64x192,32x40x64x192] [--steps 50]

`GeGLU` (model/layers.py) merges the batch and length axes before its three matmuls; the
baseline, defined here, is the same layer written with einsums over [B, T, D], as it was before.
Each shape is B x T x D x F (batch, length, width, MLP width); the defaults are the image
generation recipe's edit and drawing rows and the demo's VQA rows. Both are timed in this
process, one compiled gradient each, after a warm-up call; `ratio` is the layer's time over the
baseline's (below 1: faster), `max_abs_difference` the largest difference of their gradients.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from timing import seconds_per_call

from gemini_jax.model.layers import GeGLU


def per_row_mlp(x, gate, up, down):
    """The baseline: GeGLU with einsums over [B, T, D]."""
    hidden = jax.nn.gelu(jnp.einsum("BTD,DF->BTF", x, gate), approximate=True) * jnp.einsum("BTD,DF->BTF", x, up)
    return jnp.einsum("BTF,FD->BTD", hidden, down)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="32x200x64x192,32x104x64x192,32x40x64x192",
                        help="comma-separated BxTxDxF shapes (default: the image recipe's two row lengths and the demo's)")
    parser.add_argument("--steps", type=int, default=50, help="timed calls of each gradient (default 50)")
    args = parser.parse_args()

    results = []
    for spec in args.shapes.split(","):
        b, t, d, f = (int(n) for n in spec.split("x"))
        graphdef, params = nnx.split(GeGLU(d, f, dtype=jnp.float32, rngs=nnx.Rngs(0)))
        weights = nnx.to_pure_dict(params)
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)
        cotangent = jnp.asarray(rng.normal(size=(b, t, d)), jnp.float32)

        layer = jax.jit(jax.grad(lambda x, w: jnp.vdot(nnx.merge(graphdef, w)(x), cotangent), argnums=(0, 1)))
        baseline = jax.jit(jax.grad(lambda x, w: jnp.vdot(per_row_mlp(x, w["gate"], w["up"], w["down"]), cotangent),
                                    argnums=(0, 1)))
        difference = max(float(jnp.max(jnp.abs(a - c))) for a, c in
                         zip(jax.tree.leaves(layer(x, weights)), jax.tree.leaves(baseline(x, weights)), strict=True))
        baseline_s = seconds_per_call(baseline, (x, weights), args.steps)
        layer_s = seconds_per_call(layer, (x, weights), args.steps)
        results.append({"shape": spec, "baseline_ms": round(baseline_s * 1e3, 2), "layer_ms": round(layer_s * 1e3, 2),
                        "ratio": round(layer_s / baseline_s, 3), "max_abs_difference": difference})
    print(json.dumps({"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
                      "steps": args.steps, "results": results}, indent=1))


if __name__ == "__main__":
    main()
