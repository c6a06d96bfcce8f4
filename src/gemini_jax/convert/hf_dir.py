"""A Hugging Face checkpoint directory, read with every check first: config.json, the
SentencePiece tokenizer and safetensors weights. Errors name the file or tensor at fault.

Weights are read with safetensors only (a pickled `.bin` can run code when loaded);
float32, bfloat16 and float16 tensors are all stored float32, which holds each exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
from safetensors import SafetensorError, safe_open

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# safetensors dtype codes we read; all three widen to float32 exactly.
FLOAT_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
TIED_HEAD = "lm_head.weight"


class ConversionError(ValueError):
    """A checkpoint directory or model that cannot be converted; the message names the file or tensor."""


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConversionError(f"{path} does not exist; a Hugging Face Gemma directory needs it")
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise ConversionError(f"{path}: expected a JSON object, got {type(values).__name__}")
    return values


def check_tokenizer(path: Path, *, vocab_size: int) -> None:
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


def weight_files(hf_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: those its index lists, or model.safetensors, or shards."""
    index = hf_dir / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
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


def require_new_or_empty(path: Path, advice: str) -> None:
    """Conversions never write over anything: the target must not exist or be an empty directory."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConversionError(f"{str(path)!r} already exists and is not an empty directory; {advice}")


def _safetensors_error(path: Path, error: Exception) -> ConversionError:
    return ConversionError(f"{path}: cannot read this safetensors file, it may be truncated or damaged ({error})")


def architectures(values: dict[str, Any], *, source: Path) -> list[str]:
    """config.json's "architectures": a list of class names (absent: none)."""
    found = values.get("architectures") or []
    if not isinstance(found, list) or not all(isinstance(name, str) for name in found):
        raise ConversionError(f"{source}: \"architectures\" must be a list of class names, e.g. "
                              f"[\"GemmaForCausalLM\"], got {found!r:.80}")
    return found


def stored_tensor_count(files: list[Path]) -> int:
    """How many tensors the weight files hold, from their headers alone."""
    count = 0
    for path in files:
        try:
            with safe_open(path, framework="np") as f:
                count += len(f.keys())
        except SafetensorError as e:
            raise _safetensors_error(path, e) from None
    return count


def read_tensors(
    files: list[Path], expected: dict[str, tuple[int, ...]], *, model: str, embedding: str,
    rename: Callable[[str], str | None],
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
