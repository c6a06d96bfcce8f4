"""The fused int4 matmul (model/int4_kernel.py): its packing, its arithmetic in Pallas's
interpreter against dequantize-then-matmul, its refusals, and its lowering for GPUs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gemini_jax.model import quant
from gemini_jax.model.int4_kernel import BLOCK_N, _splits, int4_matmul, pack_halves, supported, unpack_halves


def quantized(k: int, n: int, *, group_size: int = 32, seed: int = 0) -> quant.QuantizedWeight:
    w = jax.random.normal(jax.random.key(seed), (k, n), jnp.float32)
    return quant.quantize_array(w, axis=0, group_size=group_size)


def test_packing_puts_row_p_low_and_row_p_plus_half_high_and_round_trips():
    codes = jnp.array([[-8, 7], [3, -1], [0, 5], [-2, -7]], jnp.int4)  # K = 4
    packed = np.asarray(pack_halves(codes))
    assert packed.dtype == np.uint8 and packed.shape == (2, 2)
    assert packed[0, 0] == (0x8 | 0x0 << 4) and packed[1, 1] == (0xF | 0x9 << 4)  # -8 -> 8, -1 -> 15, -7 -> 9
    np.testing.assert_array_equal(np.asarray(unpack_halves(packed)), np.asarray(codes.astype(jnp.int8)))
    every = jnp.arange(-8, 8, dtype=jnp.int8).reshape(16, 1)
    np.testing.assert_array_equal(np.asarray(unpack_halves(pack_halves(every))), np.asarray(every))


@pytest.mark.parametrize("rows,k,n,group_size,block_n", [(1, 256, 128, 32, 128), (3, 512, 256, 32, 128),
                                                         (20, 128, 384, 16, 128), (32, 256, 128, 64, 128),
                                                         (1, 128, 64, 32, 64), (5, 256, 512, 32, 256)])
def test_the_kernel_equals_dequantize_then_matmul(rows, k, n, group_size, block_n):
    weight = quantized(k, n, group_size=group_size)
    x = jax.random.normal(jax.random.key(1), (rows, k), jnp.float32).astype(jnp.bfloat16)
    got = int4_matmul(x, pack_halves(weight.codes), weight.scales, group_size=group_size, interpret=True,
                      block_n=block_n, num_warps=8 if block_n > 128 else 4)
    want = jnp.dot(x.astype(jnp.float32), weight.dequantize(jnp.float32), precision="highest")
    assert got.shape == (rows, n) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)


def test_split_k_slices_are_powers_of_two_within_the_partials_budget():
    assert _splits(2048, 2048, 16, 32) == 4  # partials: 4 x 16 x 2048 x 4 B = the codes' quarter
    assert _splits(16384, 2048, 16, 32) == 16  # 16 column blocks x 16 slices = 256 programs
    assert _splits(2048, 256_000, 16, 32) == 1  # 2,000 column blocks already fill the GPU
    assert _splits(64, 128, 16, 32) == 1


def test_weights_the_kernel_cannot_take_are_refused_with_the_reason():
    assert supported(2048, 2048, 32) is None
    assert "multiple of twice the group size" in supported(96, 128, 32)
    assert f"multiple of {BLOCK_N}" in supported(128, 100, 32)
    assert "power of two" in supported(192, 128, 48)
    weight = quantized(128, 128)
    with pytest.raises(ValueError, match="packed codes of shape"):
        int4_matmul(jnp.ones((1, 128), jnp.bfloat16), weight.codes, weight.scales, group_size=32, interpret=True)


def test_the_kernel_lowers_to_a_triton_call_for_gpus():
    """Exported for CUDA on this CPU machine: Pallas lowers the kernel to Triton IR (the GPU
    compiles it at load time, which only a GPU can check)."""
    def matmul(x, packed, scales):
        return int4_matmul(x, packed, scales, group_size=32)

    k, n = 1024, 512
    args = (jax.ShapeDtypeStruct((1, k), jnp.bfloat16), jax.ShapeDtypeStruct((k // 2, n), jnp.uint8),
            jax.ShapeDtypeStruct((k // 32, n), jnp.bfloat16))
    triton = "__gpu$xla.gpu.triton"
    exported = jax.export.export(jax.jit(matmul), platforms=["cuda"],
                                 disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(triton)])(*args)
    text = exported.mlir_module()
    assert f"custom_call @{triton}" in text and "int4_matmul" in text
