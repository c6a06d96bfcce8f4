"""Reinforcement learning from a reward as a recipe: the policy samples, a reward scores, the
policy moves (train/policy_gradient.py).

    gemini-jax rl --data prompts.jsonl --init-from runs/sft --reward exact_match
    gemini-jax rl --data prompts.jsonl --init-from runs/sft --reward runs/reward

Each step draws `prompts_per_step` training prompts (data/prompts.py), samples `group_size`
replies to each through the project's compiled sampler (sample/sampler.py) with the current
policy, scores them, and takes one update. The reward is `exact_match` (the reply against the
prompt's reference answer, SQuAD-normalised) or a reward model run (`gemini-jax reward`), which
must read the policy's tokens. Rollouts are deterministic: each reply's seed follows from the
run's seed and how many prompts came before it, and both are checkpointed with the run, so a
resumed run samples what the uninterrupted one would have. Validation prompts are answered
greedily and scored every --eval-every steps; test prompts once, at the end.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import grain
import jax
import numpy as np
from flax import nnx

from gemini_jax import checkpoint
from gemini_jax.config import ConfigError, ModelConfig
from gemini_jax.data.pipeline import collate
from gemini_jax.data.prompts import Prompt, read_prompts, split_prompts
from gemini_jax.data.records import DataError
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.evals.metrics import exact_match
from gemini_jax.model import Gemini
from gemini_jax.model.lora import LoraConfig, lora_weights, merge_lora
from gemini_jax.recipes.runner import Setup, Timings, run_dir_of, train_and_evaluate
from gemini_jax.sample.sampler import Sampler
from gemini_jax.sample.token_choice import SamplingParams
from gemini_jax.train.batches import with_loss_positions
from gemini_jax.train.config import TrainConfig
from gemini_jax.train.lora import refuse_lora_run, start_lora
from gemini_jax.train.optimizer import OptimizerConfig
from gemini_jax.train.policy_gradient import ADVANTAGES, PolicyGradientConfig, PolicyGradientTrainer, group_advantages
from gemini_jax.train.reward import load_reward_model

EXACT_MATCH = "exact_match"
EVAL_BATCH = 32  # prompts per greedy evaluation batch
# Scores a batch of rollouts: (rows with the replies scored, reply texts, references) -> float[R].
Reward = Callable[[dict[str, np.ndarray], list[str], list[str]], np.ndarray]
# A group's rewards -> its replies' advantages: (float[N * G], G) -> float32[N * G].
Advantages = Callable[[np.ndarray, int], np.ndarray]


class PolicyLink:
    """The trainer whose policy samples the rollouts. The data stream is built before the trainer
    (the runner's order), so the trainer is linked in when it is made."""

    def __init__(self):
        self.trainer: PolicyGradientTrainer | None = None

    def __deepcopy__(self, memo):  # a recipe's fields are copied to write results.json
        return self

    def __repr__(self) -> str:
        return "PolicyLink()"


def rollout_row(prompt_row: dict[str, np.ndarray], reply: Sequence[int], *, end_id: int | None) -> dict[str, np.ndarray]:
    """A training row: the prompt (as encoded for generation), the reply and, when the reply
    stopped, `end_id`; the loss scores the reply and its end only."""
    prompt = prompt_row["tokens"]
    ids = np.concatenate([prompt, np.asarray(reply, np.int32), [] if end_id is None else [end_id]]).astype(np.int32)
    length = ids.shape[0] - 1
    loss_mask = np.zeros(length, np.float32)
    loss_mask[prompt.shape[0] - 1:] = 1.0  # the last prompt token predicts the reply's first
    spans = np.zeros(length, np.int32)
    spans[: prompt.shape[0]] = prompt_row["media_spans"]
    media = {k: v for k, v in prompt_row.items() if k not in ("tokens", "media_spans", "segment_ids", "positions")}
    return {"tokens": ids[:-1], "targets": ids[1:], "loss_mask": loss_mask, "media_spans": spans,
            "segment_ids": np.ones(length, np.int32), "positions": np.arange(length, dtype=np.int32), **media}


class Rollouts:
    """The training stream: each item a batch of rollouts with "rewards" and "advantages"."""

    def __init__(self, prompts: Sequence[Prompt], *, sampler: Sampler, link: PolicyLink, reward: Reward,
                 prompts_per_step: int, group_size: int, temperature: float, max_new_tokens: int, seq_len: int,
                 seed: int, advantages: Advantages = group_advantages):
        if len(prompts) < prompts_per_step:
            raise DataError(f"{len(prompts)} training prompts are fewer than --prompts-per-step {prompts_per_step}")
        self.prompts, self.sampler, self.link, self.reward = prompts, sampler, link, reward
        self.prompts_per_step, self.group_size = prompts_per_step, group_size
        self.temperature, self.max_new_tokens, self.seq_len, self.seed = temperature, max_new_tokens, seq_len, seed
        self.advantages = advantages
        order = grain.MapDataset.range(len(prompts)).shuffle(seed=seed).repeat(None).batch(prompts_per_step)
        self._order = iter(order.to_iter_dataset())
        self._drawn = 0  # prompts drawn so far: with the seed, every reply's sampling seed

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        chosen = [self.prompts[int(i)] for i in next(self._order)]
        first = (self._drawn * self.group_size + self.seed * 1_000_003) % 2**31
        self._drawn += len(chosen)
        self.sampler.load_weights(plain(self.link.trainer.model))
        asked = [p for p in chosen for _ in range(self.group_size)]
        params = [SamplingParams(temperature=self.temperature, max_new_tokens=self.max_new_tokens, seed=first + i)
                  for i in range(len(asked))]
        return score_replies(self.sampler, asked, params, reward=self.reward, seq_len=self.seq_len,
                             group_size=self.group_size, advantages=self.advantages)

    def get_state(self) -> dict[str, Any]:
        return {"order": self._order.get_state(), "drawn": self._drawn}

    def set_state(self, state: dict[str, Any]) -> None:
        self._order.set_state(state["order"])
        self._drawn = int(state["drawn"])


def score_replies(sampler: Sampler, prompts: Sequence[Prompt], params: Sequence[SamplingParams], *, reward: Reward,
                  seq_len: int, group_size: int = 1, advantages: Advantages = group_advantages) -> dict[str, np.ndarray]:
    """Samples a reply to each prompt and returns their rows (batch.py's keys) with "rewards"
    and, by groups of `group_size` consecutive prompts, "advantages"."""
    replies = sampler.generate_ids([p.example for p in prompts], params)
    end_id = sampler.tokenizer.end_of_turn_id
    rows = [rollout_row(sampler.encode_prompt(p.example), ids, end_id=end_id if len(ids) < q.max_new_tokens else None)
            for p, ids, q in zip(prompts, replies, params)]
    batch = collate(rows, seq_len=seq_len, config=sampler.config)
    texts = [sampler.tokenizer.decode(ids) for ids in replies]
    rewards = np.asarray(reward(batch, texts, [p.reference for p in prompts]), np.float32)
    return {**batch, "rewards": rewards, "advantages": advantages(rewards, group_size)}


def exact_match_reward(batch: dict[str, np.ndarray], texts: list[str], references: list[str]) -> np.ndarray:
    del batch
    return np.array([exact_match(t, [r]) for t, r in zip(texts, references)], np.float32)


def reward_model_reward(run_dir: str, *, policy_run: str, policy_config: ModelConfig) -> Reward:
    """A reward run's scores; refused unless it reads the policy's tokens as the policy does."""
    if checkpoint.tokenizer_path(run_dir).read_bytes() != checkpoint.tokenizer_path(policy_run).read_bytes():
        raise ConfigError(f"the reward model {run_dir!r} has another tokenizer than the policy {policy_run!r}: it "
                          "would score other tokens than the policy writes; train it from the policy's run")
    model = load_reward_model(run_dir)
    if model.config.vocab_size != policy_config.vocab_size:
        raise ConfigError(f"the reward model's vocabulary ({model.config.vocab_size}) is not the policy's "
                          f"({policy_config.vocab_size})")
    score = nnx.jit(lambda m, b: m(b))
    # Only the likelihood reads loss_positions; a plain head given them would compile once per width.
    prepare = with_loss_positions if model.likelihood else dict

    def reward(batch: dict[str, np.ndarray], texts: list[str], references: list[str]) -> np.ndarray:
        del texts, references
        return np.asarray(jax.device_get(score(model, prepare(batch))), np.float32)

    return reward


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLRecipe:
    """A policy trained from `init_from` against `reward` on the prompts of `data`."""

    name: ClassVar[str] = "rl"
    multi_device: ClassVar[bool] = False
    eval_limit_field: ClassVar[str] = "eval_limit"
    data: str  # a JSONL file of conversations ending on their reference answer
    init_from: str
    reward: str = EXACT_MATCH  # or a reward model run directory
    run_dir: str | None = None  # None: runs/rl
    train: TrainConfig = TrainConfig(
        steps=100, optimizer=OptimizerConfig(learning_rate=1e-4, warmup_steps=10, weight_decay=0.0))
    prompts_per_step: int = 8
    group_size: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 16
    kl_coef: float = 0.05
    advantage: str = "group"  # "group": (r - mean) / std in each group; "best": 1 for its best reply, else 0
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    max_bad_records: int = 0
    eval_limit: int | None = None  # prompts per held-out split in the evaluations; None: all
    evaluate_at_end: bool = True
    link: PolicyLink = dataclasses.field(default_factory=PolicyLink, compare=False)
    lora: LoraConfig | None = None  # train adapters on init_from's weights (train/lora.py)

    def __post_init__(self):
        PolicyGradientConfig(kl_coef=self.kl_coef)
        if self.advantage not in ADVANTAGES:
            raise ConfigError(f"--advantage must be one of {', '.join(ADVANTAGES)}, got {self.advantage!r}")
        if self.group_size < 2:
            raise ConfigError(f"--group-size must be at least 2 (advantages compare replies to one prompt), "
                              f"got {self.group_size}")
        if not self.temperature > 0:
            raise ConfigError(f"--temperature must be positive (a group of greedy replies is one reply), "
                              f"got {self.temperature}")

    def setup(self, run_dir: Path, timings: Timings) -> Setup:
        tokenizer_file = checkpoint.tokenizer_path(self.init_from)
        tokenizer = Tokenizer.load(tokenizer_file)
        config = checkpoint.read_config(self.init_from)
        reward = (exact_match_reward if self.reward == EXACT_MATCH
                  else reward_model_reward(self.reward, policy_run=self.init_from, policy_config=config))
        with timings.phase("data_setup_s"):
            splits = split_prompts(read_prompts(self.data, max_bad_records=self.max_bad_records),
                                   validation_fraction=self.validation_fraction, test_fraction=self.test_fraction)
            for name in ("train", "validation"):
                if not splits[name]:
                    raise DataError(f"{self.data}: no {name} prompts after the split by hash")
            sampler = Sampler(checkpoint.load_run(self.init_from).model, tokenizer)
            longest = max(sampler.encode_prompt(p.example)["tokens"].shape[0] for p in sum(splits.values(), []))
            seq_len = min(8 * math.ceil((longest + self.max_new_tokens + 1) / 8), config.max_seq_len)
        checkpoint.write_run_files(run_dir, config=config, tokenizer_path=tokenizer_file)
        stream = Rollouts(splits["train"], sampler=sampler, link=self.link, reward=reward,
                          prompts_per_step=self.prompts_per_step, group_size=self.group_size,
                          temperature=self.temperature, max_new_tokens=self.max_new_tokens, seq_len=seq_len,
                          seed=self.train.seed, advantages=ADVANTAGES[self.advantage])
        limit = self.eval_limit

        def scores(model: Gemini, split: str) -> dict[str, Any]:
            sampler.load_weights(plain(model))
            prompts = splits[split][:limit]
            rewards = []
            for start in range(0, len(prompts), EVAL_BATCH):
                chunk = prompts[start:start + EVAL_BATCH]
                greedy = [SamplingParams(max_new_tokens=self.max_new_tokens)] * len(chunk)
                rewards.append(score_replies(sampler, chunk, greedy, reward=reward, seq_len=seq_len)["rewards"])
            return {"reward": float(np.mean(np.concatenate(rewards))), "prompts": len(prompts)}

        def final(model: Gemini) -> dict[str, Any]:
            return {f"rl_{name}": scores(model, name) for name in ("validation", "test") if splits[name]}

        return Setup(config=config, tokenizer=tokenizer, data=stream, quick_evaluate=lambda m: scores(m, "validation"),
                     evaluate=final, format_results=format_results)

    def make_trainer(self, model: Gemini, optimizer: OptimizerConfig, *, mesh: Any = None) -> PolicyGradientTrainer:
        """The trainer, its policy holding `init_from`'s parameters (a resumed run restores its own);
        with `lora`, adapters on them train alone."""
        trainable = nnx.Param
        if self.lora is not None:
            model = start_lora(model, self.lora, run_dir=run_dir_of(self), init_from=self.init_from,
                               seed=self.train.seed)
            trainable = nnx.LoRAParam
        else:
            refuse_lora_run(run_dir_of(self))
            if not checkpoint.has_checkpoints(run_dir_of(self)):
                checkpoint.load_params(self.init_from, model)
        trainer = PolicyGradientTrainer(model, optimizer, reference=checkpoint.load_run(self.init_from).model,
                                        policy_gradient=PolicyGradientConfig(kl_coef=self.kl_coef), mesh=mesh,
                                        trainable=trainable)
        self.link.trainer = trainer
        return trainer


def plain(model: Gemini) -> Gemini:
    """The weights the sampler reads: a LoRA policy's merged (one matmul per weight, and the
    sampler's programs take a plain model's state)."""
    return merge_lora(model) if lora_weights(model) else model


def format_results(results: dict[str, dict[str, Any]]) -> str:
    lines = ["split        prompts   mean reward (greedy)"]
    for task, metrics in results.items():
        lines.append(f"{task.removeprefix('rl_'):<12} {metrics['prompts']:>7}   {metrics['reward']:.4f}")
    return "\n".join(lines)


def train_with_rl(recipe: RLRecipe) -> dict[str, Any]:
    """`train_and_evaluate` for an RLRecipe."""
    return train_and_evaluate(recipe, make_trainer=recipe.make_trainer)
