"""Gemma-1 checkpoints in the Hugging Face layout <-> gemini-jax run directories.

    config = import_gemma("gemma-2b/", "runs/gemma-2b")     # HF directory -> run (checkpoint step 0)
    export_gemma("runs/gemma-2b", "gemma-2b-hf/")           # run -> HF directory (GemmaForCausalLM)

Our decoder is the Gemma-1 architecture, so a conversion is renaming and reshaping only
(D width, F MLP width, V vocabulary, N query heads, K key/value heads, H head dimension):

    HF tensor (model.layers.{i}.…)    HF shape   ours (decoder.blocks.{i}.…)   our shape
    model.embed_tokens.weight         [V, D]     embedder.table                [V, D]
    input_layernorm.weight            [D]        pre_attn_norm.scale           [D]
    self_attn.q_proj.weight           [N*H, D]   attn.q                        [D, N, H]
    self_attn.{k,v}_proj.weight       [K*H, D]   attn.{k,v}                    [D, K, H]
    self_attn.o_proj.weight           [D, N*H]   attn.o                        [N, H, D]
    post_attention_layernorm.weight   [D]        pre_mlp_norm.scale            [D]
    mlp.{gate,up}_proj.weight         [F, D]     mlp.{gate,up}                 [D, F]
    mlp.down_proj.weight              [D, F]     mlp.down                      [F, D]
    model.norm.weight                 [D]        decoder.final_norm.scale      [D]

Norm scales copy as they are: both store w and apply (1 + w). q and k need no permutation:
HF's Gemma port rotates the two halves of each head, as `apply_rope` does. The output layer
is the embedding in both (tied); an `lm_head.weight` equal to the embedding is accepted.

Weights are read with safetensors only (a pickled `.bin` can run code when loaded);
float32, bfloat16 and float16 tensors are all stored float32, which holds each exactly,
so an export followed by an import gives back the same bits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import sentencepiece as spm
from flax import nnx
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from gemini_jax import checkpoint
from gemini_jax.config import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    ConfigError,
    ModelConfig,
    config_to_dict,
)
from gemini_jax.model import Gemini

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

ARCHITECTURE = "GemmaForCausalLM"
MODEL_TYPE = "gemma"
# Gemma-1 was trained with the tanh approximation of gelu, but its first HF configs say
# hidden_act "gelu", so "gelu" with no `hidden_activation` field is read as that
# approximation (transformers 5 would run exact gelu for such a config: a small
# difference). A `hidden_activation` field, where present, names the function exactly.
TANH_GELU = "gelu_pytorch_tanh"
LEGACY_GELU = "gelu"
# safetensors dtype codes we read; all three widen to float32 exactly.
FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
TIED_HEAD = "lm_head.weight"


class ConversionError(ValueError):
    """A checkpoint directory or model that cannot be converted; the message names the file or tensor."""


# -- the tensor map --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One HF tensor and the parameter it becomes: `to_ours(hf)` and `to_hf(ours)` are inverses."""

    hf_name: str
    path: tuple[str | int, ...]  # in the pure dict of `nnx.state(model, nnx.Param)`
    hf_shape: tuple[int, ...]
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _transposed(x: np.ndarray) -> np.ndarray:
    return x.T


def _heads_in(heads: int, head_dim: int, width: int) -> tuple[Callable, Callable]:
    """HF [heads*H, D] (rows head-major, as `view(..., heads, H)` splits them) <-> ours [D, heads, H]."""
    return (
        lambda w: w.reshape(heads, head_dim, width).transpose(2, 0, 1),
        lambda p: p.transpose(1, 2, 0).reshape(heads * head_dim, width),
    )


def _heads_out(heads: int, head_dim: int, width: int) -> tuple[Callable, Callable]:
    """HF o_proj [D, N*H] <-> ours [N, H, D]."""
    return (
        lambda w: w.reshape(width, heads, head_dim).transpose(1, 2, 0),
        lambda p: p.transpose(2, 0, 1).reshape(width, heads * head_dim),
    )


def _tensors(config: ModelConfig, prefix: str = "model.") -> list[_Tensor]:
    """Every tensor of a GemmaForCausalLM with `config`'s shapes, in checkpoint order.
    `prefix` is where the Gemma model sits (PaliGemma's is "language_model.model.")."""
    D, F, V = config.width, config.mlp_dim, config.vocab_size
    N, K, H = config.num_heads, config.num_kv_heads, config.head_dim
    same, transposed = (_same, _same), (_transposed, _transposed)
    tensors = [_Tensor(prefix + "embed_tokens.weight", ("embedder", "table"), (V, D), *same)]
    for i in range(config.depth):
        hf, ours = f"{prefix}layers.{i}.", ("decoder", "blocks", i)
        tensors += [
            _Tensor(hf + "input_layernorm.weight", (*ours, "pre_attn_norm", "scale"), (D,), *same),
            _Tensor(hf + "self_attn.q_proj.weight", (*ours, "attn", "q"), (N * H, D), *_heads_in(N, H, D)),
            _Tensor(hf + "self_attn.k_proj.weight", (*ours, "attn", "k"), (K * H, D), *_heads_in(K, H, D)),
            _Tensor(hf + "self_attn.v_proj.weight", (*ours, "attn", "v"), (K * H, D), *_heads_in(K, H, D)),
            _Tensor(hf + "self_attn.o_proj.weight", (*ours, "attn", "o"), (D, N * H), *_heads_out(N, H, D)),
            _Tensor(hf + "post_attention_layernorm.weight", (*ours, "pre_mlp_norm", "scale"), (D,), *same),
            _Tensor(hf + "mlp.gate_proj.weight", (*ours, "mlp", "gate"), (F, D), *transposed),
            _Tensor(hf + "mlp.up_proj.weight", (*ours, "mlp", "up"), (F, D), *transposed),
            _Tensor(hf + "mlp.down_proj.weight", (*ours, "mlp", "down"), (D, F), *transposed),
        ]
    tensors.append(_Tensor(prefix + "norm.weight", ("decoder", "final_norm", "scale"), (D,), *same))
    return tensors


def _abstract_params(config: ModelConfig) -> dict[str, Any]:
    """The model's parameter tree as shapes (nothing allocated): the structure we must fill."""
    model = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _path_of(key_path: tuple) -> tuple[str | int, ...]:
    return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in key_path)


# -- the HF config -----------------------------------------------------------------------------


def _config_from_hf(values: dict[str, Any], *, source: Path, dtype: str) -> ModelConfig:
    """Our ModelConfig for a GemmaForCausalLM config.json (text only), or a ConversionError."""

    def refuse(why: str) -> ConversionError:
        return ConversionError(f"{source}: {why}")

    architectures = values.get("architectures") or []
    model_type = values.get("model_type")
    # Saved configs name the class; a hand-written one may give only the model type.
    supported = architectures == [ARCHITECTURE] if architectures else model_type == MODEL_TYPE
    if not supported:
        found = f"architectures {architectures}" if architectures else f"model_type {model_type!r}"
        raise refuse(f"{found} is not supported; accepted: architectures [{ARCHITECTURE!r}] "
                     f"or model_type {MODEL_TYPE!r} (Gemma-1)")
    if model_type not in (None, MODEL_TYPE):
        raise refuse(f"model_type {model_type!r} is not Gemma-1; accepted: {MODEL_TYPE!r}")
    if values.get("use_bidirectional_attention"):
        raise refuse("use_bidirectional_attention is true; this decoder is causal")
    return _decoder_config_from_hf(values, refuse=refuse, dtype=dtype)


def _decoder_config_from_hf(
    values: dict[str, Any], *, refuse: Callable[[str], ConversionError], dtype: str, **extra: Any
) -> ModelConfig:
    """Our ModelConfig for the fields of a Gemma-1 text config (`extra` adds ModelConfig fields)."""

    def integer(key: str, default: int | None = None) -> int:
        value = values.get(key, default)
        if value is None:
            raise refuse(f"lacks {key!r}, which a Gemma config needs")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise refuse(f"{key} must be a positive integer, got {value!r}")
        return value

    activation = values.get("hidden_activation")
    if activation is None:  # the older field; "gelu" there meant the tanh approximation
        activation = values.get("hidden_act", TANH_GELU)
        activation = TANH_GELU if activation == LEGACY_GELU else activation
    if activation != TANH_GELU:
        raise refuse(f"activation {activation!r} is not supported; accepted: {TANH_GELU!r} (tanh-approximated "
                     f"gelu, as Gemma-1 uses; hidden_act {LEGACY_GELU!r} with no hidden_activation means it too)")
    if values.get("attention_bias"):
        raise refuse("attention_bias is true; Gemma-1 and this model have no attention biases")
    if values.get("tie_word_embeddings", True) is False:
        raise refuse("tie_word_embeddings is false; this model's output layer is its embedding (tied)")

    rope_base = values.get("rope_theta")
    for key in ("rope_scaling", "rope_parameters"):  # transformers 4.x / 5.x
        rope = values.get(key)
        if rope is None:
            continue
        if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type", "default")) != "default":
            raise refuse(f"{key} {rope!r} is not supported; accepted: null or rope_type 'default'")
        rope_base = rope.get("rope_theta", rope_base)
    rope_base = 10_000.0 if rope_base is None else rope_base
    if not isinstance(rope_base, (int, float)) or isinstance(rope_base, bool) or rope_base <= 0:
        raise refuse(f"rope_theta must be a positive number, got {rope_base!r}")
    norm_eps = values.get("rms_norm_eps", 1e-6)
    if not isinstance(norm_eps, (int, float)) or isinstance(norm_eps, bool) or norm_eps <= 0:
        raise refuse(f"rms_norm_eps must be a positive number, got {norm_eps!r}")

    width, num_heads = integer("hidden_size"), integer("num_attention_heads")
    num_kv_heads = integer("num_key_value_heads")
    if num_heads % num_kv_heads:
        raise refuse(f"num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})")
    try:
        return ModelConfig(
            vocab_size=integer("vocab_size"),
            width=width,
            depth=integer("num_hidden_layers"),
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            # Configs written before head_dim was a field use D / N, as HF does.
            head_dim=integer("head_dim", width // num_heads),
            mlp_dim=integer("intermediate_size"),
            max_seq_len=integer("max_position_embeddings", 8192),
            rope_base=float(rope_base),
            norm_eps=float(norm_eps),
            dtype=dtype,
            **extra,
        )
    except ConfigError as e:
        raise refuse(str(e)) from None


def _config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """A GemmaConfig as JSON; readable by transformers 4.x (rope_theta) and 5.x (rope_parameters)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.width,
        "intermediate_size": config.mlp_dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": TANH_GELU,
        "hidden_activation": TANH_GELU,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "bos_token_id": BOS_ID,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": "float32",  # transformers 4.x; 5.x reads "dtype"
        "dtype": "float32",
    }


def _refuse_unexpressible(config: ModelConfig, *, source: Path) -> None:
    """A GemmaForCausalLM is a causal text decoder: anything more has no place in its config."""
    encoders = [name for name in ("vision", "audio") if getattr(config, name) is not None]
    if encoders:
        raise ConversionError(
            f"{source}: the model has {' and '.join(encoders)} encoder(s), which a Gemma-1 checkpoint cannot "
            f"hold; only text-only models (vision and audio None) export to {ARCHITECTURE}"
        )
    if config.prompt_attention != "causal":
        raise ConversionError(
            f"{source}: prompt_attention is {config.prompt_attention!r}; {ARCHITECTURE} is causal, so only "
            f"'causal' models export"
        )


# -- reading -----------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConversionError(f"{path} does not exist; a Hugging Face Gemma directory needs it")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(values).__name__}")
    return values


def _check_tokenizer(path: Path, *, vocab_size: int) -> None:
    if not path.is_file():
        raise ConversionError(f"{path} does not exist; the run needs the checkpoint's SentencePiece tokenizer")
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(path.read_bytes())
    except (RuntimeError, OSError) as e:
        raise ConversionError(f"{path}: not a SentencePiece model ({e})") from None
    if processor.get_piece_size() > vocab_size:
        raise ConversionError(
            f"{path} has {processor.get_piece_size()} pieces, more than the model's vocab_size {vocab_size}"
        )


def _weight_files(hf_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: those its index lists, or model.safetensors, or shards."""
    index = hf_dir / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ConversionError(f"{index}: expected a non-empty 'weight_map' of tensor name -> file")
        names = sorted(set(weight_map.values()))
        for name in names:
            if not (hf_dir / name).is_file():
                raise ConversionError(f"{index} lists {name!r}, which does not exist in {hf_dir}")
        return [hf_dir / name for name in names]
    if (hf_dir / WEIGHTS_FILE).is_file():
        return [hf_dir / WEIGHTS_FILE]
    shards = sorted(hf_dir.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    hint = ""
    if any(hf_dir.glob("*.bin")) or any(hf_dir.glob("*.pth")):
        hint = ("; pickled .bin/.pth weights are not read (loading pickle can run code): re-save the model "
                "with transformers' save_pretrained, which writes safetensors")
    raise ConversionError(
        f"{hf_dir} holds no safetensors weights: expected {WEIGHTS_FILE}, or model-*-of-*.safetensors shards "
        f"with {INDEX_FILE}{hint}"
    )


def _require_new_or_empty(path: Path, advice: str) -> None:
    """Conversions never write over anything: the target must not exist or be an empty directory."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConversionError(f"{str(path)!r} already exists and is not an empty directory; {advice}")


def _safetensors_error(path: Path, error: Exception) -> ConversionError:
    return ConversionError(f"{path}: cannot read this safetensors file, it may be truncated or damaged ({error})")


def _read_tensors(
    files: list[Path], expected: dict[str, tuple[int, ...]], *, model: str = f"Gemma-1 {ARCHITECTURE}",
    embedding: str = "model.embed_tokens.weight", rename: Callable[[str], str | None] = _same,
) -> dict[str, np.ndarray]:
    """Every expected tensor as float32, after checking all names, dtypes and shapes in the
    headers first, so a bad tensor is reported before gigabytes are read. `rename` maps a
    file's tensor names onto the expected ones (older layouts), or to None for tensors the
    model never uses, which are skipped; errors name tensors as stored.
    `TIED_HEAD`, if present, must equal `embedding` and is dropped."""
    where: dict[str, Path] = {}
    for path in files:
        try:
            with safe_open(path, framework="np") as f:
                for stored in f.keys():
                    name = rename(stored)
                    if name is None:
                        continue
                    tensor = f.get_slice(stored)
                    dtype, shape = tensor.get_dtype(), tuple(tensor.get_shape())
                    if name not in expected:
                        raise ConversionError(
                            f"{path}: unexpected tensor {stored!r}: a {model} as config.json "
                            f"describes it has no such tensor (a bias, an extra layer, another architecture?)"
                        )
                    if dtype not in FLOAT_DTYPES:
                        accepted = ", ".join(f"{code} ({numpy_name})" for code, numpy_name in FLOAT_DTYPES.items())
                        raise ConversionError(f"{path}: tensor {stored!r} has dtype {dtype}; accepted: {accepted}")
                    if shape != expected[name]:
                        raise ConversionError(f"{path}: tensor {stored!r} has shape {list(shape)}, expected "
                                              f"{list(expected[name])} from config.json")
                    where[name] = path
        except SafetensorError as e:
            raise _safetensors_error(path, e) from None
    missing = [name for name in expected if name not in where and name != TIED_HEAD]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ConversionError(f"tensor {missing[0]!r}{more} missing from {', '.join(str(p) for p in files)}")

    tensors = {}
    for path in files:
        try:
            # safetensors gives bfloat16 as ml_dtypes' numpy dtype, which widens exactly.
            with safe_open(path, framework="np") as f:
                for stored in f.keys():
                    if (name := rename(stored)) is not None:
                        tensors[name] = np.asarray(f.get_tensor(stored)).astype(np.float32)
        except SafetensorError as e:
            raise _safetensors_error(path, e) from None
    head = tensors.pop(TIED_HEAD, None)
    if head is not None and not np.array_equal(head, tensors[embedding]):
        raise ConversionError(f"{where[TIED_HEAD]}: {TIED_HEAD!r} differs from {embedding}; "
                              f"this model ties its output layer to the embedding, so it cannot hold both")
    return tensors


def import_gemma(hf_dir: str | os.PathLike, run_dir: str | os.PathLike, *, dtype: str = "float32") -> ModelConfig:
    """Converts a Hugging Face Gemma-1 directory into a new run directory; returns its config.

    `hf_dir` holds config.json (GemmaForCausalLM), tokenizer.model and the weights in
    safetensors (model.safetensors, or shards with model.safetensors.index.json). The run
    gets the text-only ModelConfig, the tokenizer, and a checkpoint at step 0 holding the
    parameters in float32; `dtype` is the run's compute dtype. Nothing is written unless
    every input checks out. Raises ConversionError naming the bad file or tensor.
    """
    return _import_run(hf_dir, run_dir, dtype=dtype, config_from_hf=_config_from_hf, tensors_for=_tensors,
                       architecture=ARCHITECTURE, model=f"Gemma-1 {ARCHITECTURE}")


def _import_run(
    hf_dir: str | os.PathLike, run_dir: str | os.PathLike, *, dtype: str,
    config_from_hf: Callable[..., ModelConfig], tensors_for: Callable[[ModelConfig], list[_Tensor]],
    architecture: str, model: str, embedding: str = "model.embed_tokens.weight",
    rename: Callable[[str], str | None] = _same,
) -> ModelConfig:
    """The import every architecture shares: check the directory, the config (read by
    `config_from_hf`) and the tokenizer, read the tensors `tensors_for(config)` names, then
    write the run. Nothing is written unless every input checks out."""
    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    if not hf_dir.is_dir():
        raise ConversionError(f"Hugging Face directory {str(hf_dir)!r} does not exist")
    _require_new_or_empty(run_dir, "import into a new run directory")
    config_path = hf_dir / CONFIG_FILE
    config = config_from_hf(_read_json(config_path), source=config_path, dtype=dtype)
    _check_tokenizer(hf_dir / TOKENIZER_FILE, vocab_size=config.vocab_size)

    specs = tensors_for(config)
    expected = {spec.hf_name: spec.hf_shape for spec in specs}
    expected[TIED_HEAD] = (config.vocab_size, config.width)
    tensors = _read_tensors(_weight_files(hf_dir), expected, model=model, embedding=embedding, rename=rename)
    _write_run(run_dir, config=config, specs=specs, tensors=tensors, hf_dir=hf_dir,
               source=f"huggingface {architecture}")
    return config


def _write_run(run_dir: Path, *, config: ModelConfig, specs: list[_Tensor], tensors: dict[str, np.ndarray],
               hf_dir: Path, source: str) -> None:
    """Fills every parameter of `config`'s model from `tensors` (emptied on the way) and writes
    the run: config, the directory's tokenizer.model and an Orbax checkpoint at step 0."""
    by_path = {spec.path: spec for spec in specs}

    def fill(key_path: tuple, like: jax.ShapeDtypeStruct) -> np.ndarray:
        spec = by_path[_path_of(key_path)]
        # pop: each HF tensor is freed once converted, so peak memory stays near one model.
        value = np.ascontiguousarray(spec.to_ours(tensors.pop(spec.hf_name)))
        assert value.shape == like.shape, (spec.hf_name, value.shape, like.shape)  # a bug in _tensors if not
        return value

    params = jax.tree_util.tree_map_with_path(fill, _abstract_params(config))
    checkpoint.write_run_files(run_dir, config=config, tokenizer_path=hf_dir / TOKENIZER_FILE)
    saver = checkpoint.Checkpointer(run_dir, async_save=False)
    saver.save(0, state={"params": params}, meta={
        "step": 0, "model_config": config_to_dict(config),
        "source": {"format": source, "path": str(hf_dir.absolute())},
    })
    saver.wait()
    saver.close()


# -- writing -----------------------------------------------------------------------------------


def export_gemma(run_dir: str | os.PathLike, hf_dir: str | os.PathLike, *, step: int | None = None) -> int:
    """Writes a run's parameters as a Hugging Face Gemma-1 directory; returns the step exported.

    `hf_dir` (new or empty) gets config.json (GemmaForCausalLM), model.safetensors
    (float32) and the run's tokenizer.model. The checkpoint is the latest unless `step`
    is given. Models with media encoders or bidirectional prompts are refused: Gemma-1
    cannot express them.
    """
    run_dir, hf_dir = Path(run_dir), Path(hf_dir)
    _require_new_or_empty(hf_dir, "export into a new directory")
    config = checkpoint.read_config(run_dir)
    _refuse_unexpressible(config, source=run_dir / checkpoint.CONFIG_FILE)
    if checkpoint.read_quantization(run_dir) is not None:
        raise ConversionError(f"{str(run_dir)!r} is a quantized run; export the float run it was made from")
    model = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
    step = checkpoint.load_params(run_dir, model, step=step)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def lookup(path: tuple[str | int, ...]) -> np.ndarray:
        node = params
        for key in path:
            node = node[key]
        return np.asarray(node, np.float32)

    # Contiguous copies: safetensors writes raw buffers, and a transposed view is not one.
    tensors = {spec.hf_name: np.ascontiguousarray(spec.to_hf(lookup(spec.path))) for spec in _tensors(config)}
    hf_dir.mkdir(parents=True, exist_ok=True)
    # transformers refuses safetensors files whose metadata does not name a framework.
    save_file(tensors, hf_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    (hf_dir / CONFIG_FILE).write_text(json.dumps(_config_to_hf(config), indent=2) + "\n")
    shutil.copyfile(checkpoint.tokenizer_path(run_dir), hf_dir / TOKENIZER_FILE)
    return step
