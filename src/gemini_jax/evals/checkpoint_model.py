"""A checkpoint as the evaluation `Model` (protocols.py): generation through our Sampler,
log-likelihood through one forward pass that scores only the continuation's tokens.

    model = CheckpointModel.load("runs/demo")
    model.generate(["Q: 2+2?\\nA:"], temperature=0.0, num_samples=1, seed=0, max_tokens=8, stop=["\\n"])
    model.loglikelihood([("The capital of France is", " Paris")])

Text prompts are plain documents, `<bos> text`, without the chat template: the benchmarks' own
k-shot layouts are the prompt. A prompt may also be an `Example` (a user turn with images,
audio or video), which is rendered with the model's prompt format (the chat template, or
PaliGemma's prefix layout), as the multimodal tasks need. Log-likelihoods are of text only, as
plain `<bos> context continuation` token sequences.

Too long for the context: a log-likelihood keeps the tokens nearest the continuation (the
context is cut from the left), and a continuation longer than the context is scored in
windows, each predicting new tokens after as much preceding text as fits (the rolling
log-likelihood of a whole document is the same computation with an empty context). A text
prompt to generate from is cut from the left to leave room for `max_tokens` (itself capped at
half the context); after a media prompt, which cannot be cut, the answer is shortened instead.
Each cut is counted in `truncated` and reported once with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from gemini_jax.data.encode import MediaCache
from gemini_jax.data.examples import Content, Example, Part
from gemini_jax.data.pipeline import collate
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.evals.scoring import LossScorer
from gemini_jax.model import Gemini
from gemini_jax.sample.buckets import length_bucket
from gemini_jax.sample.sampler import Sampler
from gemini_jax.sample.token_choice import SamplingParams
from gemini_jax.sample.streaming import truncate_at_stop

Prompt = str | Example


def text_prompt(text: str) -> Example:
    """A plain document to continue: `<bos> text`, no chat template."""
    return Example(contents=(Content("user", (Part(text=text),)),), raw_text=True)


def scoring_windows(ids: Sequence[int], first: int, max_len: int) -> list[tuple[list[int], int]]:
    """Windows that together score ids[first:], each given as (window ids, how many of its last
    targets are new). A window holds at most max_len + 1 ids (max_len inputs), and each scores up
    to max_len new targets after as much preceding text as fits: the context is cut from the left.

        scoring_windows([0, 1, 2, 3, 4], first=3, max_len=8) == [([0, 1, 2, 3, 4], 2)]
        scoring_windows([0, 1, 2, 3, 4], first=1, max_len=2) == [([0, 1, 2], 2), ([2, 3, 4], 2)]
    """
    if not 1 <= first <= len(ids):
        raise ValueError(f"the first scored token must be in [1, {len(ids)}], got {first}")
    windows = []
    start = first
    while start < len(ids):
        end = min(start + max_len, len(ids))
        windows.append((list(ids[max(0, end - 1 - max_len) : end]), end - start))
        start = end
    return windows


class CheckpointModel:
    """`protocols.Model` over a Gemini model and its tokenizer (see the module docstring)."""

    def __init__(self, model: Gemini, tokenizer: Tokenizer, *, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.config = model.config
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.sampler = Sampler(model, tokenizer, media_cache=MediaCache(max_bytes=256 << 20))
        self.scorer = LossScorer(model)
        self.truncated = 0  # prompts or contexts cut from the left to fit the context

    @classmethod
    def load(cls, run_dir: str, *, batch_size: int = 16) -> CheckpointModel:
        from flax import nnx

        from gemini_jax import checkpoint

        # An abstract model filled from the checkpoint: running the initialisers first would
        # cost more than the restore (tens of seconds for a small model on a laptop).
        config = checkpoint.read_config(run_dir)
        tokenizer = Tokenizer.load(checkpoint.tokenizer_path(run_dir))
        model = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
        checkpoint.load_params(run_dir, model)
        return cls(model, tokenizer, batch_size=batch_size)

    def _note_truncation(self, what: str) -> None:
        if self.truncated == 0:
            warnings.warn(f"{what} longer than the model's context of {self.config.max_seq_len} tokens was cut "
                          "from the left (counted in CheckpointModel.truncated)", stacklevel=3)
        self.truncated += 1

    # --- generation ----------------------------------------------------------------------------

    def _fit_prompt(self, prompt: Prompt, max_tokens: int) -> Example:
        if isinstance(prompt, Example):
            return prompt
        budget = self.config.max_seq_len - max_tokens - 1  # one for <bos>
        if budget < 1:
            raise ValueError(f"max_tokens={max_tokens} leaves no room for a prompt in the model's context of "
                             f"{self.config.max_seq_len} tokens")
        ids = self.tokenizer.encode(prompt)
        if len(ids) > budget:
            self._note_truncation("a prompt")
            while len(ids) > budget:  # re-encoding a decoded suffix can merge pieces differently
                prompt = self.tokenizer.decode(ids[len(ids) - budget :])
                ids = self.tokenizer.encode(prompt)
        return text_prompt(prompt)

    def generate(
        self, prompts: Sequence[Prompt], *, temperature: float, num_samples: int, seed: int, max_tokens: int,
        stop: Sequence[str] = (),
    ) -> list[list[str]]:
        """`num_samples` continuations per prompt, sample i drawn with seed `seed + i`, each cut at
        its first stop string. Greedy (temperature 0) decodes once and repeats the answer."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        max_tokens = max(1, min(max_tokens, self.config.max_seq_len // 2))
        draws = 1 if temperature == 0 else num_samples
        rows = [(p, i) for p in range(len(prompts)) for i in range(draws)]
        examples = [self._fit_prompt(p, max_tokens) for p in prompts]
        outputs: list[str] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            # A media prompt cannot be cut; its answer is shortened to fit instead.
            longest = max(self._length(examples[p]) for p, _ in chunk)
            room = max(1, min(max_tokens, self.config.max_seq_len - longest))
            if room < max_tokens:
                self._note_truncation("an answer (after a media prompt)")
            params = [SamplingParams(temperature=temperature, max_new_tokens=room, seed=seed + i) for _, i in chunk]
            outputs += self.sampler.generate([examples[p] for p, _ in chunk], params)
        texts = [truncate_at_stop(o, stop) for o in outputs]
        return [texts[p * draws : (p + 1) * draws] * (num_samples // draws) for p in range(len(prompts))]

    def _length(self, example: Example) -> int:
        if example.raw_text:  # text: <bos> and its tokens, no need to render it
            return 1 + sum(len(self.tokenizer.encode(p.text)) for c in example.contents for p in c.parts)
        return int(self.sampler.encode_prompt(example)["segment_ids"].sum())

    # --- log-likelihood ------------------------------------------------------------------------

    def loglikelihood_ids(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether greedy decoding would write the continuation)
        for token-id pairs; <bos> is put before each context."""
        windows: list[tuple[int, list[int], int]] = []  # (pair index, ids, new targets)
        for index, (context, continuation) in enumerate(pairs):
            if not continuation:
                raise ValueError(f"pair {index}: the continuation has no tokens to score")
            ids = [self.tokenizer.bos_id, *context, *continuation]
            first = len(ids) - len(continuation)
            pieces = scoring_windows(ids, first, self.config.max_seq_len)
            if len(pieces[0][0]) < first + pieces[0][1]:
                self._note_truncation("a context")
            windows += [(index, w, n) for w, n in pieces]
        totals = np.zeros(len(pairs))
        greedy = np.ones(len(pairs), bool)
        # Longest first: a batch holds windows of similar length, padded to a few bucketed shapes.
        windows.sort(key=lambda w: -len(w[1]))
        for start in range(0, len(windows), self.batch_size):
            chunk = windows[start : start + self.batch_size]
            scores = self.scorer.rows(self._batch([(w, n) for _, w, n in chunk]))
            for row, (index, _, _) in enumerate(chunk):
                totals[index] -= scores.loss[row]
                greedy[index] &= bool(scores.greedy[row])
        return [(float(t), bool(g)) for t, g in zip(totals, greedy)]

    def _batch(self, windows: list[tuple[list[int], int]]) -> dict[str, np.ndarray]:
        rows = []
        for ids, new in windows:
            length = len(ids) - 1
            mask = np.zeros(length, np.float32)
            mask[length - new :] = 1.0
            rows.append({
                "tokens": np.asarray(ids[:-1], np.int32), "targets": np.asarray(ids[1:], np.int32),
                "loss_mask": mask, "segment_ids": np.ones(length, np.int32),
                "positions": np.arange(length, dtype=np.int32), "media_spans": np.zeros(length, np.int32),
            })
        longest = max(r["tokens"].shape[0] for r in rows)
        seq_len = length_bucket(longest, limit=self.config.max_seq_len)
        # One batch size (short final batches padded): one compilation per length bucket.
        return collate(rows, seq_len=seq_len, config=self.config, batch_size=self.batch_size)

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """log p(continuation | context), summed over the continuation's tokens. Context and
        continuation are tokenized apart, so the continuation's tokens do not depend on it."""
        ids = [(self.tokenizer.encode(c), self.tokenizer.encode(x)) for c, x in pairs]
        return [score for score, _ in self.loglikelihood_ids(ids)]

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """log p(text) of whole documents after <bos>, in windows of the model's context."""
        return [score for score, _ in self.loglikelihood_ids([([], self.tokenizer.encode(t)) for t in texts])]
