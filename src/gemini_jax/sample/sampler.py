"""Text generation: prefill the prompts, then decode against a KV cache, one compiled step.

    sampler = Sampler(model, tokenizer)
    [answer] = sampler.generate([prompt_example], [SamplingParams(max_new_tokens=16)])

Prompts are encoded with the model's prompt format (the chat template, or PaliGemma's
prefix layout) and right-padded. Their lengths (and audio durations) are rounded up to a
bucket and the batch to a power of two (buckets.py), so a stream of requests reuses a few compiled shapes
instead of compiling one per prompt. A row stops at <end_of_turn> or <eos> (<eos> only for
the prefix format); the loop ends when every row has stopped or reached its max_new_tokens.

This is the static batch (evaluation: all prompts known up front). Requests that arrive over
time go to engine.Engine, whose slots they join and leave at any step; both run the compiled
programs of programs.py, so they give the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flax import nnx

from gemini_jax.config import ModelConfig
from gemini_jax.data.encode import EncodeError, ImageCodes, encode_example
from gemini_jax.data.media_cache import MediaCache
from gemini_jax.data.examples import Example
from gemini_jax.data.pipeline import collate
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.model import Gemini
from gemini_jax.sample.buckets import MEL_FRAMES_BUCKET, batch_bucket, length_bucket
from gemini_jax.sample.image_spans import ImageSpans, image_spans_for
from gemini_jax.sample.programs import DecodePrograms
from gemini_jax.sample.token_choice import SamplingParams, check_guidance, params_arrays


def stop_token_ids(config: ModelConfig, tokenizer: Tokenizer) -> list[int]:
    """The ids that end an answer. A chat model ends its turn with <end_of_turn>; a prefix-format
    one (PaliGemma) was trained to end its answer with <eos> only, and <end_of_turn> is ordinary
    text to it."""
    if config.prompt_format == "prefix":
        return [tokenizer.eos_id]
    return [tokenizer.end_of_turn_id, tokenizer.eos_id]


class Sampler:
    """A model that writes images (config.image_output) gives replies (`generate_ids`) with
    whole spans of codes (image_spans.py; `image_spans` overrides where the codes are);
    `generate`'s text keeps each image's two markers and leaves its codes out. `image_codes`
    (data/image_codes.py) reads the images of earlier model turns in a prompt."""

    def __init__(self, model: Gemini, tokenizer: Tokenizer, *, media_cache: MediaCache | None = None,
                 image_spans: ImageSpans | None = None, image_codes: ImageCodes | None = None):
        self.config = model.config
        self.tokenizer = tokenizer
        self.image_codes = image_codes
        self.image_spans = image_spans or image_spans_for(model.config, tokenizer)
        self.programs = DecodePrograms(model, vocab_size=tokenizer.vocab_size, image_spans=self.image_spans)
        self.media_cache = media_cache
        self.stop_ids = np.array(stop_token_ids(model.config, tokenizer), np.int32)

    def load_weights(self, model: Gemini) -> None:
        """Samples with `model`'s weights from now on (a policy being trained): the same
        architecture, so nothing compiles again."""
        self.programs.state = nnx.split(model)[1]

    def encode_prompt(self, prompt: Example) -> dict[str, np.ndarray]:
        return encode_example(prompt, tokenizer=self.tokenizer, config=self.config, for_generation=True,
                              media_cache=self.media_cache, image_codes=self.image_codes)

    def generate(self, prompts: Sequence[Example], params: Sequence[SamplingParams] | None = None) -> list[str]:
        """One answer per prompt (an Example whose last turn is the user's)."""
        return [self.text(ids) for ids in self.generate_ids(prompts, params)]

    def text(self, ids: Sequence[int]) -> str:
        """A reply's text; an image's codes are left out, its markers kept."""
        if self.image_spans is not None:
            ids = [t for t in ids if not self.image_spans.is_code(t)]
        return self.tokenizer.decode(ids)

    def generate_ids(self, prompts: Sequence[Example], params: Sequence[SamplingParams] | None = None, *,
                     guidance: float | None = None,
                     unconditional: Sequence[Example] | None = None) -> list[list[int]]:
        """Each prompt's reply ids, its stop token dropped.

        `guidance` s (a model that writes images): classifier-free guidance, each prompt run beside
        its `unconditional` prompt (one per prompt, e.g. the recipe's "Draw a picture."), the
        codes of its images chosen from u + s (c - u) (programs.py). s = 1 is unguided sampling of
        the prompt, s = 0 of the unconditional prompt; the text outside images is the prompt's own.
        """
        if not prompts:
            return []
        params = list(params) if params is not None else [SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params)} sampling settings")
        if guidance is not None:
            self._check_guidance(guidance, prompts, unconditional)
            # Each request is a pair of rows (prompt, unconditional prompt) with the request's settings.
            pairs = self._generate([p for pair in zip(prompts, unconditional) for p in pair],
                                   [p for p in params for _ in range(2)], guidance=guidance)
            return pairs[::2]
        if unconditional is not None:
            raise ValueError("unconditional prompts are read only with guidance (a scale s >= 0)")
        return self._generate(prompts, params)

    def _check_guidance(self, guidance: float, prompts: Sequence[Example], unconditional: Sequence[Example] | None):
        if self.image_spans is None:
            raise ValueError("guidance steers the codes of the images a model writes; this model writes text only "
                             "(config.image_output is None)")
        check_guidance(guidance)
        if unconditional is None or len(unconditional) != len(prompts):
            got = "none" if unconditional is None else len(unconditional)
            raise ValueError(f"guidance needs one unconditional prompt per prompt: {len(prompts)} prompts, {got} "
                             "unconditional ones")

    def _generate(self, prompts: Sequence[Example], params: list[SamplingParams], *,
                  guidance: float | None = None) -> list[list[int]]:
        """The static batch; with `guidance`, rows (2i, 2i + 1) are pairs (an even batch, padded
        with whole pairs of idle rows)."""
        rows = [self.encode_prompt(p) for p in prompts]
        lengths = [int(r["segment_ids"].sum()) for r in rows]
        max_new = max(p.max_new_tokens for p in params)
        longest = max(lengths)
        if longest + max_new > self.config.max_seq_len:
            raise EncodeError(
                f"prompt of {longest} tokens plus {max_new} new tokens exceeds the model's context of "
                f"{self.config.max_seq_len} tokens; shorten the prompt or lower max_new_tokens"
            )
        seq_len = length_bucket(longest, limit=self.config.max_seq_len)
        cache_len = length_bucket(seq_len + max_new, limit=self.config.max_seq_len)
        size = batch_bucket(len(rows))
        batch = collate(rows, seq_len=seq_len, config=self.config, batch_size=size,
                        mel_frames_multiple=MEL_FRAMES_BUCKET)
        pad = size - len(rows)
        sampling = {k: np.pad(v, (0, pad)) for k, v in params_arrays(params).items()}
        seeds = np.pad(np.array([p.seed for p in params], np.uint32), (0, pad))
        limits = np.array([p.max_new_tokens for p in params] + [0] * pad)

        spans = self.image_spans.initial(size, room=limits) if self.image_spans else None
        tokens, cache = self.programs.prefill(batch, sampling, seeds, cache_len=cache_len, spans=spans,
                                              guidance=guidance)
        out = np.zeros((size, max_new), np.int32)
        done = limits == 0
        length = np.zeros(size, np.int64)
        for step in range(max_new):
            current = np.asarray(tokens)
            out[:, step] = current
            length = np.where(done, length, step + 1)
            done |= np.isin(current, self.stop_ids) | (step + 1 >= limits)
            if done.all():
                break
            steps = np.full(size, step + 1, np.int32)  # the rows advance together
            if spans is not None:
                spans = self.image_spans.advance(spans, current, room=limits - steps)
            tokens, cache = self.programs.decode(cache, tokens, steps, ~done, sampling, seeds, spans, guidance)
        answers = []
        for row in range(len(rows)):
            ids = out[row, : length[row]].tolist()
            if ids and ids[-1] in self.stop_ids:
                ids = ids[:-1]
            answers.append(ids)
        return answers
