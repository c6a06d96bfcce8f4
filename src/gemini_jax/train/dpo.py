"""DPO: a policy trained straight on preference pairs, against a frozen copy of where it started.

`DPOTrainer` is a `Trainer` whose loss is train/preference_loss.py's `dpo_loss`. The reference
is the starting policy's parameters, an argument of the compiled step (as a distillation
teacher is): never differentiated, never donated, never seen by the optimizer, and not
checkpointed: a resumed run rebuilds it from the same `--init-from` run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax.config import ConfigError
from gemini_jax.model import Gemini
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.preference_loss import dpo_loss, real_pairs, reply_log_probs
from gemini_jax.train.trainer import Trainer, frozen_model


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPOConfig:
    # How far the policy may move from the reference: the implicit reward's scale. 0.1 is the
    # DPO paper's usual setting.
    beta: float = 0.1

    def __post_init__(self):
        if not self.beta > 0:
            raise ConfigError(f"DPO beta must be positive, got {self.beta}")


class DPOTrainer(Trainer):
    """Trains `model` (the policy, starting at the reference's parameters) with the DPO loss on
    batches of pairs; logs the implicit reward's pairwise accuracy and mean margin."""

    logged_metrics = ("accuracy", "margin")

    def __init__(self, model: Gemini, optimizer: OptimizerConfig, *, reference: Gemini,
                 dpo: DPOConfig = DPOConfig(), mesh: jax.sharding.Mesh | None = None,
                 trainable: nnx.filterlib.Filter = nnx.Param):
        # trainable=nnx.LoRAParam trains a LoRA model's adapters alone (train/lora.py).
        super().__init__(model, optimizer, mesh=mesh, trainable=trainable)
        self.dpo = dpo
        self.reference_graphdef, self.reference_state = frozen_model(reference, mesh)

    def frozen_inputs(self) -> dict[str, Any]:
        return {"reference": self.reference_state, "beta": jnp.float32(self.dpo.beta), "rest": self.rest}

    def _loss(self, frozen, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        # The untrained rest (a LoRA model's frozen base) is an input, not a constant of the
        # step; copied Variables, as LoraTrainer's, for the rematerialised blocks.
        policy = reply_log_probs(nnx.merge(self.graphdef, params, frozen["rest"], copy=True), batch)
        reference = reply_log_probs(nnx.merge(self.reference_graphdef, frozen["reference"]), batch)
        real = real_pairs(batch)
        loss, metrics = dpo_loss(policy, reference, real, beta=frozen["beta"])
        return loss, {"loss_tokens": real.sum(), **metrics}
