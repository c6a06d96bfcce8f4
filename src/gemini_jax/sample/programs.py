"""The two compiled programs behind every decoder: prefill prompts, then decode one token per row.

    programs = DecodePrograms(model, vocab_size=tokenizer.vocab_size)
    tokens, cache = programs.prefill(batch, sampling, seeds, cache_len=64)   # step 0 of each row
    tokens, cache = programs.decode(cache, tokens, steps, active, sampling, seeds)

A model that writes images (`image_spans`) takes one more input per row, its image-span state
(image_spans.py, kept by the caller from the tokens it reads): the programs mask the logits by
it before choosing, so spans of codes come out whole and codes never appear outside one.

With `guidance` (a float s, image spans only: classifier-free guidance), the rows come in pairs,
(2p, 2p + 1) a request's prompt and its unconditional prompt: inside an image span the pair's
logits combine to u + s (c - u) (token_choice.guided_logits), outside it the prompt's own stay;
the mask, the choice (with the request's own settings and seed, those of row 2p) and the token
fed back are the pair's one. Without it nothing here is traced differently: the same programs.

`Sampler` (a static batch) and `Engine` (slots that requests join and leave) schedule them
differently but run these same programs, so an answer does not depend on which of them
serves it: every row samples with the key fold_in(key(seed), step) of its own request's step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemini_jax.model import Gemini
from gemini_jax.model.attention import KVCache
from gemini_jax.sample.image_spans import ImageSpans
from gemini_jax.sample.token_choice import check_guidance, guided_logits, sample_next

Arrays = dict[str, np.ndarray]


class DecodePrograms:
    """A model's weights, split once, and its jitted prefill and decode step.

    `vocab_size` is the tokenizer's: ids the model's table has beyond it are never drawn, but
    for the codes of `image_spans`, inside a span.
    """

    def __init__(self, model: Gemini, *, vocab_size: int, image_spans: ImageSpans | None = None):
        self.config = model.config
        self.vocab_size = vocab_size
        self.image_spans = image_spans
        self.graphdef, self.state = nnx.split(model)
        self._prefill = jax.jit(self._prefill_fn, static_argnames=("cache_len",))
        self._decode = jax.jit(self._decode_fn, donate_argnames=("cache",))

    def init_cache(self, *, batch_size: int, max_len: int) -> KVCache:
        return nnx.merge(self.graphdef, self.state).init_cache(batch_size=batch_size, max_len=max_len)

    def prefill(self, batch: Arrays, sampling: Arrays, seeds: np.ndarray, *, cache_len: int,
                spans: np.ndarray | None = None, guidance: float | None = None) -> tuple[jax.Array, KVCache]:
        """Each row's first answer token (its step 0) and a KV cache of `cache_len` positions
        (at least the batch's length) holding the prompts. `spans`: each row's image-span state
        (needed with `image_spans`, ignored without). `guidance`: rows in pairs (module docstring)."""
        return self._prefill(self.state, batch, sampling, seeds, self._spans(spans, seeds),
                             self._guidance(guidance, seeds), cache_len=cache_len)

    def decode(self, cache: KVCache, tokens: np.ndarray, steps: np.ndarray, active: np.ndarray, sampling: Arrays,
               seeds: np.ndarray, spans: np.ndarray | None = None,
               guidance: float | None = None) -> tuple[jax.Array, KVCache]:
        """Feeds each row its token and samples the next with its request's `steps`; `cache` is
        donated. A row with `active` False computes a token nobody reads, and its write lands
        past its valid region: only its index and validity must stay put, so that it cannot
        walk off the end of the cache."""
        return self._decode(self.state, cache, tokens, steps, active, sampling, seeds, self._spans(spans, seeds),
                            self._guidance(guidance, seeds))

    def _spans(self, spans: np.ndarray | None, seeds: np.ndarray) -> np.ndarray | None:
        if self.image_spans is None:
            return None
        if spans is None:
            raise ValueError("a model that writes images needs each row's image-span state (image_spans.py)")
        if np.shape(spans) != np.shape(seeds):
            raise ValueError(f"image-span state of shape {np.shape(spans)} for {np.shape(seeds)} rows")
        return np.asarray(spans, np.int32)

    def _guidance(self, guidance: float | None, seeds: np.ndarray) -> np.ndarray | None:
        """The scale as a float32 scalar (traced: every s shares one compiled program), or None."""
        if guidance is None:
            return None
        if self.image_spans is None:
            raise ValueError("guidance steers a model's image codes; this model writes text only")
        if np.shape(seeds)[0] % 2:
            raise ValueError(f"guided rows come in pairs (prompt, unconditional prompt); got {np.shape(seeds)[0]} rows")
        return np.float32(check_guidance(guidance))

    def _choose(self, logits, *, seeds, steps, sampling, spans, guidance=None):
        if guidance is not None:  # one choice per pair, from the pair's combined logits, fed to both rows
            first = slice(0, None, 2)
            logits = guided_logits(logits, scale=guidance, guide=spans[first] >= 0)
            tokens = self._choose(logits, seeds=seeds[first], steps=steps[first], spans=spans[first],
                                  sampling={k: v[first] for k, v in sampling.items()})
            return jnp.repeat(tokens, 2)
        vocab_size = self.vocab_size
        if self.image_spans is not None:
            logits = self.image_spans.mask(logits, spans, text_vocab=self.vocab_size)
            vocab_size = logits.shape[-1]  # the mask has ruled out what is neither text nor a code
        return sample_next(logits, seeds=seeds, steps=steps, sampling=sampling, vocab_size=vocab_size)

    def _prefill_fn(self, state, batch, sampling, seeds, spans, guidance, *, cache_len):
        model = nnx.merge(self.graphdef, state)
        cache = model.init_cache(batch_size=batch["tokens"].shape[0], max_len=cache_len)
        out, cache = model.prefill(batch, cache)
        last = jnp.maximum(cache.index - 1, 0)  # [B]: each row's last prompt token
        logits = jnp.take_along_axis(out.logits, last[:, None, None], axis=1)[:, 0]  # [B, V]
        tokens = self._choose(logits, seeds=seeds, steps=jnp.zeros(seeds.shape, jnp.int32), sampling=sampling,
                              spans=spans, guidance=guidance)
        return tokens, cache

    def _decode_fn(self, state, cache, tokens, steps, active, sampling, seeds, spans, guidance):
        model = nnx.merge(self.graphdef, state)
        logits, stepped = model.decode_step(tokens, cache)  # [B, V]
        cache = KVCache(
            layers=stepped.layers,
            valid=jnp.where(active[:, None], stepped.valid, cache.valid),
            index=jnp.where(active, stepped.index, cache.index),
            code_run=jnp.where(active, stepped.code_run, cache.code_run),
        )
        tokens = self._choose(logits, seeds=seeds, steps=steps, sampling=sampling, spans=spans, guidance=guidance)
        return tokens, cache
