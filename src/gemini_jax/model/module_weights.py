"""The weights of a small NNX model (the image tokenizer, the image scorer) as one safetensors file,
each parameter under its path in the module ("down.0.conv.kernel"), checked when read back."""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemini_jax.checkpoint import CheckpointError


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
