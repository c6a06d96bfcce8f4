"""The Trainer: a model split into its graph and its parameters, the optimizer state, and the
compiled programs that update them.

The step is a pure function of arrays, compiled by `jax.jit` once per batch shape (the demo
mixes tasks whose batches have different shapes, so a handful of compilations happen in the
first steps). Parameters and optimizer state are donated, so the update happens in place.
The step draws no random numbers (no dropout). The loop that drives a Trainer (resume,
logging, evaluation, checkpoints, the replica) is loop.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gemini_jax import sharding
from gemini_jax.model import Gemini
from gemini_jax.train.batches import loss_positions_width, model_inputs, with_loss_positions
from gemini_jax.train.loss import Project, TiedProjection, cross_entropy
from gemini_jax.train.optimizer import (
    OptimizerConfig,
    learning_rate_schedule,
    make_optimizer,
    skipped_updates,
    spike_skips,
)
from gemini_jax.train.replay import check_replay, fingerprint, require_deterministic_backend


def is_abstract(tree: Any) -> bool:
    """Whether `tree` holds shapes only (a model from nnx.eval_shape): it can be lowered, not run."""
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def scored_loss(model: Gemini, batch: Mapping[str, Any], *, chunk_tokens: int | None,
                project: Project | None = None) -> tuple[jax.Array, jax.Array]:
    """(mean cross-entropy, count of scored positions) of `model` on `batch`, with logits only
    where the loss looks (`loss_positions`): answers are a few tokens of each row, and the
    vocabulary projection is the costliest matmul of a small model. The full logits of the
    model's output go unused, so XLA never computes them; a large vocabulary is projected a
    chunk of tokens at a time (train/loss.py). `project(table, hidden)` replaces the tied
    projection (train/lora.py: a frozen table's)."""
    out = model(model_inputs(batch))
    positions = batch["loss_positions"]  # [B, K]
    if positions.shape[1] == out.hidden.shape[1]:
        # Every position may be scored (language modelling): the masked sum needs no
        # reordering, and a gather (a scatter in the backward pass) of the whole hidden
        # state would only cost time.
        hidden, targets, weights = out.hidden, batch["targets"], batch["loss_mask"]
    else:
        hidden = jnp.take_along_axis(out.hidden, positions[:, :, None], axis=1)  # [B, K, D]
        targets = jnp.take_along_axis(batch["targets"], positions, axis=1)  # [B, K]
        weights = jnp.take_along_axis(batch["loss_mask"], positions, axis=1)  # [B, K]
    project = project or TiedProjection(model.embedder.dtype)
    return cross_entropy(hidden, targets, weights, table=model.embedder.table.get_value(), project=project,
                         chunk_tokens=chunk_tokens)


def frozen_model(model: nnx.Module, mesh: jax.sharding.Mesh | None) -> tuple[nnx.GraphDef, nnx.State]:
    """A model that a step reads and never trains (a distillation teacher, a DPO or RL
    reference), split into its graph and state; on a mesh, its weights are laid out as the
    trained model's are."""
    graphdef, state = nnx.split(model)
    if mesh is not None:
        shardings = sharding.param_shardings(state, mesh)
        state = sharding.with_shardings(state, shardings) if is_abstract(state) else sharding.place(state, shardings)
    return graphdef, state


def apply_update(tx: optax.GradientTransformationExtraArgs, params, opt_state, loss_and_aux, grads):
    """(params, opt_state, step metrics) after one optimizer update from `grads`."""
    loss, aux = loss_and_aux
    # Optax mixes Python scalars with int32 step counts; it is written for standard
    # promotion, while our own code also passes under strict promotion (the tests' mode).
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = tx.update(grads, opt_state, params, value=loss)
        params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads),
                               "skipped_updates": skipped_updates(opt_state), "spike_skips": spike_skips(opt_state)}


def fingerprinted_update(tx: optax.GradientTransformationExtraArgs, params, opt_state, loss_and_aux, grads):
    """`apply_update`, plus fingerprints of the gradients and the updated state (replay.py)."""
    params, opt_state, metrics = apply_update(tx, params, opt_state, loss_and_aux, grads)
    prints = {"gradients": fingerprint(grads), "params": fingerprint(params), "opt_state": fingerprint(opt_state)}
    return params, opt_state, metrics, prints


def device_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh | None) -> dict[str, Any]:
    """`batch` with its loss positions, as the step reads it: this process's rows placed into
    one global batch over the mesh (with a mesh), or host arrays (without)."""
    if mesh is None:
        return with_loss_positions(batch)
    width = loss_positions_width(batch["loss_mask"])
    if jax.process_count() > 1:  # every process must build the same global shape
        from jax.experimental import multihost_utils

        width = int(np.max(multihost_utils.process_allgather(np.int32(width))))
    return sharding.global_batch(with_loss_positions(batch, width=width), mesh)


class Trainer:
    """Owns the model's parameters, the optimizer state and the compiled step.

    Without a mesh everything lives on the default device. With one, parameters are placed
    by their logical names (sharding.RULES), Adam's moments follow their parameters, batches
    are split over (data, fsdp), and the step is traced under the mesh so the decoder's
    block-boundary constraints apply. A subclass trains another loss by overriding `_loss`
    (and `frozen_inputs`, `logged_metrics`): train/distill.py.
    """

    # Scalars of a subclass's step metrics that the log averages over each interval, beside the loss.
    logged_metrics: tuple[str, ...] = ()

    def __init__(self, model: Gemini, optimizer: OptimizerConfig, *, mesh: jax.sharding.Mesh | None = None,
                 logits_chunk_tokens: int | None = None, trainable: nnx.filterlib.Filter = nnx.Param):
        # `trainable` picks the variables the optimizer updates (train/lora.py passes
        # nnx.LoRAParam); everything else is held, unchanged, in `rest`.
        self.graphdef, self.params, self.rest = nnx.split(model, trainable, ...)
        self.logits_chunk_tokens = logits_chunk_tokens  # None: train/loss.py's default for the vocabulary
        self.tx = make_optimizer(optimizer)
        self.schedule = learning_rate_schedule(optimizer)
        self.mesh = mesh
        if mesh is None:
            self.opt_state = self.tx.init(self.params)
            self._compile(step={}, gradients={}, checked_update={})
        else:
            self._place_on(mesh)
            replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
            state = (self.param_shardings, self.opt_shardings)
            self._compile(step={"out_shardings": (*state, replicated)},
                          gradients={"out_shardings": (replicated, self.param_shardings)},
                          checked_update={"out_shardings": (*state, replicated, replicated)})
        self._loss_fn = jax.jit(self._loss)

    def _place_on(self, mesh: jax.sharding.Mesh) -> None:
        """Lays parameters and optimizer state out over `mesh`. A model from nnx.eval_shape
        holds ShapeDtypeStructs: then nothing is allocated, and the step can only be lowered
        (`lower`), e.g. for a mesh bigger than this host."""
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self.param_shardings = sharding.param_shardings(self.params, mesh)
        opt_like = jax.eval_shape(self.tx.init, self.params)
        self.opt_shardings = sharding.shardings_like(opt_like, self.params, self.param_shardings, mesh)
        if is_abstract(self.params):
            self.params = sharding.with_shardings(self.params, self.param_shardings)
            self.opt_state = sharding.with_shardings(opt_like, self.opt_shardings)
        else:
            self.params = sharding.place(self.params, self.param_shardings)
            self.rest = sharding.place(self.rest, jax.tree.map(lambda _: replicated, self.rest))
            self.opt_state = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(self.params)

    def _compile(self, *, step: dict[str, Any], gradients: dict[str, Any], checked_update: dict[str, Any]) -> None:
        """The jitted programs, each with its `jax.jit` options (output shardings on a mesh)."""
        self._step_fn = jax.jit(self._step, donate_argnums=(1, 2), **step)
        self._gradients_fn = jax.jit(self._gradients, **gradients)
        self._checked_update_fn = jax.jit(self._checked_update, **checked_update)

    @property
    def model(self) -> Gemini:
        return nnx.merge(self.graphdef, self.params, self.rest)

    def frozen_inputs(self) -> dict[str, Any]:
        """Arrays every step reads and never trains (a subclass's: a distillation teacher and its
        settings; none here). They are arguments of each compiled program, not constants
        compiled into it: a large teacher stays out of the executable, and new values run the
        same program."""
        return {}

    def _loss(self, frozen, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(the mean loss, {"loss_tokens": scored positions, and a subclass's `logged_metrics`})."""
        del frozen  # the plain loss reads none
        loss, count = scored_loss(nnx.merge(self.graphdef, params, self.rest), batch,
                                  chunk_tokens=self.logits_chunk_tokens)
        return loss, {"loss_tokens": count}

    def _gradients(self, frozen, params, batch):
        return jax.value_and_grad(self._loss, argnums=1, has_aux=True)(frozen, params, batch)  # ((loss, aux), grads)

    def _step(self, frozen, params, opt_state, batch):
        return apply_update(self.tx, params, opt_state, *self._gradients(frozen, params, batch))

    def _checked_update(self, params, opt_state, loss_and_aux, grads):
        return fingerprinted_update(self.tx, params, opt_state, loss_and_aux, grads)

    def _in_mesh(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def step(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """One update on `batch`: the whole batch, or with a mesh this process's rows of it."""
        batch = device_batch(batch, self.mesh)
        with self._in_mesh():
            self.params, self.opt_state, metrics = self._step_fn(self.frozen_inputs(), self.params, self.opt_state,
                                                                 batch)
        return metrics

    def checked_step(self, batch: Mapping[str, np.ndarray], *, step: int,
                     corrupt: Callable[[Any], Any] | None = None) -> dict[str, jax.Array]:
        """`step` (the update on `batch`), computed twice from the same arrays and compared bit
        for bit (replay.py): raises SilentDataCorruptionError, leaving the state as it was,
        when the two disagree. `corrupt(grads) -> grads` alters the second run's gradients
        (tests: an injected fault).

        Both runs use the same two compiled programs, gradients then update, neither of
        which donates its inputs, since the second run needs them again. While it runs, the
        inputs and both runs' outputs are alive: two more copies of the parameters and
        optimizer state than a normal step holds (with AdamW, 6 floats per parameter), and a
        checked step costs twice the compute. (Gradients cross between the two programs, so
        a test injects its fault there without compiling a third.)
        """
        require_deterministic_backend()
        batch = device_batch(batch, self.mesh)
        frozen = self.frozen_inputs()
        with self._in_mesh():
            params, opt_state, metrics, first = self._checked_update_fn(
                self.params, self.opt_state, *self._gradients_fn(frozen, self.params, batch))
            loss_and_aux, grads = self._gradients_fn(frozen, self.params, batch)
            if corrupt is not None:
                grads = corrupt(grads)
            *_, replayed = self._checked_update_fn(self.params, self.opt_state, loss_and_aux, grads)
        check_replay(step, first, replayed)
        self.params, self.opt_state = params, opt_state
        return metrics

    def lower(self, batch: Mapping[str, jax.ShapeDtypeStruct]) -> jax.stages.Lowered:
        """The step lowered for a global batch of ShapeDtypeStructs (loss_positions included),
        without running it: a cheap proof that the sharded step is well formed. Needs a mesh."""
        if self.mesh is None:
            raise ValueError("Trainer.lower needs a trainer built with a mesh")
        shardings = {k: sharding.batch_sharding(self.mesh, len(v.shape)) for k, v in batch.items()}
        batch = sharding.with_shardings(dict(batch), shardings)
        with jax.set_mesh(self.mesh):
            return self._step_fn.lower(self.frozen_inputs(), self.params, self.opt_state, batch)

    def state(self) -> dict[str, Any]:
        return {"params": nnx.to_pure_dict(self.params), "opt_state": self.opt_state}

    def load_state(self, state: dict[str, Any]) -> None:
        nnx.replace_by_pure_dict(self.params, state["params"])
        self.opt_state = state["opt_state"]
