"""AdamW with linear warmup, cosine decay and global-norm clipping (Optax), and updates with
non-finite gradients skipped."""

from __future__ import annotations

import dataclasses

import jax
import optax


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    learning_rate: float = 3e-3
    warmup_steps: int = 200
    total_steps: int = 10_000
    final_lr_fraction: float = 0.05  # cosine decays to this fraction of the peak
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.98  # shorter memory than 0.999: steadier for short, noisy runs
    clip_norm: float = 1.0
    # An update whose gradients hold a NaN or an infinity is skipped (parameters and Adam's
    # moments stay as they were) and counted (`skipped_updates`). After this many in a row
    # it is applied after all, so a run that cannot recover fails visibly instead of idling.
    max_consecutive_skips: int = 20


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=config.warmup_steps,
        decay_steps=max(config.total_steps, config.warmup_steps + 1),
        end_value=config.learning_rate * config.final_lr_fraction,
    )


def _decay_mask(params):
    # Norm scales and biases are not decayed: decay pulls RMSNorm's (1 + w) towards 1 anyway,
    # and vectors carry too few parameters to overfit.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
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
    return optax.apply_if_finite(adamw, max_consecutive_errors=config.max_consecutive_skips)


def skipped_updates(opt_state: optax.ApplyIfFiniteState) -> jax.Array:
    """How many updates `make_optimizer`'s optimizer has skipped for non-finite gradients."""
    return opt_state.total_notfinite
