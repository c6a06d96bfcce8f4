"""GPTQ: error-compensating rounding of weights to int4, calibrated on a few hundred inputs.

    hessians = capture_hessians(model, batches)        # one float forward pass per batch (compiled)
    quantize_model_gptq(model, hessians, group_size=32, bits=4)

Round-to-nearest (quant.quantize_array) makes each weight's own error small. GPTQ (Frantar et
al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers",
algorithm 1) makes each layer's *output* error ||X W - X Q||^2 small on calibration inputs X: it
rounds one input feature (a row of W[in, out]) at a time and moves the rounding error onto the
rows not yet rounded, in proportion to how their inputs correlate with this one, which is what
H = X^T X and its inverse's Cholesky factor say. A group's scale is chosen (by quant's
clipping-ratio search) when the loop reaches the group, from the rows as updated so far, so the
result is an ordinary QuantizedWeight: storage, loading and decoding do not change.

Each weight's H comes from the float model's own inputs to it: while the calibration forward
pass is traced, `quant.read_weight` names the weight it hands out and the einsum that contracts
it adds x^T x of its other operand to the pass's outputs (the contracted letters of the
weight's subscripts say which axes of the input are features). The tied embedding's logits
einsum is seen the same way. Every layer's H is of float inputs (GPTQ proper feeds each layer
the already-quantized layers' outputs): one pass, and the same for all layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemini_jax.model import quant

# Added to H's diagonal as a fraction of its mean (GPTQ's "percdamp"): keeps H invertible when
# an input feature never varies in the calibration data, at a small cost in fit.
DEFAULT_DAMP = 0.01


class Hessian:
    """H = sum over calibration rows of x x^T for one weight, with the axes of the weight its
    input features run along (`contracted`, in the weight's order)."""

    def __init__(self, contracted: tuple[int, ...], size: int):
        self.contracted = contracted
        self.matrix = np.zeros((size, size), np.float64)  # [In, In]


def _einsum_rows(subscripts: str, x: jax.Array, weight_letters: str,
                 output: str) -> tuple[tuple[int, ...], jax.Array]:
    """For an einsum of input x and a weight: the weight's contracted axes and x as rows [N, In]
    with its contracted axes last, in the weight's order."""
    contracted = tuple(i for i, c in enumerate(weight_letters) if c not in output)
    x_letters = subscripts.split(",")[0]
    named = x_letters.replace("...", "")
    offset = x.ndim - len(named) if "..." in x_letters else 0  # letters after "..." count from the end
    x_axes = [offset + named.index(weight_letters[i]) for i in contracted]
    rows = jnp.moveaxis(x, x_axes, range(x.ndim - len(x_axes), x.ndim))
    size = int(np.prod([x.shape[a] for a in x_axes]))
    return contracted, rows.astype(jnp.float32).reshape(-1, size)


@contextlib.contextmanager
def _recording(model: nnx.Module, token_mask: jax.Array) -> Iterator[dict[str, tuple[tuple[int, ...], jax.Array]]]:
    """Within the block, every einsum that contracts a quantizable weight of `model` adds x^T x
    of its input rows x to {weight name: (contracted axes, sum)}. Rows of a token ([B, T, ...]
    inputs, as token_mask bool[B, T]) count only where the mask is set, so padding adds nothing."""
    variables = list(quant.quantizable_weights(model))
    names = {id(variable): name for name, variable in variables}
    handed_out = {id(variable.get_value()): name for name, variable in variables}  # the tied table: unread
    sums: dict[str, tuple[tuple[int, ...], jax.Array]] = {}
    einsum = jnp.einsum

    def on_read(variable: nnx.Variable, value: jax.Array) -> None:
        if id(variable) in names:
            handed_out[id(value)] = names[id(variable)]

    def recording_einsum(subscripts, *operands, **kwargs):
        if isinstance(subscripts, str) and len(operands) == 2 and id(operands[1]) in handed_out:
            name = handed_out[id(operands[1])]
            inputs, output = subscripts.replace(" ", "").split("->")
            x = operands[0]
            contracted, rows = _einsum_rows(inputs, x, inputs.split(",")[1], output)
            # A token's input: x [B, T, ...] or, from a layer that merges them, [B * T, ...].
            per_token = x.shape[:2] == token_mask.shape or x.shape[:1] == (token_mask.size,)
            if per_token and rows.shape[0] == token_mask.size:
                rows = rows * token_mask.reshape(-1, 1).astype(rows.dtype)
            term = rows.T @ rows  # [In, In]
            sums[name] = (contracted, sums[name][1] + term if name in sums else term)
        return einsum(subscripts, *operands, **kwargs)

    previous = quant.set_read_hook(on_read)
    jnp.einsum = recording_einsum
    try:
        yield sums
    finally:
        jnp.einsum = einsum
        quant.set_read_hook(previous)


def capture_hessians(model: nnx.Module, batches: Iterable[Mapping[str, Any]]) -> dict[str, Hessian]:
    """{weight name: Hessian} from the float `model`'s forward passes over `batches` (each a
    model input with a batch axis). Padded positions (segment_ids 0) are left out of the
    decoder's Hessians; the encoders' inputs are counted as the encoders see them, padded
    patches and frames included. One compiled pass per batch shape."""
    graphdef, state = nnx.split(model)
    contracted: dict[str, tuple[int, ...]] = {}

    @jax.jit
    def sums(state, batch):
        copy = nnx.merge(graphdef, state)
        with _recording(copy, batch["segment_ids"] > 0) as recorded:
            copy(batch)
        contracted.update({name: axes for name, (axes, _) in recorded.items()})
        return {name: total for name, (_, total) in recorded.items()}

    hessians: dict[str, Hessian] = {}
    for batch in batches:
        for name, total in sums(state, {k: jnp.asarray(v) for k, v in batch.items()}).items():
            hessian = hessians.setdefault(name, Hessian(contracted[name], total.shape[0]))
            hessian.matrix += np.asarray(total, np.float64)
    return hessians


def gptq_rows(w: np.ndarray, hessian: np.ndarray, *, group_size: int, bits: int = 4,
              damp: float = DEFAULT_DAMP) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ of w[In, Out] under H[In, In]: (codes int8 [In, Out], scales float32 [In / g, Out])
    with w ~ codes * scales repeated over each group of g consecutive input rows."""
    quant.check_settings(group_size=group_size, bits=bits)
    size = w.shape[0]
    if size % group_size:
        raise quant.QuantizationError(quant._indivisible(tuple(w.shape), 0, group_size))
    if hessian.shape != (size, size):
        raise quant.QuantizationError(f"H of shape {hessian.shape} does not match {size} input rows")
    q_max = 2 ** (bits - 1) - 1
    w = np.array(w, np.float64)
    h = np.array(hessian, np.float64)
    mean_diag = float(np.mean(np.diag(h)))
    h[np.diag_indices(size)] += damp * (mean_diag if mean_diag > 0 else 1.0)
    # Upper Cholesky factor U of H^-1 (H^-1 = U^T U): row i of U, divided by U[i, i], spreads
    # row i's rounding error over the later rows so that the output error stays least.
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # [In, In], upper triangular
    codes = np.zeros(w.shape, np.int8)
    scales = np.zeros((size // group_size, w.shape[1]), np.float32)
    for i in range(size):
        g = i // group_size
        if i % group_size == 0:
            block = jnp.asarray(w[i:i + group_size], jnp.float32)
            scales[g] = np.asarray(quant.quantize_array(block, axis=0, group_size=group_size, bits=bits).scales,
                                   np.float32)[0]
        scale = scales[g].astype(np.float64)
        code = np.clip(np.round(w[i] / np.where(scale == 0, 1.0, scale)), -q_max, q_max)
        codes[i] = code
        error = (w[i] - code * scale) / u[i, i]  # [Out]
        w[i + 1:] -= np.outer(u[i, i + 1:], error)
    return codes, scales


def gptq_array(w: jax.Array, hessian: Hessian, *, axis: int, group_size: int, bits: int = 4,
               damp: float = DEFAULT_DAMP) -> quant.QuantizedWeight:
    """The QuantizedWeight of w (groups along `axis`) by GPTQ under `hessian`."""
    contracted, ndim = hessian.contracted, w.ndim
    if axis % ndim != contracted[-1]:
        raise quant.QuantizationError(f"groups run along axis {axis}, but the last input axis is {contracted[-1]}")
    rest = tuple(i for i in range(ndim) if i not in contracted)
    order = contracted + rest
    moved = np.transpose(np.asarray(w, np.float64), order)  # [in axes..., out axes...]
    in_shape, out_shape = moved.shape[:len(contracted)], moved.shape[len(contracted):]
    codes, scales = gptq_rows(moved.reshape(int(np.prod(in_shape)), -1), hessian.matrix, group_size=group_size,
                              bits=bits, damp=damp)
    scale_shape = in_shape[:-1] + (in_shape[-1] // group_size,)
    back = np.argsort(order)
    codes = np.transpose(codes.reshape(in_shape + out_shape), back)
    scales = np.transpose(scales.reshape(scale_shape + out_shape), back)
    return quant.QuantizedWeight(codes=jnp.asarray(codes).astype(quant.CODE_DTYPES[bits]),
                                 scales=jnp.asarray(scales, quant.SCALE_DTYPE))


def quantize_model_gptq(model: nnx.Module, hessians: Mapping[str, Hessian], *, group_size: int, bits: int = 4,
                        damp: float = DEFAULT_DAMP) -> dict[str, Any]:
    """quant.quantize_model, in place, with each weight that has a Hessian rounded by GPTQ;
    the report adds "calibrated" (those weights). A weight the calibration inputs never reached
    is rounded to nearest."""
    floats = {name: variable.get_value() for name, variable in quant.quantizable_weights(model)}
    report = quant.quantize_model(model, group_size=group_size, bits=bits)  # the rules, checks and fallbacks
    weights = dict(quant.quantizable_weights(model))
    calibrated = []
    for name in report["quantized"]:
        if name in hessians:
            axis = weights[name].get_value().group_axis
            weights[name].set_value(gptq_array(floats[name], hessians[name], axis=axis, group_size=group_size,
                                               bits=bits, damp=damp))
            calibrated.append(name)
    return {**report, "calibrated": calibrated}
