"""A fused int4 matmul for GPUs (Pallas, Triton backend): x @ W read as packed 4-bit codes.

    packed = pack_halves(codes)                     # int4 codes [K, N] -> uint8 [K / 2, N]
    y = int4_matmul(x, packed, scales, group_size=32)   # x [M, K] -> float32 [M, N]

Why. XLA does not fuse a grouped dequantization into the matmul that follows it, so the
model's int4 decode step materialises bfloat16 weights and runs slower than with bfloat16
weights (docs/performance.md), where reading half a byte per weight instead of two should make
it faster. This kernel reads the codes once, converts them in registers and multiplies, so a
decode step's traffic is the codes and scales only. It is not yet the decoder's path:
`benchmarks/int4_matmul.py` times it against dequantize-then-matmul and bfloat16 weights on
the decoder's shapes, and that measurement decides. On CPUs it runs in Pallas's interpreter
(tests), which checks its arithmetic, not its speed.

Layout. Byte p of column n holds the codes of rows p (low nibble) and p + K/2 (high nibble):
both halves of a tile are then contiguous rows of the packed array and contiguous columns of
x, so the kernel needs no strided loads and no reshapes. With the group size dividing K/2, a
group never straddles the halves, and rows p and p + K/2 take the scales of groups p // g and
p // g + K / (2g).

Work split. Program (j, s) computes columns [j bn, (j + 1) bn) over the s-th of S slices of
the groups (split-K), one group per loop step: two [M', g] x [g, bn] products (M' = M padded
to 16, the smallest tensor-core tile), each scaled by its group's scales. The S partial sums
are added outside. S is chosen so that there are enough programs to occupy the GPU while the
float32 partials stay small beside the codes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

BLOCK_N = 128  # output columns per program
MIN_ROWS = 16  # the smallest row count of a tensor-core product
TARGET_PROGRAMS = 264  # two per streaming multiprocessor of an H100 (132)


def pack_halves(codes: jax.Array) -> jax.Array:
    """int4 (or int8 in [-8, 7]) codes [K, N] -> uint8 [K / 2, N]: row p's code in the low
    nibble and row p + K/2's in the high one."""
    k = codes.shape[0]
    if k % 2:
        raise ValueError(f"pack_halves needs an even number of rows, got {k}")
    nibbles = codes.astype(jnp.int8).astype(jnp.uint8) & 0xF
    return nibbles[: k // 2] | (nibbles[k // 2:] << 4)


def unpack_halves(packed: jax.Array) -> jax.Array:
    """The inverse of pack_halves: int8 codes [K, N]."""
    low = (packed & 0xF).astype(jnp.int8)
    high = (packed >> 4).astype(jnp.int8)
    signed = lambda nibble: jnp.where(nibble > 7, nibble - 16, nibble)  # noqa: E731
    return jnp.concatenate([signed(low), signed(high)], axis=0)


def _splits(k: int, n: int, rows: int, group_size: int, block_n: int = BLOCK_N) -> int:
    """S: a power of two dividing the K/(2g) groups of a half, large enough for TARGET_PROGRAMS
    programs, small enough that the float32 partials (S x rows x N x 4 bytes) stay within a
    quarter of the codes (K x N / 2 bytes)."""
    groups = k // (2 * group_size)
    limit = max(1, min(groups, -(-TARGET_PROGRAMS // (n // block_n)), k // (32 * rows)))
    splits = 1
    while splits * 2 <= limit and groups % (splits * 2) == 0:
        splits *= 2
    return splits


def _kernel(x_ref, packed_ref, scales_ref, out_ref, *, group_size: int, groups_per_split: int, half: int,
            half_groups: int):
    """One program: out[:, columns] = its slice of groups' contribution (see the module docstring)."""
    first = pl.program_id(1) * groups_per_split

    def group(t, acc):
        rows = pl.ds(t * group_size, group_size)
        codes = packed_ref[rows, :].astype(jnp.int32)  # [g, bn], 0..255
        low = (((codes & 0xF) ^ 8) - 8).astype(jnp.bfloat16)  # sign-extended nibbles, exact in bfloat16
        high = (((codes >> 4) ^ 8) - 8).astype(jnp.bfloat16)
        x_low = x_ref[:, pl.ds(t * group_size, group_size)]  # [M', g]
        x_high = x_ref[:, pl.ds(half + t * group_size, group_size)]
        scale_low = scales_ref[pl.ds(t, 1), :].astype(jnp.float32)  # [1, bn]
        scale_high = scales_ref[pl.ds(t + half_groups, 1), :].astype(jnp.float32)
        acc += jnp.dot(x_low, low, preferred_element_type=jnp.float32) * scale_low
        acc += jnp.dot(x_high, high, preferred_element_type=jnp.float32) * scale_high
        return acc

    acc = jnp.zeros(out_ref.shape, jnp.float32)
    out_ref[...] = jax.lax.fori_loop(first, first + groups_per_split, group, acc)


def supported(k: int, n: int, group_size: int, block_n: int = BLOCK_N) -> str | None:
    """Why the kernel cannot take a [K, N] weight at this group size, or None if it can."""
    if k % (2 * group_size):
        return f"K={k} must be a multiple of twice the group size {group_size}"
    if n % block_n:
        return f"N={n} must be a multiple of {block_n}"
    if group_size % 16 or group_size & (group_size - 1):
        return f"the group size {group_size} must be a power of two, at least 16"
    return None


@functools.partial(jax.jit, static_argnames=("group_size", "interpret", "block_n", "num_warps", "num_stages"))
def int4_matmul(x: jax.Array, packed: jax.Array, scales: jax.Array, *, group_size: int,
                interpret: bool = False, block_n: int = BLOCK_N, num_warps: int = 4,
                num_stages: int = 3) -> jax.Array:
    """float32 x[M, K] @ W[K, N] for W given as pack_halves(codes) [K/2, N] and its scales
    [K/g, N] (W = codes * scales, groups of g rows). `interpret` runs Pallas's interpreter
    (CPUs, tests). `block_n` (a power of two), `num_warps` and `num_stages` tune the GPU
    kernel (benchmarks/int4_matmul.py)."""
    m, k = x.shape
    n = packed.shape[1]
    if packed.shape != (k // 2, n) or scales.shape != (k // group_size, n):
        raise ValueError(f"x {x.shape} needs packed codes of shape {(k // 2, n)} and scales of shape "
                         f"{(k // group_size, n)}; got {packed.shape} and {scales.shape}")
    if (why := supported(k, n, group_size, block_n)) is not None:
        raise ValueError(f"int4_matmul cannot take this weight: {why}")
    rows = max(MIN_ROWS, 1 << (m - 1).bit_length())
    x = jnp.pad(x.astype(jnp.bfloat16), ((0, rows - m), (0, 0)))
    splits = _splits(k, n, rows, group_size, block_n)
    half_groups = k // (2 * group_size)
    kernel = functools.partial(_kernel, group_size=group_size, groups_per_split=half_groups // splits,
                               half=k // 2, half_groups=half_groups)
    partial = pl.pallas_call(
        kernel,
        grid=(n // block_n, splits),
        in_specs=[
            pl.BlockSpec((rows, k), lambda j, s: (0, 0)),
            pl.BlockSpec((k // 2, block_n), lambda j, s: (0, j)),
            pl.BlockSpec((k // group_size, block_n), lambda j, s: (0, j)),
        ],
        out_specs=pl.BlockSpec((pl.squeezed, rows, block_n), lambda j, s: (s, 0, j)),
        out_shape=jax.ShapeDtypeStruct((splits, rows, n), jnp.float32),
        compiler_params=pl_triton.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
        name="int4_matmul",
    )(x, packed, scales)
    return partial.sum(axis=0)[:m]
