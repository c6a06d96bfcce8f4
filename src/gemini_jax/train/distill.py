"""Distillation: a student learns from a frozen teacher's token distributions.

    gemini-jax distill --teacher runs/demo --student-preset demo-half

At every scored position (the ones the cross-entropy reads) the student's loss is

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross-entropy

as in Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network"): a temperature T > 1
softens both distributions, so how the teacher ranks the wrong answers teaches too, and T^2
keeps the KL term's gradients on the cross-entropy's scale whatever T is.

`DistillTrainer` is a `Trainer` with that loss, so `trainer.train` runs it in the same loop
(checkpoints, resume, metrics, evaluation) on any data the trainer reads. The teacher runs
inside the same compiled step as the student: its state is an argument of the step, never
differentiated, never donated and never seen by the optimizer. Only the student is
checkpointed; a resumed run needs the same teacher again.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax import checkpoint, sharding
from gemini_jax.config import ConfigError, ModelConfig
from gemini_jax.model import Gemini
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.trainer import Trainer, masked_cross_entropy, model_inputs


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig:
    temperature: float = 2.0
    alpha: float = 0.5  # the KL term's share; 0 is plain training on the targets

    def __post_init__(self):
        if not self.temperature > 0:
            raise ConfigError(f"distillation temperature must be positive, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"distillation alpha must lie in [0, 1], got {self.alpha}")


# The config fields that decide how an example becomes a batch. The teacher reads the batches
# made for the student, so it must see them exactly as it saw its own in training.
DATA_FIELDS = ("vocab_size", "prompt_format", "prompt_attention", "image_token_id", "frame_token_id",
               "audio_token_id")
VISION_DATA_FIELDS = ("patch_size", "max_patches", "frame_max_patches", "max_grid", "keep_aspect_ratio",
                      "num_frames", "pooling", "image_soft_tokens", "frame_soft_tokens")
AUDIO_DATA_FIELDS = ("sample_rate", "max_seconds", "num_mels", "window_length", "hop_length", "subsampling",
                     "pooling")


def check_compatible(*, teacher: ModelConfig, student: ModelConfig) -> None:
    """Refuses a pair that cannot share batches: another vocabulary, a teacher encoder the
    student lacks, or media cut into other patches, soft tokens or mel frames."""
    if teacher.vocab_size != student.vocab_size:
        raise ConfigError(
            f"teacher and student must share one tokenizer: the teacher's vocab_size is {teacher.vocab_size}, "
            f"the student's {student.vocab_size} (distillation compares their distributions token by token)")
    for prefix, ours, theirs, fields in (("", student, teacher, DATA_FIELDS),
                                         ("vision.", student.vision, teacher.vision, VISION_DATA_FIELDS),
                                         ("audio.", student.audio, teacher.audio, AUDIO_DATA_FIELDS)):
        if theirs is None:
            continue
        if ours is None:
            raise ConfigError(f"the teacher has a {prefix[:-1]} encoder and the student has none: "
                              f"choose a student preset with the teacher's encoders")
        differ = {prefix + f: (getattr(theirs, f), getattr(ours, f)) for f in fields
                  if getattr(theirs, f) != getattr(ours, f)}
        if differ:
            raise ConfigError(f"teacher and student must read the same batches, but these fields differ "
                              f"(teacher, student): {differ}")


def kl_divergence(student_logits: jax.Array, teacher_logits: jax.Array, weights: jax.Array, *,
                  temperature: float | jax.Array) -> jax.Array:
    """KL(softmax(teacher / T) || softmax(student / T)) per position [..., V] -> mean over the
    positions by `weights`, in float32."""
    student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    per_position = jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)  # [...]
    weights = weights.astype(jnp.float32)
    return (per_position * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def scored_logits(model: Gemini, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Logits [B, K, V] at the batch's `loss_positions` only, as Trainer._loss computes them."""
    hidden = model(model_inputs(batch)).hidden  # [B, T, D]
    positions = batch["loss_positions"]  # [B, K]
    return model.embedder.decode(jnp.take_along_axis(hidden, positions[:, :, None], axis=1))


class DistillTrainer(Trainer):
    """A Trainer whose loss mixes the teacher's distributions with the targets (see the module
    docstring). `trainer.train(..., make_trainer=functools.partial(DistillTrainer, teacher=t))`.

    The step metrics add `kl` and `cross_entropy`, the two parts of `loss`, and metrics.jsonl
    logs them. A new `trainer.distill` takes effect at the next step, without compiling again.
    """

    logged_metrics = ("kl", "cross_entropy")

    def __init__(self, model: Gemini, optimizer: OptimizerConfig, *, teacher: Gemini,
                 distill: DistillConfig = DistillConfig(), mesh: jax.sharding.Mesh | None = None):
        check_compatible(teacher=teacher.config, student=model.config)
        super().__init__(model, optimizer, mesh=mesh)
        self.distill = distill
        self.teacher_graphdef, self.teacher_state = nnx.split(teacher)
        out_shardings = {}
        if mesh is not None:
            self.teacher_state = sharding.place(self.teacher_state,
                                                sharding.param_shardings(self.teacher_state, mesh))
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            out_shardings = {"out_shardings": (self.param_shardings, self.opt_shardings, replicated)}
        step = jax.jit(self._distill_step, donate_argnums=(1, 2), **out_shardings)
        loss = jax.jit(self._distill_loss)
        # Trainer.step calls _step_fn(params, opt_state, batch). The teacher's state and the
        # settings go in as inputs of every call, not as constants compiled into the program:
        # a large teacher stays out of the executable, and a new `self.distill` (a schedule
        # of alpha, say) runs the same compiled step.
        self._step_fn = lambda params, opt_state, batch: step(self._frozen_inputs(), params, opt_state, batch)
        self._loss_fn = lambda params, batch: loss(self._frozen_inputs(), params, batch)

    def _frozen_inputs(self) -> dict[str, Any]:
        return {"teacher": self.teacher_state, "alpha": jnp.float32(self.distill.alpha),
                "temperature": jnp.float32(self.distill.temperature)}

    def _distill_loss(self, frozen, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        student = nnx.merge(self.graphdef, params, self.rest)
        teacher = nnx.merge(self.teacher_graphdef, frozen["teacher"])
        student_logits = scored_logits(student, batch)  # [B, K, V]
        teacher_logits = jax.lax.stop_gradient(scored_logits(teacher, batch))  # [B, K, V]
        targets = jnp.take_along_axis(batch["targets"], batch["loss_positions"], axis=1)  # [B, K]
        weights = jnp.take_along_axis(batch["loss_mask"], batch["loss_positions"], axis=1)  # [B, K]
        cross_entropy, count = masked_cross_entropy(student_logits, targets, weights)
        temperature, alpha = frozen["temperature"], frozen["alpha"]
        kl = kl_divergence(student_logits, teacher_logits, weights, temperature=temperature)
        loss = alpha * temperature**2 * kl + (1 - alpha) * cross_entropy
        return loss, {"count": count, "kl": kl, "cross_entropy": cross_entropy}

    def _distill_step(self, frozen, params, opt_state, batch):
        (loss, parts), grads = jax.value_and_grad(
            lambda p: self._distill_loss(frozen, p, batch), has_aux=True)(params)
        params, opt_state, metrics = self._update(params, opt_state, (loss, parts["count"]), grads)
        return params, opt_state, {**metrics, "kl": parts["kl"], "cross_entropy": parts["cross_entropy"]}


def load_teacher(run_dir: str | os.PathLike) -> Gemini:
    """The teacher: the model of a run directory, its parameters from the latest checkpoint."""
    try:
        config = checkpoint.read_config(run_dir)
        teacher = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))  # shapes only, then restored
        checkpoint.load_params(run_dir, teacher)
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"teacher: {e}") from None
    return teacher

