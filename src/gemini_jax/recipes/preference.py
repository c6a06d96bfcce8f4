"""Learning from preference pairs as recipes: a reward model, or DPO on a policy.

    gemini-jax reward --data pairs.jsonl --init-from runs/sft --run-dir runs/reward
    gemini-jax dpo --data pairs.jsonl --init-from runs/sft --run-dir runs/dpo

Both start from a trained run (its config, tokenizer and latest parameters) and read one JSONL
file of pairs (data/preferences.py), split by hash into train, validation and test. During
training the validation pairs are scored (--eval-every); the test pairs only at the end. Both
report pairwise accuracy: the reward model's scores, or DPO's implicit reward
beta * (log pi - log ref), higher for the chosen reply.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, ClassVar

import jax
import numpy as np
from flax import nnx

from gemini_jax import checkpoint
from gemini_jax.config import ConfigError
from gemini_jax.data.preferences import EncodedPairs, encode_pairs, pair_batches, read_pairs, split_pairs
from gemini_jax.data.records import DataError
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.model import Gemini
from gemini_jax.model.lora import LoraConfig
from gemini_jax.recipes.runner import Setup, Timings, run_dir_of, train_and_evaluate
from gemini_jax.train.batches import with_loss_positions
from gemini_jax.train.config import TrainConfig
from gemini_jax.train.dpo import DPOConfig, DPOTrainer
from gemini_jax.train.lora import refuse_lora_run, start_lora
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.preference_loss import real_pairs, reply_log_probs
from gemini_jax.train.reward import RewardModel, RewardTrainer, write_reward_record

KINDS = ("reward", "dpo")
EVAL_BATCH = 16  # pairs per evaluation batch


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferenceRecipe:
    """A reward model ("reward") or a DPO policy ("dpo") trained on the pairs of `data`."""

    multi_device: ClassVar[bool] = False
    eval_limit_field: ClassVar[str] = "eval_limit"
    kind: str
    data: str  # a JSONL file of preference pairs
    init_from: str  # the run both start from
    run_dir: str | None = None  # None: runs/<kind>
    train: TrainConfig = TrainConfig(
        steps=300, optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=20, weight_decay=0.0))
    batch_size: int = 16  # pairs per batch (twice as many rows)
    beta: float = 0.1  # DPO's
    likelihood: bool = False  # reward: the score also weighs the reply's log-probability (train/reward.py)
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    max_bad_records: int = 0
    eval_limit: int | None = None  # pairs per split in the final evaluation; None: all
    evaluate_at_end: bool = True
    lora: LoraConfig | None = None  # DPO: train adapters on init_from's weights (train/lora.py)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown preference recipe {self.kind!r}; accepted: {', '.join(KINDS)}")
        DPOConfig(beta=self.beta)  # checks it
        if self.lora is not None and self.kind != "dpo":
            raise ConfigError(f"LoRA trains a policy: dpo takes it, {self.kind} does not")
        if self.likelihood and self.kind != "reward":
            raise ConfigError(f"the likelihood feature is a reward model's: {self.kind} does not take it")

    @property
    def name(self) -> str:
        return self.kind

    def setup(self, run_dir: Path, timings: Timings) -> Setup:
        tokenizer_file = checkpoint.tokenizer_path(self.init_from)
        tokenizer = Tokenizer.load(tokenizer_file)
        config = checkpoint.read_config(self.init_from)
        with timings.phase("data_setup_s"):
            splits = split_pairs(read_pairs(self.data, max_bad_records=self.max_bad_records),
                                 validation_fraction=self.validation_fraction, test_fraction=self.test_fraction)
            for name in ("train", "validation"):
                if not splits[name]:
                    raise DataError(f"{self.data}: no {name} pairs after the split by hash; give more pairs or "
                                    f"another --validation-fraction")
            encoded = {name: encode_pairs(pairs[: None if name == "train" else self.eval_limit],
                                          tokenizer=tokenizer, config=config)
                       for name, pairs in splits.items() if pairs}
        checkpoint.write_run_files(run_dir, config=config, tokenizer_path=tokenizer_file)
        if self.kind == "reward":
            write_reward_record(run_dir, init_from=self.init_from, data=self.data, likelihood=self.likelihood)
        stream = pair_batches(encoded["train"], batch_size=self.batch_size, seed=self.train.seed)
        score = self._scorer()

        def quick(model) -> dict[str, Any]:
            return pairwise_accuracy(score, model, encoded["validation"])

        def final(model) -> dict[str, Any]:
            return {f"preference_{name}": pairwise_accuracy(score, model, encoded[name])
                    for name in ("validation", "test") if name in encoded}

        return Setup(config=config, tokenizer=tokenizer, data=stream, quick_evaluate=quick, evaluate=final,
                     format_results=format_results)

    def _scorer(self):
        """(model, batch) -> float32[2B]: what pairwise accuracy compares, row by row."""
        if self.kind == "reward":
            return nnx.jit(lambda model, batch: model(batch))
        reference = self._reference
        beta = self.beta

        @nnx.jit
        def implicit_reward(model, reference, batch):
            return beta * (reply_log_probs(model, batch) - reply_log_probs(reference, batch))

        return lambda model, batch: implicit_reward(model, reference, batch)

    def make_trainer(self, model: Gemini, optimizer: OptimizerConfig, *, mesh: Any = None):
        """The trainer, its model holding `init_from`'s parameters (a run being resumed restores its
        own); with `lora`, adapters on them train alone."""
        if self.lora is not None:
            model = start_lora(model, self.lora, run_dir=run_dir_of(self), init_from=self.init_from,
                               seed=self.train.seed)
            return DPOTrainer(model, optimizer, reference=self._reference, dpo=DPOConfig(beta=self.beta), mesh=mesh,
                              trainable=nnx.LoRAParam)
        refuse_lora_run(run_dir_of(self))
        if not checkpoint.has_checkpoints(run_dir_of(self)):
            checkpoint.load_params(self.init_from, model)
        if self.kind == "reward":
            return RewardTrainer(RewardModel(model, likelihood=self.likelihood), optimizer, mesh=mesh)
        return DPOTrainer(model, optimizer, reference=self._reference, dpo=DPOConfig(beta=self.beta), mesh=mesh)

    @functools.cached_property
    def _reference(self) -> Gemini:
        """DPO's frozen reference, `init_from`'s model: loaded once for the trainer and the evaluations."""
        return checkpoint.load_run(self.init_from).model


def pairwise_accuracy(score, model, pairs: EncodedPairs) -> dict[str, Any]:
    """{"accuracy": share of pairs whose chosen reply scores higher, "margin": the mean
    difference, "pairs": how many}, over `pairs` in batches of EVAL_BATCH."""
    margins = []
    for start in range(0, len(pairs), EVAL_BATCH):
        indices = list(range(start, min(start + EVAL_BATCH, len(pairs))))
        batch = with_loss_positions(pairs.batch(indices, EVAL_BATCH))
        scores = np.asarray(jax.device_get(score(model, batch)))
        real = np.asarray(real_pairs(batch)) > 0
        margins.append((scores[:EVAL_BATCH] - scores[EVAL_BATCH:])[real])
    margin = np.concatenate(margins)
    return {"accuracy": float(np.mean(margin > 0)), "margin": float(np.mean(margin)), "pairs": int(margin.size)}


def format_results(results: dict[str, dict[str, Any]]) -> str:
    lines = ["split        pairs   accuracy   mean margin"]
    for task, metrics in results.items():
        lines.append(f"{task.removeprefix('preference_'):<12} {metrics['pairs']:>5}   {100 * metrics['accuracy']:>7.2f}%"
                     f"   {metrics['margin']:>11.4f}")
    return "\n".join(lines)


def train_on_preferences(recipe: PreferenceRecipe) -> dict[str, Any]:
    """`train_and_evaluate` for a PreferenceRecipe."""
    return train_and_evaluate(recipe, make_trainer=recipe.make_trainer)

