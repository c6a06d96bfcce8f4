"""A small NNX model's directory (the image tokenizer, the image scorer): a JSON record naming its
format and config, and its weights as one safetensors file, each parameter under its path in the
module ("down.0.conv.kernel"); both checked when read back."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemini_jax.checkpoint import CheckpointError
from gemini_jax.config import ConfigError

Config = TypeVar("Config")


def read_record(directory: str | os.PathLike, name: str, *, format: str, kind: str, hint: str,
                parse: Callable[[dict[str, Any]], Config]) -> tuple[dict[str, Any], Config]:
    """(record, config) of DIRECTORY/NAME, a JSON record of `format` whose "config" `parse` reads;
    a CheckpointError naming the `kind` of model and what is wrong (`hint`: how to make one)."""
    path = Path(directory) / name
    if not path.is_file():
        raise CheckpointError(f"{directory} is not an {kind}: {name} is missing ({hint})")
    try:
        record = json.loads(path.read_text())
        if record.get("format") != format:
            raise CheckpointError(f"{path}: format {record.get('format')!r}, expected {format!r}")
        return record, parse(record["config"])
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: not a readable {kind} config ({e})") from None


def flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
    """{"down.0.conv.kernel": array, ...}: every parameter, by its path in the module."""
    state = nnx.state(model, nnx.Param)
    return {".".join(str(k) for k in path): np.asarray(leaf) for path, leaf in nnx.to_flat_state(state)}


def save_weights(model: nnx.Module, path: str | os.PathLike, *, format: str) -> None:
    from safetensors.numpy import save_file

    save_file(flat_params(model), str(path), metadata={"format": format})


def load_weights(model: nnx.Module, path: str | os.PathLike) -> None:
    """Sets `model`'s parameters from `path`: every one must be there with its shape, none extra."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read this safetensors file, it may be truncated or damaged ({e})") from None
    wanted = flat_params(model)
    missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    if missing or extra:
        raise CheckpointError(f"{path}: weights do not match the config (missing: {missing or 'none'}; "
                              f"unexpected: {extra or 'none'})")
    wrong = [f"{k} {saved[k].shape}, expected {v.shape}" for k, v in wanted.items() if saved[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{path}: weights of the wrong shape for its config: {'; '.join(wrong)}")
    state = nnx.state(model, nnx.Param)
    flat = [(p, jnp.asarray(saved[".".join(str(k) for k in p)], leaf.dtype)) for p, leaf in nnx.to_flat_state(state)]
    nnx.update(model, nnx.from_flat_state(flat))
