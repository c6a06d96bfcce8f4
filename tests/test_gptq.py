"""GPTQ rounding: round-to-nearest where inputs are uncorrelated, a worked two-feature case, a
smaller layer output error than round-to-nearest, and the Hessians the calibration pass captures."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemini_jax.config import PRESETS
from gemini_jax.model import gptq, quant

# Text only, every width a multiple of the group size 8 (o groups along the head dimension).
TEXT = dataclasses.replace(PRESETS["test"], head_dim=8, vocab_size=400, vision=None, audio=None)


def _codes(q: quant.QuantizedWeight) -> np.ndarray:
    return np.asarray(q.codes.astype(jnp.int8))


def _rows_weight(rng, rows: int, size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibration rows x[rows, size] whose features are strongly correlated, and a weight."""
    mixing = rng.standard_normal((size, size)) * 0.5 + np.eye(size)
    x = rng.standard_normal((rows, size // 4)) @ rng.standard_normal((size // 4, size)) + 0.3 * (
        rng.standard_normal((rows, size)) @ mixing)
    return x, rng.standard_normal((size, out)).astype(np.float32)


def test_uncorrelated_inputs_give_round_to_nearest():
    # With H diagonal (and no damping) no rounding error has anywhere to go: GPTQ's codes and
    # scales are quantize_array's.
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 6)).astype(np.float32)
    h = np.diag(rng.uniform(0.5, 2.0, 32))
    codes, scales = gptq.gptq_rows(w, h, group_size=16, bits=4, damp=0.0)
    nearest = quant.quantize_array(jnp.asarray(w), axis=0, group_size=16, bits=4)
    np.testing.assert_array_equal(codes, _codes(nearest))
    np.testing.assert_array_equal(scales, np.asarray(nearest.scales, np.float32))


def test_two_correlated_features_worked_by_hand():
    # Inputs x0, x1 with E[x0^2] = E[x1^2] = 1, E[x0 x1] = c, and x2, x3 unrelated to them.
    # Rounding w0 leaves e0 = w0 - q0; the output error E[(x0 e0 + x1 e1)^2] is least for
    # e1 = -c e0, so w1 is rounded from w1 + c e0; w2 and w3 are rounded as they are. One group
    # of all four rows, whose scale s is the one rounding to nearest chooses (row 2 sets it).
    c = 0.9
    w = np.array([[0.30], [0.12], [0.62], [-0.05]], np.float32)
    h = np.eye(4)
    h[0, 1] = h[1, 0] = c
    codes, scales = gptq.gptq_rows(w, h, group_size=4, bits=4, damp=0.0)
    s = float(np.asarray(quant.quantize_array(jnp.asarray(w), axis=0, group_size=4).scales, np.float32)[0, 0])
    q0 = np.round(0.30 / s)
    q1 = np.round((0.12 + c * (0.30 - q0 * s)) / s)
    assert scales[0, 0] == s
    assert codes[:, 0].tolist() == [q0, q1, np.round(0.62 / s), np.round(-0.05 / s)]
    assert q1 != np.round(0.12 / s)  # the compensation changed the second code


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bits", [4, 8])
def test_layer_output_error_is_below_round_to_nearest(seed, bits):
    rng = np.random.default_rng(seed)
    x, w = _rows_weight(rng, rows=400, size=64, out=24)
    hessian = gptq.Hessian((0,), 64)
    hessian.matrix = x.T @ x
    q = gptq.gptq_array(jnp.asarray(w), hessian, axis=0, group_size=16, bits=bits)
    nearest = quant.quantize_array(jnp.asarray(w), axis=0, group_size=16, bits=bits)
    error = lambda q: np.sum(np.square(x @ (np.asarray(q.dequantize(jnp.float32), np.float64) - w)))
    assert q.shape == nearest.shape and q.scales.shape == nearest.scales.shape and q.codes.dtype == nearest.codes.dtype
    assert error(q) < 0.8 * error(nearest), (error(q), error(nearest))


def test_multi_axis_inputs_keep_the_weights_layout():
    # An attention output weight o[N, H, D] contracts (N, H) with groups along H: GPTQ works on
    # it as [N * H, D] and hands back codes [N, H, D] and scales [N, H / g, D], so that under an
    # uncorrelated H it equals rounding to nearest in that layout.
    rng = np.random.default_rng(3)
    w = jnp.asarray(rng.standard_normal((3, 16, 5)).astype(np.float32))
    hessian = gptq.Hessian((0, 1), 48)
    hessian.matrix = np.diag(rng.uniform(0.5, 2.0, 48))
    q = gptq.gptq_array(w, hessian, axis=1, group_size=8, damp=0.0)
    nearest = quant.quantize_array(w, axis=1, group_size=8)
    np.testing.assert_array_equal(_codes(q), _codes(nearest))
    np.testing.assert_array_equal(np.asarray(q.scales, np.float32), np.asarray(nearest.scales, np.float32))
    with pytest.raises(quant.QuantizationError, match="groups run along axis 0"):
        gptq.gptq_array(w, hessian, axis=0, group_size=3)


def _batch(tokens: np.ndarray, lengths: list[int]) -> dict[str, np.ndarray]:
    segment = (np.arange(tokens.shape[1])[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return {"tokens": tokens * segment, "segment_ids": segment,
            "positions": np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape),
            "media_spans": np.zeros_like(tokens)}


def test_captured_hessians_are_the_models_inputs_and_skip_padding(build_model):
    model = build_model(TEXT)
    rng = np.random.default_rng(4)
    batches = [_batch(rng.integers(10, 400, (3, 12)).astype(np.int32), [12, 7, 4]) for _ in range(2)]
    hessians = gptq.capture_hessians(model, batches)
    assert set(hessians) == {name for name, _ in quant.quantizable_weights(model)}
    # The tied table's input is the final hidden state: H = sum of h h^T over the real tokens.
    expected = np.zeros((TEXT.width, TEXT.width))
    for batch in batches:
        hidden = np.asarray(model({k: jnp.asarray(v) for k, v in batch.items()}).hidden, np.float64)
        real = hidden[batch["segment_ids"] > 0]  # [tokens, D]
        expected += real.T @ real
    table = hessians["embedder.table"]
    assert table.contracted == (1,)
    np.testing.assert_allclose(table.matrix, expected, rtol=1e-4, atol=1e-4)
    assert hessians["decoder.blocks.0.attn.o"].contracted == (0, 1)
    assert hessians["decoder.blocks.0.mlp.down"].matrix.shape == (TEXT.mlp_dim, TEXT.mlp_dim)


def test_a_calibrated_model_fits_its_calibration_logits_better(build_model):
    rng = np.random.default_rng(5)
    batches = [_batch(rng.integers(10, 400, (4, 16)).astype(np.int32), [16, 16, 16, 16]) for _ in range(4)]
    float_model = build_model(TEXT)
    reference = [np.asarray(float_model({k: jnp.asarray(v) for k, v in b.items()}).logits) for b in batches]

    def logits_error(model):
        return sum(np.sum(np.square(np.asarray(model({k: jnp.asarray(v) for k, v in b.items()}).logits) - r))
                   for b, r in zip(batches, reference))

    nearest = nnx.clone(float_model)
    quant.quantize_model(nearest, group_size=8)
    calibrated = nnx.clone(float_model)
    report = gptq.quantize_model_gptq(calibrated, gptq.capture_hessians(float_model, batches), group_size=8)
    assert report["calibrated"] == report["quantized"] and not report["kept_float"]
    assert logits_error(calibrated) < logits_error(nearest)


def test_a_calibrated_run_records_its_method_and_reloads_as_written(build_model, tmp_path, monkeypatch):
    from gemini_jax import checkpoint
    from gemini_jax.data.tokenizer import train_tokenizer
    from gemini_jax.sample import quantize

    float_model = build_model(TEXT)
    tokenizer_file = tmp_path / "t.model"
    train_tokenizer(["What colour is the shape? A red circle. A blue square.\n" * 40], vocab_size=400,
                    path=tokenizer_file)
    checkpoint.write_run_files(tmp_path / "float", config=TEXT, tokenizer_path=tokenizer_file)
    saver = checkpoint.Checkpointer(tmp_path / "float", async_save=False)
    saver.save(3, state={"params": nnx.to_pure_dict(nnx.state(float_model, nnx.Param))}, meta={"step": 3})
    saver.wait()
    saver.close()
    # The demo corpus stands aside: random token batches as the calibration examples.
    rng = np.random.default_rng(6)
    batches = [_batch(rng.integers(10, 400, (4, 16)).astype(np.int32), [16, 16, 9, 16]) for _ in range(2)]
    asked = []
    monkeypatch.setattr(quantize, "demo_calibration",
                        lambda tokenizer, config, *, examples, cache_dir: asked.append(examples) or batches)
    report = quantize.quantize_run(tmp_path / "float", tmp_path / "gptq", group_size=8, calibrate=8)
    record = checkpoint.read_quantization(tmp_path / "gptq")
    assert asked == [8] and report["method"] == record["method"] == "gptq"
    assert record["calibration_examples"] == 8 and record["calibrated"] == record["quantized"]

    in_memory = nnx.clone(float_model)
    gptq.quantize_model_gptq(in_memory, gptq.capture_hessians(float_model, batches), group_size=8)
    reloaded = checkpoint.load_run(tmp_path / "gptq").model
    for name, variable in quant.quantizable_weights(reloaded):
        expected = dict(quant.quantizable_weights(in_memory))[name].get_value()
        np.testing.assert_array_equal(_codes(variable.get_value()), _codes(expected))
