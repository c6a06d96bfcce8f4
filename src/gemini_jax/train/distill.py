"""Distillation: a student learns from a frozen teacher's token distributions.

    gemini-jax distill --teacher runs/demo --student-preset demo-half

At every scored position (the ones the cross-entropy reads) the student's loss is

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross-entropy

as in Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network"): a temperature T > 1
softens both distributions, so how the teacher ranks the wrong answers teaches too, and T^2
keeps the KL term's gradients on the cross-entropy's scale whatever T is.

`DistillTrainer` is a `Trainer` with that loss, so `train()` (loop.py) runs it in the same loop
(checkpoints, resume, metrics, evaluation) on any data the trainer reads. The teacher runs
inside the same compiled step as the student: its state is an argument of the step, never
differentiated, never donated and never seen by the optimizer. Only the student is
checkpointed; a resumed run needs the same teacher again.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from gemini_jax import checkpoint
from gemini_jax.config import ConfigError, ModelConfig
from gemini_jax.model import Gemini
from gemini_jax.model.layers import tied_logits
from gemini_jax.train.batches import model_inputs
from gemini_jax.train.loss import Project, logits_chunk_tokens, masked_cross_entropy
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.trainer import Trainer, frozen_model


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


def scored_hidden(model: Gemini, batch: Mapping[str, jax.Array]) -> jax.Array:
    """Final hidden states [B, K, D] at the batch's `loss_positions` only."""
    hidden = model(model_inputs(batch)).hidden  # [B, T, D]
    return jnp.take_along_axis(hidden, batch["loss_positions"][:, :, None], axis=1)


def distill_loss_parts(student_hidden: jax.Array, teacher_hidden: jax.Array, targets: jax.Array,
                       weights: jax.Array, *, student_table: jax.Array, teacher_table: jax.Array,
                       project: Project, teacher_project: Project | None = None, temperature: jax.Array,
                       alpha: jax.Array, chunk_tokens: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The distillation loss at scored positions and its parts {"count", "kl", "cross_entropy"}.

    hidden [B, K, D] of each model (the teacher's is not differentiated), targets and weights
    [B, K], each model's output table and projection (`teacher_project` None: `project`). Up
    to `chunk_tokens` positions (default: as many as the cross-entropy projects at once,
    train/loss.py) the logits are computed whole and autodiff differentiates them; beyond,
    both models' logits are projected a chunk at a time and the student's gradients computed
    inside the chunk, so no [B, K, V] logits ever exist (a 256K vocabulary over 8 rows of
    2,048 scored tokens is 17 GB per model).
    """
    batch, scored, _ = student_hidden.shape
    vocab = student_table.shape[0]
    chunk = chunk_tokens or logits_chunk_tokens(vocab)
    weights = weights.astype(jnp.float32)
    count = weights.sum()
    teacher_hidden, teacher_table = jax.lax.stop_gradient((teacher_hidden, teacher_table))
    teacher_project = teacher_project or project
    if batch * scored <= chunk:
        student_logits = project(student_table, student_hidden)
        cross_entropy = masked_cross_entropy(student_logits, targets, weights)[0]
        teacher_logits = teacher_project(teacher_table, teacher_hidden)
        kl = kl_divergence(student_logits, teacher_logits, weights, temperature=temperature)
        loss = alpha * temperature**2 * kl + (1 - alpha) * cross_entropy
    else:
        num = batch * scored
        pad = -num % chunk

        def chunks(x):  # [B, K, ...] -> [n, 1, chunk, ...], padded positions weigh 0
            x = x.reshape(num, *x.shape[2:])
            return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape(-1, 1, chunk, *x.shape[1:])

        loss_sum, kl_sum, ce_sum = _chunked_sums(
            (project, teacher_project), student_table, teacher_table, chunks(student_hidden), chunks(teacher_hidden), chunks(targets),
            chunks(weights), temperature, alpha)
        kl_sum, ce_sum = jax.lax.stop_gradient((kl_sum, ce_sum))
        denominator = jnp.maximum(count, 1.0)
        loss, kl, cross_entropy = loss_sum / denominator, kl_sum / denominator, ce_sum / denominator
    return loss, {"count": count, "kl": kl, "cross_entropy": cross_entropy}


def _chunk_terms(student, teacher, t, w, temperature):
    """One chunk's weighted KL and cross-entropy sums from both models' logits [1, c, V], and
    the student logits' gradients of each."""
    student, teacher = student.astype(jnp.float32), teacher.astype(jnp.float32)
    soft_student = jax.nn.log_softmax(student / temperature, axis=-1)
    soft_teacher = jax.nn.log_softmax(teacher / temperature, axis=-1)
    log_probs = jax.nn.log_softmax(student, axis=-1)
    kl = jnp.sum(jnp.exp(soft_teacher) * (soft_teacher - soft_student), axis=-1) * w  # [1, c]
    ce = -jnp.take_along_axis(log_probs, t[..., None], axis=-1)[..., 0] * w
    # d KL / d student = (softmax(student / T) - softmax(teacher / T)) / T;
    # d CE / d student = softmax(student) - one_hot(target); both weighted per position.
    d_kl = (jnp.exp(soft_student) - jnp.exp(soft_teacher)) / temperature * w[..., None]
    d_ce = (jnp.exp(log_probs) - jax.nn.one_hot(t, student.shape[-1], dtype=jnp.float32)) * w[..., None]
    return kl.sum(), ce.sum(), d_kl, d_ce


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_sums(projects, student_table, teacher_table, student_chunks, teacher_chunks, target_chunks,
                  weight_chunks, temperature, alpha):
    """Sums over chunks [n, 1, c, ...] of the weighted (alpha T^2 KL + (1 - alpha) CE, KL, CE).

    Differentiable in the first sum only, with respect to the student's table and hidden
    states: the other two are its parts, for reporting (callers stop their gradients)."""
    def body(sums, chunk):
        h, g, t, w = chunk
        kl, ce, _, _ = _chunk_terms(projects[0](student_table, h), projects[1](teacher_table, g), t, w, temperature)
        return (sums[0] + alpha * temperature**2 * kl + (1 - alpha) * ce, sums[1] + kl, sums[2] + ce), None

    zero = (jnp.zeros((), jnp.float32),) * 3
    return jax.lax.scan(body, zero, (student_chunks, teacher_chunks, target_chunks, weight_chunks))[0]


def _chunked_sums_fwd(projects, student_table, teacher_table, student_chunks, teacher_chunks, target_chunks,
                      weight_chunks, temperature, alpha):
    def body(carry, chunk):
        loss_sum, kl_sum, ce_sum, table_grad = carry
        h, g, t, w = chunk
        # The student's logits once, kept with their pullback for the chunk's gradients.
        student, pullback = jax.vjp(projects[0], student_table, h)
        kl, ce, d_kl, d_ce = _chunk_terms(student, projects[1](teacher_table, g), t, w, temperature)
        d_table, d_hidden = pullback(alpha * temperature**2 * d_kl + (1 - alpha) * d_ce)
        loss = alpha * temperature**2 * kl + (1 - alpha) * ce
        return (loss_sum + loss, kl_sum + kl, ce_sum + ce, table_grad + d_table), d_hidden

    zero = (jnp.zeros((), jnp.float32),) * 3 + (jnp.zeros_like(student_table),)
    (loss_sum, kl_sum, ce_sum, table_grad), hidden_grad = jax.lax.scan(
        body, zero, (student_chunks, teacher_chunks, target_chunks, weight_chunks))
    return (loss_sum, kl_sum, ce_sum), (table_grad, hidden_grad)


def _chunked_sums_bwd(projects, residuals, cotangents):
    del projects
    table_grad, hidden_grad = residuals
    scale = cotangents[0]  # the parts' cotangents are zero: their gradients are stopped
    # None: the teacher, the targets, the weights and the settings are not trained.
    return ((table_grad * scale).astype(table_grad.dtype), None, (hidden_grad * scale).astype(hidden_grad.dtype),
            None, None, None, None, None)


_chunked_sums.defvjp(_chunked_sums_fwd, _chunked_sums_bwd)


class DistillTrainer(Trainer):
    """A Trainer whose loss mixes the teacher's distributions with the targets (see the module
    docstring). `train(..., make_trainer=functools.partial(DistillTrainer, teacher=t))`.

    Only the loss differs: the teacher's state and the settings are its `frozen_inputs`, so
    every program of the Trainer (the step, the replayed step of the SDC check, `lower` on an
    abstract mesh) runs the distillation loss. The step metrics add `kl` and `cross_entropy`,
    the two parts of `loss`, and metrics.jsonl logs them. A new `trainer.distill` takes
    effect at the next step, without compiling again.
    """

    logged_metrics = ("kl", "cross_entropy")

    def __init__(self, model: Gemini, optimizer: OptimizerConfig, *, teacher: Gemini,
                 distill: DistillConfig = DistillConfig(), mesh: jax.sharding.Mesh | None = None,
                 logits_chunk_tokens: int | None = None):
        check_compatible(teacher=teacher.config, student=model.config)
        super().__init__(model, optimizer, mesh=mesh, logits_chunk_tokens=logits_chunk_tokens)
        self.distill = distill
        self.teacher_graphdef, self.teacher_state = frozen_model(teacher, mesh)

    def frozen_inputs(self) -> dict[str, Any]:
        return {"teacher": self.teacher_state, "alpha": jnp.float32(self.distill.alpha),
                "temperature": jnp.float32(self.distill.temperature)}

    def _loss(self, frozen, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        student = nnx.merge(self.graphdef, params, self.rest)
        teacher = nnx.merge(self.teacher_graphdef, frozen["teacher"])
        targets = jnp.take_along_axis(batch["targets"], batch["loss_positions"], axis=1)  # [B, K]
        weights = jnp.take_along_axis(batch["loss_mask"], batch["loss_positions"], axis=1)  # [B, K]
        loss, parts = distill_loss_parts(
            scored_hidden(student, batch), scored_hidden(teacher, batch), targets, weights,
            student_table=student.embedder.table.get_value(), teacher_table=teacher.embedder.table.get_value(),
            project=functools.partial(tied_logits, dtype=student.embedder.dtype),
            teacher_project=functools.partial(tied_logits, dtype=teacher.embedder.dtype),
            temperature=frozen["temperature"], alpha=frozen["alpha"], chunk_tokens=self.logits_chunk_tokens)
        return loss, {"loss_tokens": parts["count"], "kl": parts["kl"], "cross_entropy": parts["cross_entropy"]}


def load_teacher(run_dir: str | os.PathLike) -> Gemini:
    """The teacher: the model of a run directory, its parameters from the latest checkpoint."""
    try:
        config = checkpoint.read_config(run_dir)
        teacher = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))  # shapes only, then restored
        checkpoint.load_params(run_dir, teacher)
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"teacher: {e}") from None
    return teacher

