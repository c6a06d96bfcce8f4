"""PaliGemma-1 checkpoints from the Hugging Face layout, with transformers as the oracle: the
imported run gives the same float32 logits on the same image and text, the same greedy
continuation, and bad inputs get one clear ConversionError naming the file or tensor."""

import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import greedy_continuation, load_run, save_hf, train_gemma_like_tokenizer
from flax import nnx
from safetensors.numpy import load_file, save_file

from gemini_jax import checkpoint, cli
from gemini_jax.convert.gemma import ConversionError
from gemini_jax.convert.paligemma import import_hf, import_paligemma
from gemini_jax.data.media import image_patches
from gemini_jax.model import Gemini

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# A 3 x 3 grid of 14-pixel patches (so a row/column swap shows); decoder head_dim 24 is not
# hidden_size / heads (16), and one key/value head, as PaliGemma-3B has.
IMAGE_SIZE, PATCH = 42, 14
GRID = IMAGE_SIZE // PATCH
VISION = {"image_size": IMAGE_SIZE, "patch_size": PATCH, "hidden_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 4, "intermediate_size": 48, "layer_norm_eps": 1e-6,
          "hidden_act": "gelu_pytorch_tanh", "vision_use_head": False}
TEXT = {"vocab_size": 331, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 24, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh"}
IMAGE_TOKEN = 330  # inside the vocabulary, past the tokenizer's pieces
ATOL = 1e-4


@dataclasses.dataclass
class Converted:
    hf: "transformers.PaliGemmaForConditionalGeneration"
    hf_dir: Path
    run_dir: Path
    model: Gemini


def randomize(model, seed: int) -> None:
    """Weights that give logits of unit size or more (HF's init gives near-zero logits, where
    any mapping looks right), LayerNorm scales near 1 and other vectors (biases, Gemma's
    zero-centred norm scales) non-zero, so a swapped or dropped tensor shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim == 1:
                layer_norm = "vision_tower" in name and "norm" in name and name.endswith("weight")
                value = 1.0 + 0.1 * noise if layer_norm else 0.1 * noise
            elif "embed_tokens" in name:  # [V, D]: unit-size inputs after the sqrt(D) scale
                value = noise * param.shape[1] ** -0.5
            elif "position_embedding" in name:
                value = noise * 0.5
            elif "patch_embedding" in name:  # Conv2d [D, 3, p, p]
                value = noise * (3 * PATCH * PATCH) ** -0.5
            elif "language_model" in name:  # decoder nn.Linear [out, in]; see test_convert.randomize
                value = noise * 2.0 * param.shape[1] ** -0.5
            else:  # vision and projector nn.Linear [out, in]
                value = noise * param.shape[1] ** -0.5
            param.copy_(value)


def make_hf(directory: Path, *, tokenizer: Path, seed: int = 0):
    config = transformers.PaliGemmaConfig(
        vision_config=transformers.SiglipVisionConfig(**VISION), text_config=transformers.GemmaConfig(**TEXT),
        image_token_index=IMAGE_TOKEN, vocab_size=TEXT["vocab_size"], projection_dim=TEXT["hidden_size"],
        hidden_size=TEXT["hidden_size"],
    )
    config._attn_implementation = "eager"
    config.text_config._attn_implementation = "eager"
    config.vision_config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.PaliGemmaForConditionalGeneration(config).eval()
    randomize(model, seed)
    return save_hf(model, directory, tokenizer=tokenizer)


def random_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


def hf_pixels(images: np.ndarray) -> torch.Tensor:
    """What PaliGemma's processor gives for images already at image_size: (x / 255 - 0.5) / 0.5, [B, 3, H, W]."""
    pixels = images.astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))


def our_batch(images: np.ndarray, text: np.ndarray, *, prefix_len: int) -> dict[str, np.ndarray]:
    """One image per row, then `text`; the image and the first `prefix_len` text tokens form
    the bidirectional prefix (one media span), the rest is causal."""
    rows, num_patches = images.shape[0], GRID * GRID
    patches = [image_patches(image, patch_size=PATCH, max_patches=num_patches, max_grid=GRID) for image in images]
    assert all(p.patches.shape[0] == num_patches for p in patches)  # a square image gets the full grid
    tokens = np.concatenate([np.full((rows, num_patches), IMAGE_TOKEN), text], axis=1).astype(np.int32)
    length = tokens.shape[1]
    prefix = num_patches + prefix_len
    return {
        "tokens": tokens,
        "segment_ids": np.ones((rows, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)).copy(),
        "media_spans": np.broadcast_to((np.arange(length) < prefix).astype(np.int32), (rows, length)).copy(),
        "image_patches": np.stack([p.patches for p in patches])[:, None],  # [B, 1, P, C]
        "image_coords": np.stack([p.coords for p in patches])[:, None],  # [B, 1, P, 2]
        "image_patch_mask": np.ones((rows, 1, num_patches), bool),
    }


def hf_inputs(images: np.ndarray, text: np.ndarray, *, prefix_len: int) -> dict:
    rows, num_patches = images.shape[0], GRID * GRID
    tokens = np.concatenate([np.full((rows, num_patches), IMAGE_TOKEN), text], axis=1)
    token_type_ids = (np.arange(tokens.shape[1]) >= num_patches + prefix_len).astype(np.int64)  # 1: suffix
    return {"input_ids": torch.from_numpy(tokens.astype(np.int64)), "pixel_values": hf_pixels(images),
            "attention_mask": torch.ones(tokens.shape, dtype=torch.long),
            "token_type_ids": torch.from_numpy(np.broadcast_to(token_type_ids, tokens.shape).copy())}


@nnx.jit
def forward(model, batch):
    return model(batch).logits


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    texts = ["the quick brown fox jumps over the lazy dog, again and again\n" * 30,
             "caption en: a photo of a cat on a mat, 12345\n" * 30]
    train_gemma_like_tokenizer(texts, vocab_size=320, path=path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tokenizer_path) -> Converted:
    root = tmp_path_factory.mktemp("paligemma")
    hf = make_hf(root / "hf", tokenizer=tokenizer_path)
    config = import_paligemma(root / "hf", root / "run")
    vision = config.vision
    assert (config.image_token_id, config.prompt_attention, config.num_kv_heads, config.head_dim) == (
        IMAGE_TOKEN, "bidirectional", 1, 24)
    assert (vision.block, vision.position_embedding, vision.pooling, vision.max_grid, vision.max_patches) == (
        "siglip", "learned", "none", GRID, GRID * GRID)
    return Converted(hf=hf, hf_dir=root / "hf", run_dir=root / "run", model=load_run(root / "run"))


# -- agreement with transformers ---------------------------------------------------------------


def test_imported_logits_match_transformers(converted):
    rng = np.random.default_rng(1)
    images = random_images(2, seed=1)
    text = rng.integers(9, 320, (2, 14))
    text[:, 0] = 2  # bos after the image, as PaliGemma's processor puts it
    prefix_len = 6  # bos + 5 prompt tokens; the 8 after them are the causal suffix
    ours = np.asarray(forward(converted.model, our_batch(images, text, prefix_len=prefix_len)))
    with torch.no_grad():
        theirs = converted.hf(**hf_inputs(images, text, prefix_len=prefix_len)).logits.numpy()
    assert np.std(theirs) > 0.5  # logits of real size, not a near-zero model where anything agrees
    difference = float(np.max(np.abs(ours - theirs)))
    print(f"PaliGemma max |logit difference| (float32): {difference:.2e}")
    assert difference <= ATOL
    # The prefix really is bidirectional on both sides: the causal reading differs.
    causal = our_batch(images, text, prefix_len=0)
    causal["media_spans"][:] = 0
    assert np.max(np.abs(np.asarray(forward(converted.model, causal)) - theirs)) > 1e-2


def test_greedy_generation_matches_transformers(converted):
    images = random_images(1, seed=2)
    prompt = np.random.default_rng(2).integers(9, 320, (1, 7))
    prompt[:, 0] = 2
    steps = 32
    inputs = hf_inputs(images, prompt, prefix_len=prompt.shape[1])  # the whole prompt is prefix
    with torch.no_grad():  # eos_token_id None: all 32 tokens, even where the model picks eos
        theirs = converted.hf.generate(**inputs, do_sample=False, max_new_tokens=steps, eos_token_id=None,
                                       pad_token_id=0)
    theirs = theirs.numpy()[0, inputs["input_ids"].shape[1]:]
    assert theirs.shape == (steps,)

    ours = greedy_continuation(converted.model, our_batch(images, prompt, prefix_len=prompt.shape[1]), steps)
    np.testing.assert_array_equal(np.array(ours), theirs)
    assert len(set(ours)) > 8  # a real continuation, not one token repeated


def test_older_tensor_names_import_the_same(converted, tmp_path):
    """Checkpoints written by other transformers versions name the towers differently."""
    directory = tmp_path / "hf"
    shutil.copytree(converted.hf_dir, directory)
    tensors = load_file(directory / "model.safetensors")
    renamed = {}
    for name, value in tensors.items():
        name = name.replace("language_model.model.", "model.language_model.", 1)
        name = name.replace("vision_tower.", "model.vision_tower.vision_model.", 1)
        renamed[name.replace("multi_modal_projector.", "model.multi_modal_projector.", 1)] = value
    renamed["lm_head.weight"] = tensors["language_model.model.embed_tokens.weight"]
    save_file(renamed, directory / "model.safetensors", metadata={"format": "pt"})
    import_paligemma(directory, tmp_path / "run")
    ours = nnx.to_pure_dict(nnx.state(load_run(tmp_path / "run"), nnx.Param))
    expected = nnx.to_pure_dict(nnx.state(converted.model, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, ours, expected)


# -- bad inputs and the command ----------------------------------------------------------------


def _edit_config(directory: Path, edit) -> None:
    values = json.loads((directory / "config.json").read_text())
    edit(values)
    (directory / "config.json").write_text(json.dumps(values))


def _wrong_vision_shape(directory: Path) -> None:
    tensors = load_file(directory / "model.safetensors")
    tensors["vision_tower.encoder.layers.1.mlp.fc1.weight"] = np.zeros((47, 32), np.float32)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


CASES = {
    "vision tensor shape": (_wrong_vision_shape, r"vision_tower\.encoder\.layers\.1\.mlp\.fc1\.weight.*\[47, 32\]"),
    "vision activation": (lambda d: _edit_config(d, lambda v: v["vision_config"].update(hidden_act="gelu")),
                          "vision_config.hidden_act 'gelu'"),
    "gemma 2 decoder": (lambda d: _edit_config(d, lambda v: v["text_config"].update(model_type="gemma2")),
                        "text_config.model_type 'gemma2'"),
    "image token outside the vocabulary": (lambda d: _edit_config(d, lambda v: v.update(image_token_index=400)),
                                           "image_token_index must be a token id in 0 .. 330"),
    "grid not whole": (lambda d: _edit_config(d, lambda v: v["vision_config"].update(image_size=40)),
                       "image_size 40 is not a multiple of patch_size 14"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoints_get_a_clear_error(case, converted, tmp_path):
    damage, message = CASES[case]
    directory = tmp_path / "hf"
    shutil.copytree(converted.hf_dir, directory)
    damage(directory)
    with pytest.raises(ConversionError, match=message):
        import_paligemma(directory, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written


def test_convert_command_dispatches_on_the_architecture(converted, tmp_path, capsys):
    assert cli.main(["convert", "--from-hf", str(converted.hf_dir), "--to", str(tmp_path / "run")]) == 0
    assert "SigLIP vision encoder" in capsys.readouterr().out
    assert checkpoint.read_config(tmp_path / "run") == converted.model.config

    other = tmp_path / "other"
    shutil.copytree(converted.hf_dir, other)
    _edit_config(other, lambda v: v.update(architectures=["LlavaForConditionalGeneration"], model_type="llava"))
    with pytest.raises(ConversionError, match="LlavaForConditionalGeneration.*accepted: GemmaForCausalLM"):
        import_hf(other, tmp_path / "run2")
    assert cli.main(["convert", "--from-hf", str(other), "--to", str(tmp_path / "run3")]) == 2
    assert "PaliGemmaForConditionalGeneration" in capsys.readouterr().err


# -- `gemini-jax generate` on an imported run --------------------------------------------------


def _prefix_ids(tokenizer_path: Path, prompt: str, *, images: int = 1) -> list[int]:
    """PaliGemmaProcessor's input ids, built independently of our encoder: <image> x n per
    image, <bos>, then "prompt\\n" tokenized as one string (the processor's text)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    return [IMAGE_TOKEN] * (GRID * GRID * images) + [sp.bos_id()] + sp.encode(prompt + "\n")


def _save_png(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    from PIL import Image

    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    return image


def _stretched(image: np.ndarray) -> np.ndarray:
    """The processor's resize to image_size x image_size (bicubic, aspect ratio dropped)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC))


# (image shape, prompt): seeds and prompts whose greedy answers run past 3 tokens with no pad/unk.
GENERATE_CASES = {"non-square": ((30, 61), "caption en"), "square": ((IMAGE_SIZE, IMAGE_SIZE), "describe the photo")}


@pytest.mark.parametrize("case", sorted(GENERATE_CASES))
def test_generate_command_matches_transformers(converted, tokenizer_path, tmp_path, capsys, case):
    """`gemini-jax generate` on the imported run gives transformers' greedy answer: same prompt
    layout (PaliGemmaProcessor's), same stretched pixels, stop at eos."""
    import gemini_jax
    from gemini_jax.data.encode import encode_example
    from gemini_jax.data.examples import Content, Example, Part
    from gemini_jax.data.tokenizer import Tokenizer

    shape, prompt = GENERATE_CASES[case]
    image = _save_png(tmp_path / "image.png", *shape, seed=sum(shape) + 1)
    steps = 12
    config = converted.model.config
    assert (config.prompt_format, config.vision.keep_aspect_ratio) == ("prefix", False)

    # Our prompt is the processor's, token for token, and all of it is one bidirectional span.
    ids = _prefix_ids(tokenizer_path, prompt)
    tokenizer = Tokenizer.load(checkpoint.tokenizer_path(converted.run_dir))
    example = Example(contents=(Content("user", (Part(image=str(tmp_path / "image.png")), Part(text=prompt))),))
    row = encode_example(example, tokenizer=tokenizer, config=config, for_generation=True)
    np.testing.assert_array_equal(row["tokens"], ids)
    assert len(set(row["media_spans"].tolist())) == 1 and row["media_spans"][0] > 0
    assert row["image_patches"].shape[1] == GRID * GRID  # the full grid, whatever the shape

    inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
              "token_type_ids": torch.zeros(1, len(ids), dtype=torch.long),  # 0: the prefix
              "pixel_values": hf_pixels(_stretched(image)[None])}
    with torch.no_grad():  # greedy, stopping at eos, never an id the tokenizer cannot decode
        theirs = converted.hf.generate(
            **inputs, do_sample=False, max_new_tokens=steps, eos_token_id=tokenizer.eos_id, pad_token_id=0,
            suppress_tokens=list(range(tokenizer.vocab_size, TEXT["vocab_size"])))
    theirs = theirs[0, len(ids):].tolist()
    if theirs and theirs[-1] == tokenizer.eos_id:
        theirs = theirs[:-1]
    assert len(theirs) > 3  # a real answer, not an immediate eos

    ours = gemini_jax.generate(str(converted.run_dir), prompt, images=[str(tmp_path / "image.png")],
                                max_new_tokens=steps)
    assert ours == tokenizer.decode(theirs)
    assert cli.main(["generate", "--checkpoint", str(converted.run_dir), "--image",
                     str(tmp_path / "image.png"), "--max-new-tokens", str(steps), prompt]) == 0
    assert capsys.readouterr().out == ours + "\n"


def test_prefix_format_training_rows_score_the_answer(converted, tokenizer_path, tmp_path):
    """A prefix-format example is the prompt, then the answer and <eos>, which alone are targets."""
    from gemini_jax.data.encode import EncodeError, encode_example
    from gemini_jax.data.examples import Content, Example, Part
    from gemini_jax.data.tokenizer import Tokenizer

    _save_png(tmp_path / "image.png", 20, 50, seed=3)
    tokenizer = Tokenizer.load(checkpoint.tokenizer_path(converted.run_dir))
    config = converted.model.config
    user = Content("user", (Part(text="caption en"), Part(image=str(tmp_path / "image.png"))))
    row = encode_example(Example(contents=(user, Content("model", (Part(text="a cat on a mat"),)))),
                         tokenizer=tokenizer, config=config)
    prompt = _prefix_ids(tokenizer_path, "caption en")  # the image goes first, as the processor puts it
    answer = tokenizer.encode("a cat on a mat") + [tokenizer.eos_id]
    np.testing.assert_array_equal(np.append(row["tokens"], row["targets"][-1]), prompt + answer)
    np.testing.assert_array_equal(row["loss_mask"], [0.0] * (len(prompt) - 1) + [1.0] * len(answer))
    spans = row["media_spans"]
    assert (spans[: len(prompt)] == spans[0]).all() and spans[0] > 0 and not spans[len(prompt):].any()

    two_turns = Example(contents=(user, Content("model", (Part(text="a"),)), user))
    with pytest.raises(EncodeError, match="one user turn"):
        encode_example(two_turns, tokenizer=tokenizer, config=config, for_generation=True)
