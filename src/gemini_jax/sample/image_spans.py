"""Which tokens a row may sample next when a model writes images as discrete codes.

A model with image output writes `<start_of_image>`, exactly `codes_per_image` codes (ids of a
reserved range after the text vocabulary), then `<end_of_image>`, anywhere in its turn. Each
row carries one int32 of state, kept by the host loop that already reads every sampled token:

    OUTSIDE (-1)   text: any text token but <end_of_image>; codes never
    NO_ROOM (-2)   text, and too few tokens left to finish an image: <start_of_image> not either
    0 .. K-1       inside a span with that many codes written: only codes
    K              the span is full: only <end_of_image>

The compiled decode step applies `mask` to the logits before choosing a token, so a span is
always the right length and always closed, and codes never leak into text, whatever the
sampling settings; `advance` moves the host's state on by the tokens just sampled.

    spans = ImageSpans(start_id=9, end_id=10, first_code=1024, num_codes=1000, codes_per_image=64)
    state = spans.initial(rows=4, room=max_new_tokens)
    logits = spans.mask(logits, state, text_vocab=1024)  # inside the compiled step
    state = spans.advance(state, tokens, room=room_left)  # on the host, after it
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    from gemini_jax.config import ModelConfig
    from gemini_jax.data.tokenizer import Tokenizer

OUTSIDE, NO_ROOM = -1, -2


@dataclasses.dataclass(frozen=True)
class ImageSpans:
    start_id: int  # <start_of_image>
    end_id: int  # <end_of_image>
    first_code: int  # the id of code 0; codes are first_code .. first_code + num_codes - 1
    num_codes: int
    codes_per_image: int

    def __post_init__(self):
        if self.num_codes < 1 or self.codes_per_image < 1:
            raise ValueError(f"an image span needs num_codes >= 1 and codes_per_image >= 1, got "
                             f"{self.num_codes} and {self.codes_per_image}")
        codes = range(self.first_code, self.first_code + self.num_codes)
        if self.start_id == self.end_id or self.start_id in codes or self.end_id in codes:
            raise ValueError(f"<start_of_image> ({self.start_id}) and <end_of_image> ({self.end_id}) must be two "
                             f"ids outside the code range [{codes.start}, {codes.stop})")

    @property
    def span_length(self) -> int:
        """Tokens one image takes in a reply: its two markers and its codes."""
        return self.codes_per_image + 2

    def is_code(self, ids):
        return (ids >= self.first_code) & (ids < self.first_code + self.num_codes)

    def initial(self, rows: int, room: np.ndarray | int) -> np.ndarray:
        """The state before a reply's first token, `room` tokens (per row) left to sample."""
        return np.where(np.broadcast_to(room, (rows,)) >= self.span_length, OUTSIDE, NO_ROOM).astype(np.int32)

    def advance(self, state: np.ndarray, tokens: np.ndarray, *, room: np.ndarray | int) -> np.ndarray:
        """The state after each row sampled `tokens`, with `room` tokens still to sample."""
        state, tokens = np.asarray(state), np.asarray(tokens)
        inside = state >= 0
        state = np.where(tokens == self.start_id, 0,
                         np.where(inside & self.is_code(tokens), state + 1,
                                  np.where(tokens == self.end_id, OUTSIDE, state)))
        text = np.where(np.asarray(room) >= self.span_length, OUTSIDE, NO_ROOM)
        return np.where(state < 0, text, state).astype(np.int32)

    def allowed(self, state: jax.Array, *, vocab: int, text_vocab: int) -> jax.Array:
        """bool[B, vocab]: the tokens each row may sample in `state` (int32[B]); text is the ids
        below `text_vocab` (the tokenizer's), codes their own range, anything else never."""
        ids = jnp.arange(vocab)[None, :]
        code = self.is_code(ids)
        text = (ids < text_vocab) & ~code & (ids != self.end_id)
        state = state[:, None]
        return jnp.where(state == NO_ROOM, text & (ids != self.start_id),
                         jnp.where(state == OUTSIDE, text,
                                   jnp.where(state >= self.codes_per_image, ids == self.end_id, code)))

    def mask(self, logits: jax.Array, state: jax.Array, *, text_vocab: int) -> jax.Array:
        """Logits [B, V] with every token a row may not sample set to -inf."""
        return jnp.where(self.allowed(state, vocab=logits.shape[-1], text_vocab=text_vocab), logits, -jnp.inf)


def image_spans_for(config: ModelConfig, tokenizer: Tokenizer) -> ImageSpans | None:
    """Where a model's image codes are: the config's reserved range (None: it writes text only)."""
    from gemini_jax.data.tokenizer import END_OF_IMAGE, START_OF_IMAGE

    if config.image_output is None:
        return None
    return ImageSpans(start_id=tokenizer.special_id(START_OF_IMAGE), end_id=tokenizer.special_id(END_OF_IMAGE),
                      first_code=config.first_image_code, num_codes=config.image_output.codebook_size,
                      codes_per_image=config.image_output.codes_per_image)


def split_reply(ids: Sequence[int], spans: ImageSpans) -> list[list[int] | np.ndarray]:
    """A reply's ids as runs of text ids (lists) and images (int32 arrays of their codes, 0-based).
    A span left open (a reply cut short: the sampler never leaves one open) is dropped."""
    pieces: list[list[int] | np.ndarray] = [[]]
    codes: list[int] | None = None
    for token in ids:
        if codes is None:
            if token == spans.start_id:
                codes = []
            else:
                pieces[-1].append(int(token))
        elif token == spans.end_id:
            pieces += [np.asarray(codes, np.int32), []]
            codes = None
        else:
            codes.append(int(token) - spans.first_code)
    return [p for p in pieces if not isinstance(p, list) or p]
