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

Weights are read with safetensors only (convert/hf_dir.py) and stored float32, which holds
float32, bfloat16 and float16 exactly, so an export followed by an import gives back the same
bits. The modules beside this one hold the parts PaliGemma shares: hf_dir.py reads a directory,
tensor_map.py maps tensors, gemma_config.py maps the config.
"""

from __future__ import annotations

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from gemini_jax import checkpoint
from gemini_jax.config import ModelConfig, config_to_dict
from gemini_jax.convert.gemma_config import (
    ARCHITECTURE,
    MODEL_TYPE,
    config_from_hf,
    config_to_hf,
    refuse_unexpressible,
)
from gemini_jax.convert.hf_dir import (
    CONFIG_FILE,
    TIED_HEAD,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    ConversionError,
    check_tokenizer,
    read_json,
    read_tensors,
    require_new_or_empty,
    stored_tensor_count,
    weight_files,
)
from gemini_jax.convert.tensor_map import TensorSpec, abstract_params, decoder_tensors, path_of, same
from gemini_jax.model import Gemini

__all__ = ["ARCHITECTURE", "MODEL_TYPE", "ConversionError", "export_gemma", "import_gemma", "import_run"]


def import_gemma(hf_dir: str | os.PathLike, run_dir: str | os.PathLike, *, dtype: str = "float32") -> ModelConfig:
    """Converts a Hugging Face Gemma-1 directory into a new run directory; returns its config.

    `hf_dir` holds config.json (GemmaForCausalLM), tokenizer.model and the weights in
    safetensors (model.safetensors, or shards with model.safetensors.index.json). The run
    gets the text-only ModelConfig, the tokenizer, and a checkpoint at step 0 holding the
    parameters in float32; `dtype` is the run's compute dtype. Nothing is written unless
    every input checks out. Raises ConversionError naming the bad file or tensor.
    """
    return import_run(hf_dir, run_dir, dtype=dtype, config_from_hf=config_from_hf, tensors_for=decoder_tensors,
                      architecture=ARCHITECTURE, model=f"Gemma-1 {ARCHITECTURE}")


def import_run(
    hf_dir: str | os.PathLike, run_dir: str | os.PathLike, *, dtype: str,
    config_from_hf: Callable[..., ModelConfig], tensors_for: Callable[[ModelConfig], list[TensorSpec]],
    architecture: str, model: str, embedding: str = "model.embed_tokens.weight",
    rename: Callable[[str], str | None] = same,
) -> ModelConfig:
    """The import every architecture shares: check the directory, the config (read by
    `config_from_hf`) and the tokenizer, read the tensors `tensors_for(config)` names, then
    write the run. Nothing is written unless every input checks out."""
    hf_dir, run_dir = Path(hf_dir), Path(run_dir)
    if not hf_dir.is_dir():
        raise ConversionError(f"Hugging Face directory {str(hf_dir)!r} does not exist")
    require_new_or_empty(run_dir, "import into a new run directory")
    config_path = hf_dir / CONFIG_FILE
    config = config_from_hf(read_json(config_path), source=config_path, dtype=dtype)
    check_tokenizer(hf_dir / TOKENIZER_FILE, vocab_size=config.vocab_size)
    files = weight_files(hf_dir)
    stored = stored_tensor_count(files)
    # Every layer stores several tensors: a depth above the count is a wrong config.json, and
    # listing its tensors would take minutes and all memory before any tensor is read.
    if config.depth > stored:
        raise ConversionError(f"{config_path}: num_hidden_layers {config.depth:,} cannot be: the weight files hold "
                              f"{stored:,} tensors in all, and each layer has several")

    specs = tensors_for(config)
    expected = {spec.hf_name: spec.hf_shape for spec in specs}
    expected[TIED_HEAD] = (config.vocab_size, config.width)
    tensors = read_tensors(files, expected, model=model, embedding=embedding, rename=rename)
    _write_run(run_dir, config=config, specs=specs, tensors=tensors, hf_dir=hf_dir,
               source=f"huggingface {architecture}")
    return config


def _write_run(run_dir: Path, *, config: ModelConfig, specs: list[TensorSpec], tensors: dict[str, np.ndarray],
               hf_dir: Path, source: str) -> None:
    """Fills every parameter of `config`'s model from `tensors` (emptied on the way) and writes
    the run: config, the directory's tokenizer.model and an Orbax checkpoint at step 0."""
    by_path = {spec.path: spec for spec in specs}

    def fill(key_path: tuple, like: jax.ShapeDtypeStruct) -> np.ndarray:
        spec = by_path[path_of(key_path)]
        # pop: each HF tensor is freed once converted, so peak memory stays near one model.
        value = np.ascontiguousarray(spec.to_ours(tensors.pop(spec.hf_name)))
        assert value.shape == like.shape, (spec.hf_name, value.shape, like.shape)  # a bug in the tensor map if not
        return value

    params = jax.tree_util.tree_map_with_path(fill, abstract_params(config))
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
    require_new_or_empty(hf_dir, "export into a new directory")
    config = checkpoint.read_config(run_dir)
    refuse_unexpressible(config, source=run_dir / checkpoint.CONFIG_FILE)
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
    tensors = {spec.hf_name: np.ascontiguousarray(spec.to_hf(lookup(spec.path))) for spec in decoder_tensors(config)}
    hf_dir.mkdir(parents=True, exist_ok=True)
    # transformers refuses safetensors files whose metadata does not name a framework.
    save_file(tensors, hf_dir / WEIGHTS_FILE, metadata={"format": "pt"})
    (hf_dir / CONFIG_FILE).write_text(json.dumps(config_to_hf(config), indent=2) + "\n")
    shutil.copyfile(checkpoint.tokenizer_path(run_dir), hf_dir / TOKENIZER_FILE)
    return step
