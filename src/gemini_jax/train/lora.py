"""Training LoRA adapters (model/lora.py): only the adapters train; the base weights are frozen.

    lora = apply_lora(model, LoraConfig(rank=16, alpha=32.0), nnx.Rngs(0))
    trainer = LoraTrainer(lora, optimizer)        # the optimizer sees the adapters alone
    plain = merge_lora(trainer.model)

`start_lora` readies a LoRA run: its base (another run's parameters, recorded with their
digests in the run's lora.json, checkpoint.py) with adapters on it. A LoRA run's checkpoints
hold the adapters and their optimizer state only. `DPOTrainer` and `PolicyGradientTrainer`
train a LoRA policy with `trainable=nnx.LoRAParam`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax import checkpoint
from gemini_jax.model import Gemini
from gemini_jax.model.lora import (
    TARGETS,
    LoraConfig,
    LoraError,
    LoraWeight,
    adapter_state,
    apply_lora,
    check_adapters,
    freeze_base,
    load_adapter_state,
    lora_weights,
    merge_lora,
)
from gemini_jax.train.loss import TiedProjection
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.trainer import Trainer, scored_loss

__all__ = ["TARGETS", "LoraConfig", "LoraError", "LoraTrainer", "LoraWeight", "adapter_state", "apply_lora",
           "check_adapters", "freeze_base", "load_adapter_state", "lora_weights", "merge_lora",
           "refuse_lora_run", "start_lora"]


def start_lora(model: Gemini, config: LoraConfig, *, run_dir: str | os.PathLike, init_from: str | os.PathLike,
               seed: int = 0) -> Gemini:
    """`model` (built from `init_from`'s config) as a LoRA run in `run_dir` trains it: the base
    parameters of `init_from` with `config`'s adapters, the frozen matrices stored in the
    model's compute dtype.

    A new run loads `init_from`'s latest step and records it (path, step, digests of its
    parameters) with `config` in run_dir/lora.json; a resumed run loads the recorded step and
    refuses a base whose parameters changed, another `init_from` or other LoRA settings. The
    adapters start fresh here; resuming restores the trained ones.
    """
    record = checkpoint.read_lora(run_dir)
    if record is None:
        if checkpoint.has_checkpoints(run_dir):
            raise LoraError(f"{str(run_dir)!r} holds checkpoints of a run that is not a LoRA run: train the "
                            f"adapters into another --run-dir")
        step = checkpoint.load_params(init_from, model)
        checkpoint.write_lora(run_dir, lora=config.as_json(), base_run=init_from, base_step=step,
                              base_digests=checkpoint.param_digests(model))
    else:
        differences = [f"{key} {record['lora'].get(key)!r} -> {value!r}" for key, value in config.as_json().items()
                       if record["lora"].get(key) != value]
        if os.path.abspath(init_from) != record["base"]["run_dir"]:
            differences.append(f"base run {record['base']['run_dir']!r} -> {os.path.abspath(init_from)!r}")
        if differences:
            raise LoraError(f"{str(run_dir)!r} is a LoRA run with other settings ({'; '.join(differences)}): resume it "
                            f"with the flags it was started with, or train into another --run-dir")
        checkpoint.load_lora_base(run_dir, model, record)
    adapted = apply_lora(model, config, nnx.Rngs(seed))
    return freeze_base(adapted, jnp.dtype(str(model.config.dtype)))


def refuse_lora_run(run_dir: str | os.PathLike) -> None:
    """Raises LoraError if `run_dir` is a LoRA run: resuming it to train every weight would
    read its adapter-only checkpoints as a whole model's."""
    if checkpoint.read_lora(run_dir) is not None:
        raise LoraError(f"{str(run_dir)!r} is a LoRA run: resume it with the --lora-rank, --lora-alpha and "
                        f"--lora-targets it was started with")


class LoraTrainer(Trainer):
    """A Trainer of the adapters alone: the optimizer sees only the nnx.LoRAParams, and the
    base weights are a frozen input of each compiled step (an argument, never donated, so they
    stay bit-identical; not a constant, so a large base stays out of the executable)."""

    def __init__(self, model: Gemini, optimizer: OptimizerConfig, *, mesh: jax.sharding.Mesh | None = None,
                 logits_chunk_tokens: int | None = None):
        if not lora_weights(model):
            raise LoraError("LoraTrainer needs a model with adapters: apply_lora(model, LoraConfig(...), rngs) first")
        super().__init__(model, optimizer, mesh=mesh, logits_chunk_tokens=logits_chunk_tokens,
                         trainable=nnx.LoRAParam)

    def frozen_inputs(self) -> dict[str, Any]:
        return {"base": self.rest}

    def _loss(self, frozen, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        # copy=True: the base's Variables arrive as arguments of the jitted step, a trace level
        # above the gradient's, and a rematerialised block (nnx.remat) writes its Variables back
        # after the call, which nnx refuses across trace levels; fresh copies live at this one.
        model = nnx.merge(self.graphdef, params, frozen["base"], copy=True)
        project = TiedProjection(model.embedder.dtype, train_table=False)
        loss, count = scored_loss(model, batch, chunk_tokens=self.logits_chunk_tokens, project=project)
        return loss, {"loss_tokens": count}
