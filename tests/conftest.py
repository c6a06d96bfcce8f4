"""Test-wide JAX settings (several CPU devices, strict promotion) and model/media builders."""

import functools

import jax

# Before any other JAX use: later tests shard over these devices on one CPU.
jax.config.update("jax_num_cpu_devices", 4)
# Implicit rank broadcasting and silent dtype promotion hide axis and precision bugs.
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from gemini_jax.config import ModelConfig, VisionConfig  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """JAX's persistent compilation cache, for the whole session: each new Trainer, model or
    worker process compiles its programs afresh (the longest part of most tests on a small
    machine), and with the cache the same program compiles once. Returns its directory, for
    worker processes (JAX_COMPILATION_CACHE_DIR)."""
    from jax.experimental.compilation_cache import compilation_cache as cc

    path = tmp_path_factory.mktemp("jax_cache")
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    cc.reset_cache()  # the cache is set up once per process: from these settings now
    return path


def _test_value(path, leaf, rng: np.random.Generator) -> np.ndarray:
    """A random value for one parameter, at roughly the scale its initialiser would give,
    with non-zero norm scales and biases so that every parameter matters."""
    name = path[-2].key  # the path ends in (..., DictKey(name), GetAttrKey("value"))
    shape = leaf.shape
    if name == "scale" or name.endswith("bias"):
        std = 0.1
    elif name == "table":
        std = shape[-1] ** -0.5
    elif name.endswith("queries"):
        std = 1.0
    elif name in ("row_embed", "col_embed"):
        std = 0.3
    elif name in ("q", "k", "v"):  # [D, heads, H]: the input is axis 0 only
        std = shape[0] ** -0.5
    else:  # [..., out]: every other axis is an input (o [N, H, D], kernels, convolutions)
        std = float(np.prod(shape[:-1])) ** -0.5
    return (std * rng.standard_normal(shape)).astype(leaf.dtype)


@functools.cache
def _build(config: ModelConfig, seed: int):
    from gemini_jax.model import Gemini

    # Random values from numpy on the abstract model: the real initialisers compile one
    # small XLA program per parameter shape, tens of seconds on a shared 2-core box.
    # (test_model.py builds one model with the real initialisers.)
    abstract = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(seed)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    state = jax.tree_util.tree_map_with_path(lambda path, leaf: jax.numpy.asarray(_test_value(path, leaf, rng)), state)
    return nnx.merge(graphdef, state)


def _decoder_params(c: ModelConfig) -> int:
    """The decoder's size written out from the layout (tied embedding, Gemma-1 blocks)."""
    per_layer = (
        c.width * c.num_heads * c.head_dim * 2  # q and o
        + 2 * c.width * c.num_kv_heads * c.head_dim  # k and v
        + 3 * c.width * c.mlp_dim  # gate, up, down
        + 2 * c.width  # two norms
    )
    return c.vocab_size * c.width + c.depth * per_layer + c.width


@pytest.fixture(scope="session")
def decoder_params():
    """decoder_params(config) -> the decoder's parameter count, from the formula (not the model)."""
    return _decoder_params


@pytest.fixture(scope="session")
def build_model():
    """build_model(config, seed=0) -> Gemini with random parameters, cached per
    (config, seed). Callers must not modify the models they get."""
    return lambda config, seed=0: _build(config, seed)


def make_images(vision: VisionConfig, grids: list[list[tuple[int, int]]], *, num_patches: int,
                seed: int, num_slots: int | None = None) -> dict[str, np.ndarray]:
    """Random images with patch grids grids[b][i] = (rows, cols), padded to `num_patches`
    patches and `num_slots` slots; padding holds random junk that must be ignored."""
    rng = np.random.default_rng(seed)
    batch = len(grids)
    slots = num_slots or max(1, max(len(g) for g in grids))
    patches = rng.uniform(-1, 1, (batch, slots, num_patches, vision.patch_dim)).astype(np.float32)
    coords = rng.integers(0, vision.max_grid, (batch, slots, num_patches, 2)).astype(np.int32)
    mask = np.zeros((batch, slots, num_patches), bool)
    for b, row in enumerate(grids):
        for i, (rows, cols) in enumerate(row):
            n = rows * cols
            coords[b, i, :n] = np.stack(np.divmod(np.arange(n), cols), axis=-1)
            mask[b, i, :n] = True
    return {"patches": patches, "coords": coords, "mask": mask}


def make_audio(num_mels: int, num_frames: list[list[int]], *, max_frames: int, seed: int,
               num_slots: int | None = None) -> dict[str, np.ndarray]:
    """Random log-mel clips of num_frames[b][c] real frames, padded (with junk) to max_frames."""
    rng = np.random.default_rng(seed)
    batch = len(num_frames)
    slots = num_slots or max(1, max(len(c) for c in num_frames))
    mels = rng.normal(size=(batch, slots, max_frames, num_mels)).astype(np.float32)
    mask = np.zeros((batch, slots, max_frames), bool)
    for b, row in enumerate(num_frames):
        for c, n in enumerate(row):
            mask[b, c, :n] = True
    return {"mels": mels, "mask": mask}


@pytest.fixture(scope="session")
def media():
    """Builders of random media inputs: media.images(...), media.audio(...)."""

    class Media:
        images = staticmethod(make_images)
        audio = staticmethod(make_audio)

    return Media


def train_gemma_like_tokenizer(texts, *, vocab_size: int, path):
    """A SentencePiece model laid out as Gemma's: pad 0, eos 1, bos 2, unk 3, unused pieces,
    then the turn markers (at 10 and 11, not at our 4 and 5), and no media pieces."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        hard_vocab_limit=False, byte_fallback=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=[f"<unused{i}>" for i in range(6)] + ["<start_of_turn>", "<end_of_turn>"],
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return path


def greedy_continuation(model, batch, steps: int) -> list[int]:
    """`steps` greedy token ids after a one-row prompt batch, through prefill and cached decode steps."""
    import jax.numpy as jnp

    cache = model.init_cache(batch_size=1, max_len=batch["tokens"].shape[1] + steps)
    out, cache = nnx.jit(lambda m, b, c: m.prefill(b, c))(model, batch, cache)
    decode = nnx.jit(lambda m, t, c: m.decode_step(t, c))
    token = jnp.argmax(out.logits[:, -1], axis=-1).astype(jnp.int32)  # [1]
    ids = [int(token[0])]
    for _ in range(steps - 1):
        logits, cache = decode(model, token, cache)
        token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        ids.append(int(token[0]))
    return ids


def save_hf(model, directory, *, tokenizer):
    """A transformers model saved as a Hugging Face directory with `tokenizer` as its tokenizer.model."""
    import shutil

    model.save_pretrained(directory)
    assert (directory / "model.safetensors").is_file()
    shutil.copy(tokenizer, directory / "tokenizer.model")
    return model


def load_run(run_dir):
    """The model of a run directory, its parameters from the latest checkpoint."""
    from gemini_jax import checkpoint
    from gemini_jax.model import Gemini

    config = checkpoint.read_config(run_dir)
    model = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
    checkpoint.load_params(run_dir, model)
    return model


def write_fresh_run(run_dir, *, config, tokenizer_path):
    """A run directory holding a fresh model of `config` (seed 0), as `--init-from` reads one."""
    from gemini_jax import checkpoint
    from gemini_jax.model import Gemini
    from gemini_jax.train import Trainer
    from gemini_jax.train.optimizer import OptimizerConfig

    trainer = Trainer(Gemini(config, rngs=nnx.Rngs(0)), OptimizerConfig(total_steps=1))
    checkpoint.write_run_files(run_dir, config=config, tokenizer_path=tokenizer_path)
    saver = checkpoint.Checkpointer(run_dir, async_save=False)
    saver.save(1, state=trainer.state(), meta={"step": 1})
    saver.close()
    return run_dir
