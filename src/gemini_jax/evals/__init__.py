"""Evaluation: every evaluation is a task in one registry (`registry`: the demo's held-out sets,
the long-context probes, the benchmarks), run by `evaluate` / `evaluate_run` with `EvalOptions`.
Beneath it: the report's protocols (`protocols`), answer metrics (`metrics`), benchmark tasks read
from their published layouts (`tasks`) and asked of a checkpoint (`checkpoint_model`), an
lm-evaluation-harness adapter (`lm_eval_adapter`, optional), HumanEval (`humaneval`) in a process
sandbox (`sandbox`), and log-likelihood scoring (`scoring`)."""

_REGISTRY_NAMES = ("EvalOptions", "EvalTask", "Family", "TASKS", "DEFAULT_TASKS", "evaluate", "evaluate_run",
                   "format_results", "refuse_unused_options", "unused_options")


def __getattr__(name: str):
    # The registry imports the model and sampler: only when asked for, so that importing a light
    # module of this package (metrics, sandbox) stays light.
    if name in _REGISTRY_NAMES:
        from gemini_jax.evals import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'gemini_jax.evals' has no attribute {name!r}")


__all__ = list(_REGISTRY_NAMES)
