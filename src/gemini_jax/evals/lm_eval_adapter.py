"""Our checkpoints as a model of EleutherAI's lm-evaluation-harness (lm-eval 0.4.x), under the
name "gemini-jax":

    pip install 'gemini-jax[eval]'
    python -m gemini_jax.evals.lm_eval_adapter --model gemini-jax --model_args checkpoint=runs/demo \\
        --tasks hellaswag --limit 100

or from Python, where importing this module registers the model:

    import lm_eval, gemini_jax.evals.lm_eval_adapter
    lm_eval.simple_evaluate(model="gemini-jax", model_args="checkpoint=runs/demo", tasks=["hellaswag"])

Why `python -m` and not `lm_eval --model gemini-jax`: lm-eval 0.4.13 finds models only in its
own registry, which it fills from a fixed table of its built-in models (lm_eval/models/__init__.py);
it reads no entry points and imports nothing that a user names (`--include_path` adds task YAMLs,
not models). So this module registers the class, then hands its arguments to lm-eval's own
command line (`lm_eval.__main__.cli_evaluate`): every lm-eval flag works unchanged.

Requests map onto `evals.model.CheckpointModel`: log-likelihoods come from one forward pass that
scores only the continuation (context and continuation tokenized apart, trailing spaces of the
context moved to the continuation as lm-eval's own models do; a context too long for the model is
cut from the left); rolling log-likelihoods score whole documents in windows of the model's
context; generation stops at the request's `until` strings. model_args: checkpoint (a run
directory, required); the batch size is lm-eval's own --batch_size ("auto" reads as 16).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ModuleNotFoundError as e:  # an optional extra: say how to get it
    raise ModuleNotFoundError("the lm-evaluation-harness adapter needs lm-eval: pip install 'gemini-jax[eval]'") from e

from gemini_jax.evals.checkpoint_model import CheckpointModel

NAME = "gemini-jax"
DEFAULT_MAX_GEN_TOKS = 256


def split_trailing_space(context: str, continuation: str) -> tuple[str, str]:
    """("Q: x ", "y") -> ("Q: x", " y"): a space belongs to the word it precedes."""
    spaces = len(context) - len(context.rstrip())
    return (context[:-spaces], context[-spaces:] + continuation) if spaces else (context, continuation)


@register_model(NAME)
class GeminiJaxLM(LM):
    def __init__(self, checkpoint: str | None = None, *, batch_size: int | str | None = 16,
                 model: CheckpointModel | None = None, **_ignored):
        """`checkpoint`: a run directory; or `model`, an already-built CheckpointModel (tests,
        notebooks). lm-eval also passes max_batch_size and device, which do not apply here."""
        super().__init__()
        if model is None:
            if not checkpoint:
                raise ValueError("gemini-jax needs model_args checkpoint=RUN_DIR (a run directory)")
            size = 16 if batch_size in (None, "auto") or str(batch_size).startswith("auto") else int(batch_size)
            model = CheckpointModel.load(str(checkpoint), batch_size=size)
        self.model = model

    def loglikelihood(self, requests: Sequence) -> list[tuple[float, bool]]:
        tok = self.model.tokenizer
        pairs = []
        for request in requests:
            context, continuation = split_trailing_space(*request.args[:2])
            pairs.append((tok.encode(context), tok.encode(continuation)))
        return self.model.loglikelihood_ids(pairs)

    def loglikelihood_rolling(self, requests: Sequence) -> list[float]:
        return self.model.loglikelihood_rolling([request.args[0] for request in requests])

    def generate_until(self, requests: Sequence) -> list[str]:
        # Requests with the same settings go to the model together (it batches them).
        groups: dict[tuple, list[int]] = {}
        settings = []
        for i, request in enumerate(requests):
            context, kwargs = request.args[0], dict(request.args[1] if len(request.args) > 1 else {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_tokens = int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", True) else 0.0
            key = (tuple(until), max_tokens, temperature)
            groups.setdefault(key, []).append(i)
            settings.append(context)
        outputs = [""] * len(requests)
        for (until, max_tokens, temperature), indices in groups.items():
            answers = self.model.generate([settings[i] for i in indices], temperature=temperature, num_samples=1,
                                          seed=0, max_tokens=max_tokens, stop=until)
            for i, [answer] in zip(indices, answers):
                outputs[i] = answer
        return outputs


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line, with "gemini-jax" registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
