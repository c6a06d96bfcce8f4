"""AdamW with linear warmup, cosine decay and global-norm clipping (Optax), and the updates it
refuses: those with non-finite gradients, and (optionally) those whose loss spikes.

The optimizer's update takes the step's loss: `tx.update(grads, state, params, value=loss)`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from gemini_jax.config import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    learning_rate: float = 3e-3
    warmup_steps: int = 200
    # Where the cosine ends. None: the run's TrainConfig.steps, which `train()` fills in; a
    # Trainer or optimizer built by hand needs a number.
    total_steps: int | None = None
    final_lr_fraction: float = 0.05  # cosine decays to this fraction of the peak
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98  # shorter memory than 0.999: steadier for short, noisy runs
    clip_norm: float = 1.0
    # An update whose gradients hold a NaN or an infinity is skipped (parameters and Adam's
    # moments stay as they were) and counted (`skipped_updates`). After this many in a row
    # it is applied after all, so a run that cannot recover fails visibly instead of idling.
    max_consecutive_skips: int = 20
    # An update whose loss exceeds this many times the running mean of recent losses is
    # skipped and counted (`spike_skips`): one bad batch (corrupt data, a numerical blow-up
    # that stays finite) then cannot throw the weights off. 0 turns the guard off. It
    # watches from step `loss_spike_warmup` on, when the early fall of the loss has slowed;
    # the mean is an EMA with this decay (0.99: about the last 100 steps). It is one mean
    # over all batches: with a mixture of tasks whose losses differ (the demo's), the factor
    # must stay well above their ratio.
    loss_spike_factor: float = 0.0
    loss_spike_warmup: int = 100
    loss_spike_decay: float = 0.99

    def __post_init__(self):
        # A factor at or below 1 would skip about every other normal step (half of them
        # lie above the mean).
        if not (self.loss_spike_factor == 0 or self.loss_spike_factor > 1):
            raise ConfigError(f"loss_spike_factor must be 0 (off) or above 1, got {self.loss_spike_factor!r}")
        if not 0 <= self.loss_spike_decay < 1:
            raise ConfigError(f"loss_spike_decay must lie in [0, 1), got {self.loss_spike_decay!r}")
        if self.total_steps is not None and self.total_steps < 1:
            raise ConfigError(f"OptimizerConfig.total_steps must be at least 1 (or None: the run's steps), "
                              f"got {self.total_steps!r}")


def total_steps(config: OptimizerConfig) -> int:
    """The schedule's length; a clear error where the run's steps were never filled in."""
    if config.total_steps is None:
        raise ConfigError(
            "OptimizerConfig.total_steps is None, which means the run's TrainConfig.steps and is filled in "
            "by train(): give total_steps explicitly when building a Trainer or an optimizer yourself")
    return config.total_steps


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=max(total_steps(config), config.warmup_steps + 1),
        end_value=config.learning_rate * config.final_lr_fraction,
    )


def _decay_mask(params):
    # Norm scales and biases are not decayed: decay pulls RMSNorm's (1 + w) towards 1 anyway,
    # and vectors carry too few parameters to overfit.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


class LossSpikeState(NamedTuple):
    loss_mean: jax.Array  # float32: EMA of the accepted losses
    losses_seen: jax.Array  # int32: losses in that mean since the guard (re)started
    consecutive_spikes: jax.Array  # int32
    total_spikes: jax.Array  # int32: skipped updates since the run began
    inner_state: optax.OptState


def skip_loss_spikes(inner: optax.GradientTransformation, *, factor: float, warmup: int, decay: float,
                     max_consecutive: int) -> optax.GradientTransformationExtraArgs:
    """`inner`, except that an update whose loss (`value=`) exceeds `factor` times the EMA of
    earlier losses is replaced by zeros and leaves `inner`'s state as it was.

    Like `optax.apply_if_finite`, it gives in after `max_consecutive` spikes in a row: the
    loss has then moved to a new level, so that update is applied and the mean starts over
    from it (with a fresh warmup). factor 0 never skips; the state keeps the same shape, so
    a run may switch the guard on or off when it resumes.
    """
    inner = optax.with_extra_args_support(inner)

    def init(params):
        # One array per field, never one shared: the trainer donates the state, and a buffer
        # may be donated only once.
        return LossSpikeState(loss_mean=jnp.zeros([], jnp.float32), losses_seen=jnp.zeros([], jnp.int32),
                              consecutive_spikes=jnp.zeros([], jnp.int32), total_spikes=jnp.zeros([], jnp.int32),
                              inner_state=inner.init(params))

    def update(updates, state, params=None, *, value, **extra_args):
        loss = jnp.asarray(value, jnp.float32)
        if factor > 0:
            spike = jnp.logical_and(state.losses_seen >= warmup, loss > factor * state.loss_mean)
        else:
            spike = jnp.zeros([], jnp.bool_)
        give_in = state.consecutive_spikes >= max_consecutive
        skip = jnp.logical_and(spike, jnp.logical_not(give_in))
        updates, inner_state = jax.lax.cond(
            skip,
            lambda: (optax.tree.zeros_like(updates), state.inner_state),
            lambda: inner.update(updates, state.inner_state, params, value=value, **extra_args),
        )
        restart = jnp.logical_or(state.losses_seen == 0, jnp.logical_and(spike, give_in))
        blended = decay * state.loss_mean + (1 - decay) * loss
        # A loss that overflowed while its gradients stayed finite must not poison the mean.
        accepted = jnp.logical_and(jnp.logical_not(skip), jnp.isfinite(loss))
        loss_mean = jnp.where(accepted, jnp.where(restart, loss, blended), state.loss_mean)
        losses_seen = jnp.where(accepted, jnp.where(restart, 1, state.losses_seen + 1), state.losses_seen)
        return updates, LossSpikeState(
            loss_mean=loss_mean,
            losses_seen=losses_seen.astype(jnp.int32),
            consecutive_spikes=jnp.where(skip, state.consecutive_spikes + 1, 0).astype(jnp.int32),
            total_spikes=state.total_spikes + skip.astype(jnp.int32),
            inner_state=inner_state,
        )

    return optax.GradientTransformationExtraArgs(init, update)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformationExtraArgs:
    adamw = optax.chain(
        optax.clip_by_global_norm(config.clip_norm),
        optax.adamw(
            learning_rate_schedule(config),
            b1=config.b1,
            b2=config.b2,
            weight_decay=config.weight_decay,
            mask=_decay_mask,
        ),
    )
    guarded = skip_loss_spikes(adamw, factor=config.loss_spike_factor, warmup=config.loss_spike_warmup,
                               decay=config.loss_spike_decay, max_consecutive=config.max_consecutive_skips)
    # Outermost, so that the spike guard only ever sees finite gradients.
    return optax.apply_if_finite(guarded, max_consecutive_errors=config.max_consecutive_skips)


def skipped_updates(opt_state: optax.ApplyIfFiniteState) -> jax.Array:
    """How many updates `make_optimizer`'s optimizer has skipped for non-finite gradients."""
    return opt_state.total_notfinite


def spike_skips(opt_state: optax.ApplyIfFiniteState) -> jax.Array:
    """How many updates `make_optimizer`'s optimizer has skipped for a spiking loss."""
    return opt_state.inner_state.total_spikes
