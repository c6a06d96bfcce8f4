"""Gemma-1 checkpoints from and to the Hugging Face layout, with transformers as the oracle:
logits and greedy generation agree, export then import gives back the same bits, and every
bad input is one clear ConversionError naming the file or tensor."""

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import greedy_continuation, load_run, save_hf, train_gemma_like_tokenizer
from flax import nnx
from PIL import Image
from safetensors.numpy import load_file, save_file

import gemini_jax
from gemini_jax import checkpoint, cli
from gemini_jax.config import PRESETS
from gemini_jax.convert.gemma import ConversionError, export_gemma, import_gemma
from gemini_jax.data.encode import EncodeError
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.model import Gemini

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Small, with distinct sizes; head_dim 24 is not hidden_size / heads (16).
SHAPES = {"vocab_size": 331, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
          "num_attention_heads": 4, "head_dim": 24, "max_position_embeddings": 128, "rms_norm_eps": 1e-6,
          "rope_theta": 10_000.0}
KV_HEADS = {"mqa": 1, "mha": 4}
ATOL = 1e-4


@dataclasses.dataclass
class Converted:
    hf: "transformers.GemmaForCausalLM"
    hf_dir: Path
    run_dir: Path
    model: Gemini


def randomize(model, seed: int) -> None:
    """Weights that give logits of unit size or more (HF's own init gives logits near zero,
    where any mapping looks right) and non-zero norm scales (HF starts them at 0, where a
    swapped norm would hide). Block matrices get twice the fan-in scale: at 1x the residual
    stream keeps the input embedding, and a tied-embedding model just repeats its last token."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                std = 0.1
            elif "embed_tokens" in name:  # [V, D]: unit-size inputs after the sqrt(D) scale
                std = param.shape[1] ** -0.5
            else:  # nn.Linear [out, in]
                std = 2.0 * param.shape[1] ** -0.5
            param.copy_(torch.randn(param.shape, generator=generator) * std)


def make_hf(directory: Path, *, kv_heads: int, tokenizer: Path, seed: int = 0):
    config = transformers.GemmaConfig(**SHAPES, num_key_value_heads=kv_heads, hidden_act="gelu_pytorch_tanh")
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.GemmaForCausalLM(config).eval()
    randomize(model, seed)
    return save_hf(model, directory, tokenizer=tokenizer)


def params_of(model: Gemini) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def assert_same_params(a: Gemini, b: Gemini) -> None:
    pa, pb = params_of(a), params_of(b)
    assert jax.tree.structure(pa) == jax.tree.structure(pb)
    jax.tree.map(np.testing.assert_array_equal, pa, pb)


def text_batch(tokens: np.ndarray) -> dict[str, np.ndarray]:
    batch, length = tokens.shape
    return {
        "tokens": tokens.astype(np.int32),
        "segment_ids": np.ones((batch, length), np.int32),
        "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length)).copy(),
        "media_spans": np.zeros((batch, length), np.int32),
    }


@nnx.jit
def forward(model, batch):
    return model(batch).logits


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(tokens.astype(np.int64))).logits.numpy()


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
    texts = ["the quick brown fox jumps over the lazy dog, again and again\n" * 30,
             "def add(x, y):\n    return x + y  # 12345\n" * 30]
    # Laid out as Gemma's own (turn markers at other ids than ours, no media pieces).
    train_gemma_like_tokenizer(texts, vocab_size=320, path=path)
    assert Tokenizer.load(path).vocab_size <= SHAPES["vocab_size"]
    return path


@pytest.fixture(scope="module", params=sorted(KV_HEADS))
def converted(request, tmp_path_factory, tokenizer_path) -> Converted:
    root = tmp_path_factory.mktemp(request.param)
    hf = make_hf(root / "hf", kv_heads=KV_HEADS[request.param], tokenizer=tokenizer_path)
    config = import_gemma(root / "hf", root / "run")
    assert (config.num_kv_heads, config.head_dim, config.vision, config.audio) == (KV_HEADS[request.param], 24,
                                                                                    None, None)
    return Converted(hf=hf, hf_dir=root / "hf", run_dir=root / "run", model=load_run(root / "run"))


@pytest.fixture(scope="module")
def good_hf_dir(tmp_path_factory, tokenizer_path) -> Path:
    """A valid checkpoint directory that the error tests copy and then damage."""
    directory = tmp_path_factory.mktemp("good") / "hf"
    make_hf(directory, kv_heads=2, tokenizer=tokenizer_path)
    return directory


# -- agreement with transformers ---------------------------------------------------------------


def test_imported_logits_match_transformers(converted):
    tokens = np.random.default_rng(1).integers(0, SHAPES["vocab_size"], (2, 19))
    ours = np.asarray(forward(converted.model, text_batch(tokens)))
    theirs = hf_logits(converted.hf, tokens)
    assert np.std(theirs) > 0.5  # logits of real size, not a near-zero model where anything agrees
    difference = float(np.max(np.abs(ours - theirs)))
    print(f"max |logit difference| {converted.model.config.num_kv_heads} kv heads: {difference:.2e}")
    assert difference <= ATOL


def test_greedy_generation_matches_transformers(converted):
    prompt = np.random.default_rng(2).integers(9, SHAPES["vocab_size"], (1, 6))
    steps = 32
    with torch.no_grad():  # eos_token_id None: all 32 tokens, even where the model picks eos
        theirs = converted.hf.generate(torch.from_numpy(prompt.astype(np.int64)), do_sample=False,
                                       max_new_tokens=steps, eos_token_id=None, pad_token_id=0)
    theirs = theirs.numpy()[0, prompt.shape[1]:]
    assert theirs.shape == (steps,)

    ours = greedy_continuation(converted.model, text_batch(prompt), steps)
    np.testing.assert_array_equal(np.array(ours), theirs)
    assert len(set(ours)) > 8  # a real continuation, not one token repeated


def test_generate_on_an_imported_checkpoint_matches_transformers(converted, tmp_path):
    """`gemini-jax generate` on the imported run: its chat-template prompt, greedy, stopping at
    end of turn, gives the text of transformers' greedy continuation of the same ids."""
    tok = Tokenizer.load(converted.run_dir / "tokenizer.model")
    question = "def add(x, y):"
    prompt = [tok.bos_id, tok.start_of_turn_id, *tok.encode("user\n"), *tok.encode(question), tok.end_of_turn_id,
              *tok.encode("\n"), tok.start_of_turn_id, *tok.encode("model\n")]
    steps = 24
    # The checkpoint's table is padded past the tokenizer: neither side may pick those ids.
    assert tok.vocab_size < SHAPES["vocab_size"]
    padding = list(range(tok.vocab_size, SHAPES["vocab_size"]))
    with torch.no_grad():
        theirs = converted.hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=steps,
                                       eos_token_id=[tok.end_of_turn_id, tok.eos_id], pad_token_id=tok.pad_id,
                                       suppress_tokens=padding)
    continuation = [t for t in theirs.numpy()[0, len(prompt):].tolist() if t not in (tok.end_of_turn_id, tok.eos_id)]
    ours = gemini_jax.generate(str(converted.run_dir), question, max_new_tokens=steps)
    assert len(continuation) > 3 and ours == tok.decode(continuation)
    Image.new("RGB", (8, 8)).save(tmp_path / "image.png")
    with pytest.raises(EncodeError, match="vision"):
        gemini_jax.generate(str(converted.run_dir), "what is it?", images=[str(tmp_path / "image.png")])


def test_export_then_import_is_bit_exact_and_loads_in_transformers(converted, tmp_path):
    export_gemma(converted.run_dir, tmp_path / "hf")
    # The same tensors, bit for bit, as the checkpoint we imported (which ties lm_head away).
    exported = load_file(tmp_path / "hf" / "model.safetensors")
    original = load_file(converted.hf_dir / "model.safetensors")
    assert set(exported) == set(original) - {"lm_head.weight"}
    for name, value in exported.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, original[name], err_msg=name)
    assert (tmp_path / "hf" / "tokenizer.model").read_bytes() == (converted.hf_dir / "tokenizer.model").read_bytes()

    import_gemma(tmp_path / "hf", tmp_path / "run")
    assert checkpoint.read_config(tmp_path / "run") == checkpoint.read_config(converted.run_dir)
    assert_same_params(load_run(tmp_path / "run"), converted.model)

    hf = transformers.GemmaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    assert next(hf.parameters()).dtype == torch.float32
    tokens = np.random.default_rng(3).integers(0, SHAPES["vocab_size"], (2, 11))
    ours = np.asarray(forward(converted.model, text_batch(tokens)))
    difference = float(np.max(np.abs(hf_logits(hf, tokens) - ours)))
    print(f"max |logit difference| after export: {difference:.2e}")
    assert difference <= ATOL


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_shards_import_exactly(converted, tmp_path, dtype):
    half = copy.deepcopy(converted.hf).to(getattr(torch, dtype))
    half.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert len(list((tmp_path / "hf").glob("model-*-of-*.safetensors"))) > 1
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    shutil.copy(converted.hf_dir / "tokenizer.model", tmp_path / "hf")
    import_gemma(tmp_path / "hf", tmp_path / "run")
    model = load_run(tmp_path / "run")
    # Every half-precision value widens to float32 exactly.
    want = half.model.embed_tokens.weight.detach().float().numpy()
    np.testing.assert_array_equal(np.asarray(model.embedder.table[...]), want)
    q = half.model.layers[2].self_attn.q_proj.weight.detach().float().numpy()  # [N*H, D]
    np.testing.assert_array_equal(np.asarray(model.decoder.blocks[2].attn.q[...]),
                                  q.reshape(4, 24, 64).transpose(2, 0, 1))


# -- bad inputs --------------------------------------------------------------------------------


def _edit_config(directory: Path, **changes) -> None:
    values = json.loads((directory / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    (directory / "config.json").write_text(json.dumps(values))


def _edit_tensors(directory: Path, edit) -> None:
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def _truncate(directory: Path) -> None:
    data = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(data[: len(data) // 2])


def _shard_index_names_a_missing_file(directory: Path) -> None:
    names = load_file(directory / "model.safetensors")
    index = {"metadata": {}, "weight_map": {name: "model-00001-of-00002.safetensors" for name in names}}
    (directory / "model.safetensors").rename(directory / "model-00001-of-00002.safetensors")
    index["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors"
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


Q1 = "model.layers.1.self_attn.q_proj.weight"
UP2 = "model.layers.2.mlp.up_proj.weight"
BAD_INPUTS = {
    "no config.json": (lambda d: (d / "config.json").unlink(), ["config.json", "does not exist"]),
    "no tokenizer.model": (lambda d: (d / "tokenizer.model").unlink(), ["tokenizer.model", "does not exist"]),
    "no safetensors": (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"),
                       ["no safetensors", "model.safetensors", ".bin"]),
    "another architecture": (lambda d: _edit_config(d, architectures=["LlamaForCausalLM"], model_type="llama"),
                             ["config.json", "LlamaForCausalLM", "GemmaForCausalLM"]),
    "another activation": (lambda d: _edit_config(d, hidden_act="silu", hidden_activation=None),
                           ["config.json", "'silu'", "gelu_pytorch_tanh"]),
    "rope scaling": (lambda d: _edit_config(d, rope_scaling={"rope_type": "linear", "factor": 2.0}),
                     ["config.json", "rope_scaling", "linear"]),
    "heads do not divide": (lambda d: _edit_config(d, num_key_value_heads=3),
                            ["config.json", "num_key_value_heads (3)"]),
    "a wrong shape": (lambda d: _edit_tensors(d, lambda t: t.__setitem__(Q1, t[Q1][:-24])),
                      ["model.safetensors", Q1, "[72, 64]", "[96, 64]"]),
    "a wrong dtype": (lambda d: _edit_tensors(d, lambda t: t.__setitem__(UP2, t[UP2].astype(np.float64))),
                      ["model.safetensors", UP2, "F64", "bfloat16"]),
    "a missing tensor": (lambda d: _edit_tensors(d, lambda t: t.pop(UP2)), [UP2, "missing", "model.safetensors"]),
    "an unexpected tensor": (
        lambda d: _edit_tensors(d, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.bias",
                                                           np.zeros(96, np.float32))),
        ["model.safetensors", "model.layers.0.self_attn.q_proj.bias", "unexpected"]),
    "an untied output layer": (
        lambda d: _edit_tensors(d, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"] + 1)),
        ["lm_head.weight", "model.embed_tokens.weight"]),
    "architectures not a list": (lambda d: _edit_config(d, architectures=5), ["config.json", "architectures", "5"]),
    "a width that is a string": (lambda d: _edit_config(d, hidden_size="wide"), ["config.json", "hidden_size", "wide"]),
    "fifty million layers": (lambda d: _edit_config(d, num_hidden_layers=50_000_000),
                             ["config.json", "num_hidden_layers 50,000,000", "tensors"]),
    "a truncated file": (_truncate, ["model.safetensors", "truncated"]),
    "a missing shard": (_shard_index_names_a_missing_file,
                        ["model.safetensors.index.json", "model-00002-of-00002.safetensors"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_checkpoints_get_a_clear_error(case, good_hf_dir, tmp_path):
    damage, fragments = BAD_INPUTS[case]
    shutil.copytree(good_hf_dir, tmp_path / "hf")
    damage(tmp_path / "hf")
    with pytest.raises(ConversionError) as error:
        import_gemma(tmp_path / "hf", tmp_path / "run")
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))
    assert not (tmp_path / "run").exists()  # nothing is written from a bad checkpoint


def test_missing_directories_and_occupied_targets_are_refused(good_hf_dir, tmp_path):
    with pytest.raises(ConversionError, match="nowhere.*does not exist"):
        import_gemma(tmp_path / "nowhere", tmp_path / "run")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    with pytest.raises(ConversionError, match="occupied.*not an empty directory"):
        import_gemma(good_hf_dir, tmp_path / "occupied")


def test_legacy_gelu_name_means_the_tanh_approximation(good_hf_dir, tmp_path):
    # Gemma-1's first configs said "gelu" and were run with the tanh approximation.
    shutil.copytree(good_hf_dir, tmp_path / "hf")
    _edit_config(tmp_path / "hf", hidden_act="gelu", hidden_activation=None)
    assert import_gemma(tmp_path / "hf", tmp_path / "run").depth == 3


def _run_dir(path: Path, config, tokenizer: Path) -> Path:
    checkpoint.write_run_files(path, config=config, tokenizer_path=tokenizer)
    (path / checkpoint.CHECKPOINTS_DIR).mkdir()
    return path


def test_export_refuses_what_gemma_cannot_express(converted, tmp_path, tokenizer_path):
    multimodal = _run_dir(tmp_path / "mm", PRESETS["test"], tokenizer_path)
    with pytest.raises(ConversionError, match="vision and audio encoder"):
        export_gemma(multimodal, tmp_path / "out")
    prefix_lm = _run_dir(tmp_path / "plm", dataclasses.replace(PRESETS["test"].text_only,
                                                               prompt_attention="bidirectional"), tokenizer_path)
    with pytest.raises(ConversionError, match="causal"):
        export_gemma(prefix_lm, tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    with pytest.raises(ConversionError, match="not an empty directory"):
        export_gemma(converted.run_dir, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


# -- the command -------------------------------------------------------------------------------


def test_convert_command_imports_and_exports(converted, tmp_path, capsys):
    assert cli.main(["convert", "--from-hf", str(converted.hf_dir), "--to", str(tmp_path / "run")]) == 0
    assert_same_params(load_run(tmp_path / "run"), converted.model)
    assert cli.main(["convert", "--from", str(tmp_path / "run"), "--to-hf", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert "imported" in capsys.readouterr().out

    assert cli.main(["convert", "--from-hf", str(tmp_path / "nowhere"), "--to", str(tmp_path / "r")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert cli.main(["convert", "--from-hf", str(converted.hf_dir)]) == 2
    assert "--to RUN_DIR" in capsys.readouterr().err


def test_convert_help_explains_each_flag(capsys):
    assert cli.main(["convert", "--help"]) == 0  # the CLI returns argparse's exit code
    text = capsys.readouterr().out
    for flag in ("--from-hf", "--to", "--from", "--to-hf", "--step", "--dtype", "safetensors"):
        assert flag in text
