"""The training loop: a compiled step over (params, optimizer state), checkpoints, metrics.

The model is split once into its graph and its parameters; the step is a pure function of
arrays, compiled by `jax.jit` once per batch shape (the demo mixes tasks whose batches have
different shapes, so a handful of compilations happen in the first steps). Parameters and
optimizer state are donated, so the update happens in place.

Resuming restores parameters, optimizer state and the data iterator's position, so a resumed
run reproduces the losses of an uninterrupted one, after a clean stop or a kill -9 alike
(checkpoints are atomic: see checkpoint.py). The step draws no random numbers (no dropout);
the data pipeline's shuffling and augmentation are seeded and part of the iterator's state.
With `replica_every`, a step that fails with a runtime error restarts from an in-memory copy
of the state instead (replica.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from gemini_jax import batch as batch_keys
from gemini_jax import sharding
from gemini_jax.checkpoint import Checkpointer, another_model_error, check_trainable, model_differences
from gemini_jax.config import ModelConfig, config_to_dict
from gemini_jax.model import Gemini
from gemini_jax.model.layers import tied_logits
from gemini_jax.train.loss import cross_entropy, masked_cross_entropy  # noqa: F401 (re-exported)
from gemini_jax.train.metrics import LOSS_PLOT_FILE, MetricsLog, plot_losses
from gemini_jax.train.optimizer import (
    OptimizerConfig,
    learning_rate_schedule,
    make_optimizer,
    skipped_updates,
    spike_skips,
)
from gemini_jax.train.replay import (
    SilentDataCorruptionError,
    check_replay,
    fingerprint,
    require_deterministic_backend,
)
from gemini_jax.train.replica import Replica

MODEL_INPUT_KEYS = tuple(k for k in batch_keys.ALL_KEYS if k not in ("targets", "loss_mask"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    steps: int = 2_000
    optimizer: OptimizerConfig = OptimizerConfig()
    log_every: int = 25
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int = 500
    seed: int = 0
    progress: bool = True
    # None: one device, no mesh (the path of old). A MeshShape shards over every device of
    # every process (sharding.py); `data` then yields this process's share of each batch.
    mesh: sharding.MeshShape | None = None
    # Every this many steps the step is computed twice and the results compared bit for bit
    # (replay.py); a difference raises SilentDataCorruptionError. 0: never.
    sdc_check_every: int = 0
    # Steps between refreshes of the in-memory copy of the state (replica.py) that a step
    # failing with a runtime error restarts from, without reading storage; 0: no copy.
    replica_every: int = 0


@dataclasses.dataclass(frozen=True)
class TrainResult:
    model: Gemini
    step: int
    final_loss: float
    tokens_per_second: float
    wall_seconds: float
    eval_metrics: dict[str, Any]

    def summary(self) -> str:
        """One line for the log: steps, time, rate and final loss."""
        return (f"trained {self.step} steps in {self.wall_seconds:.0f} s, {self.tokens_per_second:,.0f} tokens/s, "
                f"final loss {self.final_loss:.4f}")


def loss_positions_width(loss_mask: np.ndarray) -> int:
    """K of `with_loss_positions`: the most scored tokens of any row, rounded up to a power of
    two (at least 4) so that a task compiles a few shapes, not one per batch."""
    loss_mask = np.asarray(loss_mask)
    most = int((loss_mask > 0).sum(axis=1).max(initial=1))
    return min(loss_mask.shape[1], max(4, 1 << math.ceil(math.log2(max(most, 1)))))


def with_loss_positions(batch: Mapping[str, np.ndarray], *, width: int | None = None) -> dict[str, np.ndarray]:
    """Adds `loss_positions` int32[B, K]: each row's scored positions first, in order.

    K is `width`, by default `loss_positions_width` of this batch (processes that each hold
    part of a global batch must agree on one K: see `Trainer.step`).
    """
    loss_mask = np.asarray(batch["loss_mask"])
    k = loss_positions_width(loss_mask) if width is None else width
    order = np.argsort(-(loss_mask > 0).astype(np.int8), axis=1, kind="stable")[:, :k]
    return {**batch, "loss_positions": order.astype(np.int32)}


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}


def is_abstract(tree: Any) -> bool:
    """Whether `tree` holds shapes only (a model from nnx.eval_shape): it can be lowered, not run."""
    return any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


class Trainer:
    """Owns the model's parameters, the optimizer state and the compiled step.

    Without a mesh everything lives on the default device, exactly as before sharding
    existed. With one, parameters are placed by their logical names (sharding.RULES), Adam's
    moments follow their parameters, batches are split over (data, fsdp), and the step is
    traced under the mesh so the decoder's block-boundary constraints apply.
    """

    # Scalars of a subclass's step metrics that the log averages over each interval, beside the loss.
    logged_metrics: tuple[str, ...] = ()

    def __init__(
        self, model: Gemini, optimizer: OptimizerConfig, *, mesh: jax.sharding.Mesh | None = None,
        logits_chunk_tokens: int | None = None,
    ):
        self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
        self.logits_chunk_tokens = logits_chunk_tokens  # None: train/loss.py's default for the vocabulary
        self.tx = make_optimizer(optimizer)
        self.schedule = learning_rate_schedule(optimizer)
        self.mesh = mesh
        if mesh is None:
            self.opt_state = self.tx.init(self.params)
            self._step_fn = jax.jit(self._step, donate_argnums=(1, 2))
            self._gradients_fn = jax.jit(self._gradients)
            self._checked_update_fn = jax.jit(self._checked_update)
        else:
            # A model from nnx.eval_shape holds ShapeDtypeStructs: then nothing is allocated,
            # and the step can only be lowered (`lower`), e.g. for a mesh bigger than this host.
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
            self._step_fn = jax.jit(self._step, donate_argnums=(1, 2),
                                    out_shardings=(self.param_shardings, self.opt_shardings, replicated))
            self._gradients_fn = jax.jit(self._gradients, out_shardings=(replicated, self.param_shardings))
            self._checked_update_fn = jax.jit(
                self._checked_update, out_shardings=(self.param_shardings, self.opt_shardings, replicated, replicated))
        self._loss_fn = jax.jit(self._loss)

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
        model = nnx.merge(self.graphdef, params, self.rest)
        out = model(model_inputs(batch))
        # Logits only where the loss looks: answers are a few tokens of each row, and the
        # vocabulary projection is the costliest matmul of a small model. The full logits
        # of `out` go unused, so XLA never computes them; a large vocabulary is projected
        # a chunk of tokens at a time (train/loss.py).
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
        project = functools.partial(tied_logits, dtype=model.embedder.dtype)
        loss, count = cross_entropy(hidden, targets, weights, table=model.embedder.table.get_value(), project=project,
                                    chunk_tokens=self.logits_chunk_tokens)
        return loss, {"loss_tokens": count}

    def _gradients(self, frozen, params, batch):
        return jax.value_and_grad(self._loss, argnums=1, has_aux=True)(frozen, params, batch)  # ((loss, aux), grads)

    def _update(self, params, opt_state, loss_and_aux, grads):
        loss, aux = loss_and_aux
        # Optax mixes Python scalars with int32 step counts; it is written for standard
        # promotion, while our own code also passes under strict promotion (the tests' mode).
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = self.tx.update(grads, opt_state, params, value=loss)
            params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads),
                                   "skipped_updates": skipped_updates(opt_state),
                                   "spike_skips": spike_skips(opt_state)}

    def _step(self, frozen, params, opt_state, batch):
        return self._update(params, opt_state, *self._gradients(frozen, params, batch))

    def _checked_update(self, params, opt_state, loss_and_aux, grads):
        params, opt_state, metrics = self._update(params, opt_state, loss_and_aux, grads)
        prints = {"gradients": fingerprint(grads), "params": fingerprint(params), "opt_state": fingerprint(opt_state)}
        return params, opt_state, metrics, prints

    def _device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, Any]:
        if self.mesh is None:
            return with_loss_positions(batch)
        width = loss_positions_width(batch["loss_mask"])
        if jax.process_count() > 1:  # every process must build the same global shape
            from jax.experimental import multihost_utils

            width = int(np.max(multihost_utils.process_allgather(np.int32(width))))
        return sharding.global_batch(with_loss_positions(batch, width=width), self.mesh)

    def _in_mesh(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

    def step(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """One update on `batch`: the whole batch, or with a mesh this process's rows of it."""
        batch = self._device_batch(batch)
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
        checked step costs twice the compute.
        (Gradients cross between the two programs, so a test injects its fault there without
        compiling a third.)
        """
        require_deterministic_backend()
        batch = self._device_batch(batch)
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


def _json_safe(state: Any) -> Any:
    """Grain iterator states are JSON-able dicts; bytes (if any) become latin-1 strings."""
    return json.loads(json.dumps(state, default=lambda b: {"__bytes__": b.decode("latin-1")}))


def _from_json_safe(state: Any) -> Any:
    return json.loads(
        json.dumps(state),
        object_hook=lambda d: d["__bytes__"].encode("latin-1") if set(d) == {"__bytes__"} else d,
    )


def train(
    *,
    config: ModelConfig,
    run_dir: str | os.PathLike,
    data: Iterator[Mapping[str, np.ndarray]],
    train_config: TrainConfig,
    evaluate: Callable[[Gemini], dict[str, Any]] | None = None,
    stop_after: int | None = None,
    make_trainer: Callable[..., Trainer] = Trainer,
) -> TrainResult:
    """Trains (or resumes) the run in `run_dir` for `train_config.steps` steps.

    `data` is an iterator of batches (see batch.py); if it has `get_state`/`set_state` (a Grain
    iterator) its position is checkpointed. `evaluate(model)` returns metrics to log.
    `stop_after` ends the loop early at that step (to test resumption) without changing the
    schedule. `make_trainer(model, optimizer_config, mesh=mesh)` builds the Trainer: a
    subclass trains with another loss (train/distill.py) in this same loop.
    """
    run_dir = Path(run_dir)
    check_trainable(run_dir)
    model = Gemini(config, rngs=nnx.Rngs(train_config.seed))
    mesh = None if train_config.mesh is None else sharding.make_mesh(train_config.mesh)
    if train_config.sdc_check_every:
        require_deterministic_backend()  # now, not at the first checked step
    trainer = make_trainer(model, train_config.optimizer, mesh=mesh)
    checkpointer = Checkpointer(run_dir)
    log = MetricsLog(run_dir)
    # In a multi-host run every process trains; process 0 alone writes metrics and the plot
    # (Orbax coordinates the checkpoint writes itself).
    main = jax.process_index() == 0

    start = 0
    latest = checkpointer.latest_step()
    if latest is not None:
        # Another model's parameters would fail to restore with a shape error deep in Orbax.
        saved = checkpointer.read_meta(latest).get("model_config")
        if saved is not None and (differences := model_differences(saved, config)):
            checkpointer.close()
            raise another_model_error(run_dir, differences)
        state, meta = checkpointer.restore(latest, state_like=trainer.state())
        trainer.load_state(state)
        if meta.get("data_state") is not None and hasattr(data, "set_state"):
            data.set_state(_from_json_safe(meta["data_state"]))
        start = latest
        if main:
            log.truncate_after(start)
    elif main:
        log.path.unlink(missing_ok=True)

    def save(step: int) -> None:
        meta = {
            "step": step,
            "model_config": config_to_dict(config),
            "train_config": json.loads(json.dumps(dataclasses.asdict(train_config))),
            "data_state": _json_safe(data.get_state()) if hasattr(data, "get_state") else None,
        }
        checkpointer.save(step, state=trainer.state(), meta=meta)

    end = min(train_config.steps, stop_after if stop_after is not None else train_config.steps)
    bar = tqdm(total=train_config.steps, initial=start, disable=not (train_config.progress and main), unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    window_tokens, window_start, total_tokens = 0, time.perf_counter(), 0
    loss_value, eval_metrics = math.nan, {}
    pending: list[tuple[int, dict[str, jax.Array], int]] = []

    # One step's work is a function so that a failure anywhere in it can rewind the loop.
    def run_step(step: int) -> None:
        nonlocal pending, window_tokens, window_start, total_tokens, loss_value, eval_metrics
        batch = next(data)
        tokens = int(np.count_nonzero(batch["segment_ids"]))
        try:
            if train_config.sdc_check_every and step % train_config.sdc_check_every == 0:
                metrics = trainer.checked_step(batch, step=step)
            else:
                metrics = trainer.step(batch)
        except SilentDataCorruptionError as error:
            if main:
                log.write({"kind": "sdc", **error.record()})
            raise
        pending.append((step, metrics, tokens))
        window_tokens += tokens
        total_tokens += tokens
        bar.update(1)
        if step % train_config.log_every == 0 or step == end:
            # Reading metrics back waits for the device: do it once per log interval only.
            now = time.perf_counter()
            rate = window_tokens / max(now - window_start, 1e-9)
            losses = [float(m["loss"]) for _, m, _ in pending]
            loss_value = float(np.mean(losses))
            with jax.numpy_dtype_promotion("standard"):
                lr = float(trainer.schedule(step))
            grad_norm = float(pending[-1][1]["grad_norm"])
            skipped = int(pending[-1][1]["skipped_updates"])  # since the run began (checkpointed)
            spikes = int(pending[-1][1]["spike_skips"])  # likewise
            if main:
                log.write({
                    "kind": "train", "step": step, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                    "skipped_updates": skipped, "spike_skips": spikes, "tokens_per_second": rate,
                    "elapsed_s": now - started,
                    **{name: float(np.mean([float(m[name]) for _, m, _ in pending])) for name in trainer.logged_metrics},
                })
            bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rate:,.0f}")
            pending, window_tokens, window_start = [], 0, now
        if train_config.eval_every and step % train_config.eval_every == 0 and step != end and evaluate:
            eval_metrics = evaluate(trainer.model)
            if main:
                log.write({"kind": "eval", "step": step, **eval_metrics})
        if step % train_config.checkpoint_every == 0 or step == end:
            save(step)
        if replica is not None and step % train_config.replica_every == 0:
            replica.refresh(trainer, step=step, data_state=data.get_state() if hasattr(data, "get_state") else None)

    replica = Replica() if train_config.replica_every else None
    recovered_from: int | None = None
    step = start
    while step < end:
        step += 1
        try:
            run_step(step)
        except jax.errors.JaxRuntimeError:
            # A failed step (a device fault, a lost primary copy) surfaces here, at the step or
            # when its metrics are read. Restart from the in-memory copy, once per copy: a
            # failure that comes back before a fresh copy is not transient and propagates.
            if replica is None or replica.step is None or replica.step == recovered_from:
                raise
            recovering = time.perf_counter()
            step, data_state = replica.recover(trainer)
            if data_state is not None:
                data.set_state(data_state)
            recovered_from = step
            pending, window_tokens, window_start = [], 0, time.perf_counter()
            bar.n = step
            bar.refresh()
            if main:
                log.truncate_after(step)
                log.write({"kind": "recovery", "step": step, "source": "in-memory replica",
                           "seconds": time.perf_counter() - recovering})
    bar.close()
    wall = time.perf_counter() - started
    checkpointer.wait()
    checkpointer.close()
    if evaluate is not None and end == train_config.steps:
        eval_metrics = evaluate(trainer.model)
        if main:
            log.write({"kind": "eval", "step": end, **eval_metrics})
    if main:
        plot_losses(log.read(), run_dir / LOSS_PLOT_FILE)
    return TrainResult(
        model=trainer.model, step=end, final_loss=loss_value,
        tokens_per_second=total_tokens / max(wall, 1e-9), wall_seconds=wall, eval_metrics=eval_metrics,
    )
