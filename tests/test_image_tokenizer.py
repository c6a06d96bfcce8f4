"""The image tokenizer: shapes, codes that decode to the forward pass's reconstruction, training
that lowers the loss, a checkpoint that round-trips and refuses what it cannot load, and the
`gemini-jax image-tokenizer train` command end to end on a few easy-VQA images."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from gemini_jax import cli
from gemini_jax.checkpoint import CheckpointError
from gemini_jax.config import ConfigError
from gemini_jax.model.image_tokenizer import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ImageTokenizer,
    ImageTokenizerConfig,
    load_image_tokenizer,
    save_image_tokenizer,
)
from gemini_jax.train.image_tokenizer import (
    TrainSettings,
    _optimizer,
    easy_vqa_images,
    edge_error,
    evaluate,
    psnr,
    reconstruction_loss,
    train_step,
)

# Distinct sizes: 12-pixel images, 3x3 codes, 5 and 7 channels, a 5x3 = 15-code codebook.
TINY = ImageTokenizerConfig(image_size=12, factor=4, levels=(5, 3), widths=(5, 7))


# Compiled once per shape: eager convolutions run (and compile) one operation at a time.
_encode = nnx.jit(lambda model, images: model.encode(images))
_decode = nnx.jit(lambda model, codes: model.decode(codes))
_forward = nnx.jit(lambda model, images: model(images))
_loss = nnx.jit(reconstruction_loss)


def _images(n: int = 2, seed: int = 0, size: int = 12) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def _trained(config: ImageTokenizerConfig = TINY, steps: int = 3) -> ImageTokenizer:
    """A tokenizer a few steps away from its initialisation, so that codes and weights are not trivial."""
    model = ImageTokenizer(config, rngs=nnx.Rngs(1))
    optimizer = _optimizer(model, TrainSettings(steps=steps, learning_rate=1e-2, warmup_steps=0))
    for _ in range(steps):
        train_step(model, optimizer, _images(4, seed=5, size=config.image_size))
    return model


def test_shapes_and_ranges():
    model = ImageTokenizer(TINY, rngs=nnx.Rngs(0))
    assert (TINY.grid, TINY.codes_per_image, TINY.codebook_size) == (3, 9, 15)
    images = _images(2)
    codes = _encode(model, images)
    assert codes.shape == (2, 3, 3) and codes.dtype == jnp.int32
    assert 0 <= int(codes.min()) and int(codes.max()) < TINY.codebook_size
    pixels = _decode(model, codes)
    assert pixels.shape == (2, 12, 12, 3) and pixels.dtype == jnp.float32
    assert 0 <= float(pixels.min()) and float(pixels.max()) <= 1
    out = _forward(model, images)
    assert out.latents.shape == (2, 3, 3, 2) and out.reconstruction.shape == (2, 12, 12, 3)
    # uint8 pixels and the same pixels as floats in [0, 1] are the same image.
    np.testing.assert_array_equal(_encode(model, images.astype(jnp.float32) / jnp.float32(255)), codes)


def test_decoding_the_codes_gives_the_forward_pass_reconstruction():
    model = _trained()
    images = _images(3, seed=2)
    out = _forward(model, images)
    np.testing.assert_array_equal(_encode(model, images), out.codes)
    np.testing.assert_allclose(_decode(model, _encode(model, images)), out.reconstruction, atol=1e-6)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    model = ImageTokenizer(TINY, rngs=nnx.Rngs(0))
    images = _images(4, seed=3)
    before = float(_loss(model, images)[0])
    optimizer = _optimizer(model, TrainSettings(steps=20, learning_rate=1e-2, warmup_steps=0))
    losses = [float(train_step(model, optimizer, images)["loss"]) for _ in range(20)]
    assert losses[0] == pytest.approx(before, rel=1e-5)
    assert float(_loss(model, images)[0]) < 0.8 * before


def test_latents_pushed_past_fsqs_responsive_range_are_pulled_back():
    model = ImageTokenizer(TINY, rngs=nnx.Rngs(0))
    images = _images(4, seed=3)
    model.to_latents.bias[...] = jnp.asarray([8.0, -8.0])  # every code at its outermost levels
    loss, metrics = _loss(model, images)
    assert float(metrics["latent_excess"]) > 10 and float(loss) > float(metrics["mse"])
    optimizer = _optimizer(model, TrainSettings(steps=20, learning_rate=3e-2, warmup_steps=0))
    excess = [float(train_step(model, optimizer, images)["latent_excess"]) for _ in range(20)]
    assert excess[-1] < 0.5 * excess[0]


def test_edge_error_sees_outlines_not_flat_colour():
    square = np.zeros((1, 8, 8, 3), np.float32)
    square[:, 2:6, 2:6] = 1.0
    assert float(edge_error(square, square)) == 0.0
    assert float(edge_error(square + 0.3, square)) == pytest.approx(0.0, abs=1e-7)  # flat shift: no edge moved
    blurred = (square + np.roll(square, 1, axis=1) + np.roll(square, -1, axis=1)) / 3
    assert float(edge_error(blurred, square)) > 0.01


def test_the_edge_term_is_weighted_into_the_loss():
    model = ImageTokenizer(TINY, rngs=nnx.Rngs(0))
    images = _images(4, seed=3)
    plain, metrics = _loss(model, images)
    weighted, _ = _loss(model, images, 2.0)
    assert float(metrics["edge"]) > 0
    assert float(weighted) == pytest.approx(float(plain) + 2.0 * float(metrics["edge"]), rel=1e-5)
    with pytest.raises(ConfigError, match="edge_weight"):
        TrainSettings(edge_weight=-1.0)


def test_psnr_and_codebook_usage():
    images = np.full((2, 4, 4, 3), 100, np.uint8)
    off_by_ten = images + np.uint8(10)
    assert psnr(images, off_by_ten) == pytest.approx(10 * np.log10(255**2 / 100))  # both images
    assert psnr(images, images).tolist() == [100.0, 100.0]  # a perfect copy, capped
    model = _trained()
    result = evaluate(model, np.asarray(_images(5, seed=4)), batch_size=2)
    codes = np.asarray(_encode(model, _images(5, seed=4)))
    assert result["codes_used"] == len(np.unique(codes))
    assert result["codebook_usage"] == pytest.approx(len(np.unique(codes)) / 15)


def test_save_and_load_round_trip(tmp_path):
    model = _trained()
    save_image_tokenizer(model, tmp_path)
    record = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert (record["codebook_size"], record["codes_per_image"]) == (15, 9)
    loaded = load_image_tokenizer(tmp_path, expected=TINY)
    images = _images(3, seed=6)
    np.testing.assert_array_equal(_encode(loaded, images), _encode(model, images))
    np.testing.assert_array_equal(_forward(loaded, images).reconstruction, _forward(model, images).reconstruction)


@pytest.mark.parametrize("changes, words", [
    ({"factor": 3}, "power of two"),
    ({"image_size": 20, "factor": 8}, "not a multiple of factor"),
    ({"widths": (5,)}, "2 positive integers"),
    ({"levels": (5, 2)}, "levels must be integers >= 3"),
    ({"image_size": 0}, "image_size must be a positive integer"),
])
def test_bad_configs_are_refused_with_the_reason(changes, words):
    fields = {"image_size": 12, "factor": 4, "levels": (5, 3), "widths": (5, 7)} | changes
    with pytest.raises(ConfigError, match=words):
        ImageTokenizerConfig(**fields)


def test_bad_input_shapes_are_refused():
    model = ImageTokenizer(TINY, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"images \[B, 12, 12, 3\], got shape \(2, 16, 16, 3\)"):
        model.encode(_images(2, size=16))
    with pytest.raises(ValueError, match=r"codes \[B, 3, 3\], got shape \(2, 4, 4\)"):
        model.decode(jnp.zeros((2, 4, 4), jnp.int32))


def test_bad_checkpoints_are_refused_naming_the_fault(tmp_path):
    with pytest.raises(CheckpointError, match=f"{CONFIG_FILE} is missing"):
        load_image_tokenizer(tmp_path / "nowhere")
    save_image_tokenizer(ImageTokenizer(TINY, rngs=nnx.Rngs(0)), tmp_path)
    other = ImageTokenizerConfig(image_size=12, factor=4, levels=(5, 3), widths=(5, 11))
    with pytest.raises(CheckpointError, match=r"another image tokenizer \(widths: saved \(5, 7\), expected \(5, 11\)\)"):
        load_image_tokenizer(tmp_path, expected=other)
    # A config whose weights have other shapes than the file's.
    record = json.loads((tmp_path / CONFIG_FILE).read_text())
    record["config"]["widths"] = [5, 11]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"wrong shape for its config: down.1.conv.bias \(7,\), expected \(11,\)"):
        load_image_tokenizer(tmp_path)
    record["config"]["levels"] = [5, 3, 3]  # codebook_size no longer matches the record's
    (tmp_path / CONFIG_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="codebook_size 15 does not match its config's 45"):
        load_image_tokenizer(tmp_path)
    record["config"]["levels"] = [5, 2]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="not a readable image tokenizer config"):
        load_image_tokenizer(tmp_path)
    save_image_tokenizer(ImageTokenizer(TINY, rngs=nnx.Rngs(0)), tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_image_tokenizer(tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match=f"{WEIGHTS_FILE} is missing"):
        load_image_tokenizer(tmp_path)


def test_the_split_is_by_path_and_disjoint():
    first, again = easy_vqa_images(limit=60), easy_vqa_images(limit=60)
    assert sum(len(v) for v in first.values()) == 60
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
        assert first[name].shape[1:] == (64, 64, 3) and first[name].dtype == np.uint8


def test_the_command_trains_and_reports(tmp_path, capsys):
    out = tmp_path / "tok"
    argv = ["image-tokenizer", "train", "--out", str(out), "--steps", "3", "--batch-size", "4", "--widths", "4,4,4",
            "--levels", "5,3", "--limit", "60", "--edge-weight", "0.5", "--no-progress", "--no-compile-cache"]
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["edge_weight"] == 0.5
    assert report["codebook_size"] == 15 and report["codes_per_image"] == 64
    for split in ("validation", "test"):
        assert report[split]["images"] == report["images"][split] > 0
        assert 0 < report[split]["psnr_db"] < 100 and 0 < report[split]["codebook_usage"] <= 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # logged at the last step
    assert (out / "reconstructions.png").stat().st_size > 0
    assert load_image_tokenizer(out).config == ImageTokenizerConfig(levels=(5, 3), widths=(4, 4, 4))
    assert "test PSNR" in capsys.readouterr().out


def test_the_command_refuses_bad_flags(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["image-tokenizer", "train", "--out", str(tmp_path), "--levels", "8,2"])
    assert "integers >= 3" in capsys.readouterr().err
    argv = ["image-tokenizer", "train", "--out", str(tmp_path), "--factor", "4", "--widths", "4,4,4", "--limit", "60"]
    assert cli.main(argv) == 2
    assert "widths (4, 4, 4) must be 2 positive integers" in capsys.readouterr().err


def test_the_commands_defaults_are_the_librarys():
    args = cli.build_parser().parse_args(["image-tokenizer", "train", "--out", "x"])
    settings, config = TrainSettings(), ImageTokenizerConfig()
    assert (args.steps, args.batch_size, args.learning_rate, args.seed, args.edge_weight) == (
        settings.steps, settings.batch_size, settings.learning_rate, settings.seed, settings.edge_weight)
    assert (args.factor, args.levels, args.widths) == (config.factor, config.levels, None)
    assert tuple(32 << i for i in range(config.stages)) == config.widths  # what --widths' default makes
