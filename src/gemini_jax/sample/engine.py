"""Continuous batching: a fixed set of decode slots that requests join and leave at any step.

    engine = Engine(model, tokenizer, slots=8)
    request = engine.submit(example, SamplingParams(max_new_tokens=64), stop=["\\n\\n"],
                            on_event=lambda e: print(e.delta, end=""))
    engine.start()            # a background thread; or call engine.step() yourself
    print(request.result().text)

Why this shape. One KV cache of [slots, max_len, K, H] per layer is allocated once (K = 1 is
the report's multi-query attention, which is what makes a wide cache affordable). A request is
prefilled alone, its length rounded up to a bucket (a few compiled shapes, media included),
and its keys and values are copied into a free slot by a jitted update that donates the cache,
so the copy happens in place. Every step then runs ONE compiled decode step over all slots,
whatever the requests' lengths or how many slots are busy: an idle slot computes junk that is
never read, and its cache index and validity are left as they were. A request that arrives
while others are mid-answer joins at the next step instead of waiting for the batch to drain.

Each slot carries its own sampling settings, and its random key is fold_in(key(seed), step)
with the request's own step (0 for the first answer token), so an answer depends on its
request alone, never on its slot or its companions. `Sampler` runs the same compiled programs
(programs.py), so it gives the same answers.

A model that writes images (config.image_output) has one more per-slot input, its image-span
state (image_spans.py), kept here from the tokens each slot samples; a request's text then
leaves out each image's markers and codes, and each finished image reaches the listener as an
Event holding its codes, in order with the text around it.

Prompts are prefilled one at a time on purpose: a batched prefill runs faster once compiled,
but every mix of batch size, length and media is another compiled shape, and compiling those
under load costs more than it saves (docs/serving.md has the measurements).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gemini_jax.data.encode import EncodeError, ImageCodes, encode_example
from gemini_jax.data.media_cache import MediaCache
from gemini_jax.data.examples import Content, Example, Part
from gemini_jax.data.pipeline import collate
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.model import Gemini
from gemini_jax.model.attention import KVCache, LayerKV
from gemini_jax.sample.buckets import MEL_FRAMES_BUCKET, length_bucket
from gemini_jax.sample.image_spans import image_spans_for, split_reply
from gemini_jax.sample.programs import DecodePrograms
from gemini_jax.sample.sampler import stop_token_ids
from gemini_jax.sample.token_choice import SamplingParams, params_arrays
from gemini_jax.sample.streaming import TextStream

log = logging.getLogger(__name__)

Row = Mapping[str, np.ndarray]


class QueueFull(RuntimeError):
    """The engine already holds as many requests as its slots plus its queue allow."""


@dataclasses.dataclass(frozen=True)
class Event:
    """What a request's listener hears after each of its steps: new text, and at the end why it ended.

    finish_reason: None while running; "stop" (a stop token or stop string), "length"
    (max_new_tokens reached), "cancelled", or "error" (then `error` says what happened).
    image: the codes (0-based, int32[codes_per_image]) of an image the model just finished, which
    comes after `delta`'s text.
    """

    request_id: int
    delta: str
    finish_reason: str | None = None
    error: str | None = None
    image: np.ndarray | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]  # the answer's tokens, without the stop token
    finish_reason: str
    prompt_tokens: int


class Request:
    """A submitted prompt: `result()` waits for its Completion; `cancel()` frees its slot at the next step."""

    def __init__(self, request_id: int, row: Row, params: SamplingParams, stop: Sequence[str],
                 on_event: Callable[[Event], None] | None):
        self.id = request_id
        self.row = row
        self.params = params
        self.stream = TextStream(stop)
        self.on_event = on_event
        self.prompt_tokens = int(row["tokens"].shape[0])
        self.token_ids: list[int] = []
        self.cancelled = False
        self.completion: Completion | None = None
        self.error: str | None = None
        self._done = threading.Event()

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Completion:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"request {self.id} failed: {self.error}")
        assert self.completion is not None
        return self.completion


@dataclasses.dataclass
class EngineStats:
    requests_finished: int = 0
    tokens_generated: int = 0
    decode_steps: int = 0


def _insert(cache: KVCache, row: KVCache, slot: jax.Array) -> KVCache:
    """Copies a one-row prefill cache (length L <= max_len) into row `slot` of the engine's cache."""
    zero = jnp.int32(0)
    start = (slot, zero, zero, zero)
    layers = tuple(
        LayerKV(k=jax.lax.dynamic_update_slice(c.k, r.k.astype(c.k.dtype), start),
                v=jax.lax.dynamic_update_slice(c.v, r.v.astype(c.v.dtype), start))
        for c, r in zip(cache.layers, row.layers, strict=True)
    )  # each [slots, S, K, H]
    valid_row = jnp.zeros((1, cache.max_len), bool).at[:, : row.max_len].set(row.valid)  # [1, S]
    valid = jax.lax.dynamic_update_slice(cache.valid, valid_row, (slot, zero))  # [slots, S]
    index = jax.lax.dynamic_update_slice(cache.index, row.index, (slot,))  # [slots]
    code_run = jax.lax.dynamic_update_slice(cache.code_run, row.code_run, (slot,))  # [slots]
    return KVCache(layers=layers, valid=valid, index=index, code_run=code_run)


class Engine:
    """Continuous-batching decoder over `slots` rows of one preallocated KV cache of `max_len` positions.

    `max_queue` bounds the requests waiting for a slot (None: unbounded): `submit` raises
    QueueFull once slots + max_queue requests are in flight. `image_codes` (data/image_codes.py)
    reads the images of earlier model turns in a prompt, for a model that writes images.
    """

    def __init__(self, model: Gemini, tokenizer: Tokenizer, *, slots: int = 8, max_len: int | None = None,
                 max_queue: int | None = None, media_cache: MediaCache | None = None,
                 image_codes: ImageCodes | None = None):
        config = model.config
        max_len = config.max_seq_len if max_len is None else max_len
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        if not 1 <= max_len <= config.max_seq_len:
            raise ValueError(f"max_len must be in [1, {config.max_seq_len}] (the model's context), got {max_len}")
        if max_queue is not None and max_queue < 0:
            raise ValueError(f"max_queue must be >= 0 or None, got {max_queue}")
        self.config = config
        self.tokenizer = tokenizer
        self.slots = slots
        self.max_len = max_len
        self.max_queue = max_queue
        self.media_cache = media_cache
        self.image_codes = image_codes
        self.stop_ids = frozenset(stop_token_ids(config, tokenizer))
        self.image_spans = image_spans_for(config, tokenizer)
        self.programs = DecodePrograms(model, vocab_size=tokenizer.vocab_size, image_spans=self.image_spans)
        self.cache = self.programs.init_cache(batch_size=slots, max_len=max_len)
        # Per-slot inputs of the decode step, kept on the host: they change by a few entries a
        # step, and the sampled tokens come back to the host every step anyway (to be streamed).
        self._tokens = np.zeros(slots, np.int32)  # the token each slot feeds next
        self._steps = np.zeros(slots, np.int32)  # the request's own step: the key it samples with
        self._active = np.zeros(slots, bool)
        self._seeds = np.zeros(slots, np.uint32)
        self._spans = np.full(slots, -1, np.int32) if self.image_spans else None  # image-span state
        self._sampling = params_arrays([SamplingParams()] * slots)
        self._live: list[Request | None] = [None] * slots
        self._waiting: collections.deque[Request] = collections.deque()
        self._in_flight = 0
        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._running = threading.Event()  # cleared: the loop thread holds (pause)
        self._running.set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats = EngineStats()
        self._insert = jax.jit(_insert, donate_argnames=("cache",))

    # -- requests ------------------------------------------------------------------------------

    def encode(self, prompt: Example) -> dict[str, np.ndarray]:
        """The prompt's arrays (the chat template, media preprocessed as in training)."""
        return encode_example(prompt, tokenizer=self.tokenizer, config=self.config, for_generation=True,
                              max_len=self.max_len, media_cache=self.media_cache, image_codes=self.image_codes)

    def submit(self, prompt: Example | Row, params: SamplingParams = SamplingParams(), *,
               stop: Sequence[str] = (), on_event: Callable[[Event], None] | None = None) -> Request:
        """Queues a prompt (an Example, or the arrays `encode` made of one); it joins at the next step.

        `on_event` is called from the engine's thread after each of the request's steps; it
        must be quick (hand the event on, e.g. to an asyncio loop) and must not raise.
        """
        row = self.encode(prompt) if isinstance(prompt, Example) else prompt
        length = int(row["tokens"].shape[0])
        if length + params.max_new_tokens > self.max_len:
            raise EncodeError(
                f"prompt of {length} tokens plus {params.max_new_tokens} new tokens exceeds the engine's context "
                f"of {self.max_len} tokens; shorten the prompt or lower max_new_tokens"
            )
        with self._lock:
            if self.max_queue is not None and self._in_flight >= self.slots + self.max_queue:
                raise QueueFull(f"{self._in_flight} requests in flight ({self.slots} slots, queue of {self.max_queue})")
            request = Request(next(self._ids), row, params, stop, on_event)
            self._waiting.append(request)
            self._in_flight += 1
            self._lock.notify_all()
        return request

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active_slots(self) -> int:
        return int(self._active.sum())

    def has_work(self) -> bool:
        return bool(self._waiting) or bool(self._active.any())

    # -- the loop ------------------------------------------------------------------------------

    def step(self) -> bool:
        """Admits waiting requests into free slots, then decodes one token in every busy slot.
        Returns whether requests remain (waiting or decoding)."""
        for slot in range(self.slots):
            request = self._live[slot]
            if request is not None and request.cancelled:
                self._finish(slot, "cancelled")
        self._admit()
        if self._active.any():
            try:
                tokens, self.cache = self.programs.decode(self.cache, self._tokens, self._steps, self._active,
                                                          self._sampling, self._seeds, self._spans)
                tokens = np.asarray(tokens)
            except Exception as e:  # a failed step fails its requests, not the server
                log.exception("decode step failed")
                for slot in np.flatnonzero(self._active):
                    self._finish(int(slot), "error", error=f"decode step failed: {e}")
                self.cache = self._fresh_cache()
                return self.has_work()
            self.stats.decode_steps += 1
            for slot in np.flatnonzero(self._active):
                self._advance(int(slot), int(tokens[slot]))
        return self.has_work()

    def _fresh_cache(self) -> KVCache:
        return self.programs.init_cache(batch_size=self.slots, max_len=self.max_len)

    def _admit(self) -> None:
        free = [s for s in range(self.slots) if self._live[s] is None]
        while free:
            with self._lock:
                if not self._waiting:
                    return
                request = self._waiting.popleft()
            if request.cancelled:
                self._settle(request, "cancelled")
                continue
            slot = free.pop(0)
            try:
                token = self._prefill_into(slot, request)
            except Exception as e:
                log.exception("prefill of request %d failed", request.id)
                self._settle(request, "error", error=f"prefill failed: {e}")
                free.insert(0, slot)
                continue
            self._live[slot] = request
            self._active[slot] = True
            self._seeds[slot] = np.uint32(request.params.seed)
            for name, value in params_arrays([request.params]).items():
                self._sampling[name][slot] = value[0]
            self._advance(slot, token)

    def _prefill_into(self, slot: int, request: Request) -> int:
        bucket = length_bucket(request.prompt_tokens, limit=self.max_len)
        batch = collate([request.row], seq_len=bucket, config=self.config, mel_frames_multiple=MEL_FRAMES_BUCKET)
        seeds = np.array([request.params.seed], np.uint32)
        spans = None
        if self.image_spans is not None:
            spans = self.image_spans.initial(1, room=request.params.max_new_tokens)
            self._spans[slot] = spans[0]
        token, row_cache = self.programs.prefill(batch, params_arrays([request.params]), seeds, cache_len=bucket,
                                                 spans=spans)
        self.cache = self._insert(self.cache, row_cache, jnp.int32(slot))
        return int(np.asarray(token)[0])

    def _advance(self, slot: int, token: int) -> None:
        """Takes the token a slot just sampled: streams its text, or ends the request."""
        request = self._live[slot]
        assert request is not None
        self.stats.tokens_generated += 1
        if token in self.stop_ids:
            self._finish(slot, "stop")
            return
        request.token_ids.append(token)
        image = None
        if self.image_spans is not None:
            room = request.params.max_new_tokens - len(request.token_ids)
            self._spans[slot] = self.image_spans.advance(self._spans[slot:slot + 1], np.array([token]), room=room)[0]
            if token == self.image_spans.end_id:
                image = split_reply(request.token_ids, self.image_spans)[-1]
        delta, stopped = request.stream.update(self._text(request.token_ids))
        if image is not None:  # the text before it goes with it, even where that is empty
            self._emit(request, Event(request.id, delta, image=image))
            delta = ""
        if stopped:
            self._finish(slot, "stop", delta=delta)
        elif len(request.token_ids) >= request.params.max_new_tokens:
            self._finish(slot, "length", delta=delta)
        else:
            self._tokens[slot] = token
            self._steps[slot] = len(request.token_ids)
            if delta:
                self._emit(request, Event(request.id, delta))

    def _text(self, ids: list[int]) -> str:
        """A reply's text; a model that writes images leaves their markers and codes out."""
        if self.image_spans is None:
            return self.tokenizer.decode(ids)
        return "".join(self.tokenizer.decode(p) for p in split_reply(ids, self.image_spans)
                       if isinstance(p, list))

    def _finish(self, slot: int, reason: str, *, delta: str = "", error: str | None = None) -> None:
        request = self._live[slot]
        assert request is not None
        self._live[slot] = None
        self._active[slot] = False
        self._settle(request, reason, delta=delta, error=error)

    def _settle(self, request: Request, reason: str, *, delta: str = "", error: str | None = None) -> None:
        if reason != "error":
            tail, _ = request.stream.update(self._text(request.token_ids), final=True)
            delta += tail
            request.completion = Completion(text=request.stream.text, token_ids=list(request.token_ids),
                                            finish_reason=reason, prompt_tokens=request.prompt_tokens)
        request.error = error
        with self._lock:
            self._in_flight -= 1
        self.stats.requests_finished += 1
        self._emit(request, Event(request.id, delta, finish_reason=reason, error=error))
        request._done.set()

    @staticmethod
    def _emit(request: Request, event: Event) -> None:
        if request.on_event is None:
            return
        try:
            request.on_event(event)
        except Exception:  # a listener's bug must not stop the other requests
            log.exception("listener of request %d raised", request.id)

    # -- running -------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Compiles, before any request, the programs of a short text request: its prefill (the
        smallest length bucket), the copy into a slot and the decode step every request runs.
        Call it before `start`. Longer prompts and media compile at their first use, or load from
        JAX's persistent compilation cache where an earlier run compiled them."""
        prompt = Example(contents=(Content("user", (Part(text="Hello"),)),))
        self._prefill_into(0, Request(-1, self.encode(prompt), SamplingParams(max_new_tokens=1), (), None))
        # Every slot is idle: the step leaves their cache indices and validity as they were.
        tokens, self.cache = self.programs.decode(self.cache, self._tokens, self._steps, self._active,
                                                  self._sampling, self._seeds, self._spans)
        jax.block_until_ready(tokens)

    def run_until_idle(self) -> None:
        """Steps in the calling thread until no request is waiting or decoding."""
        while self.step():
            pass

    def generate(self, prompts: Sequence[Example | Row], params: Sequence[SamplingParams] | None = None, *,
                 stop: Sequence[str] = ()) -> list[Completion]:
        """Submits every prompt, runs them to the end (in this thread unless the loop thread runs)."""
        params = list(params) if params is not None else [SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params)} sampling settings")
        requests = [self.submit(p, s, stop=stop) for p, s in zip(prompts, params)]
        if self._thread is None:
            self.run_until_idle()
        return [r.result() for r in requests]

    def start(self) -> None:
        """Runs the loop in a daemon thread: it sleeps while there is no work."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="gemini-jax-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self._running.wait()
            with self._lock:
                while not self._stopping and not self.has_work():
                    self._lock.wait()
                if self._stopping:
                    return
            self._running.wait()
            self.step()

    def pause(self) -> None:
        """Holds the loop thread before its next step (requests still queue); `resume` lets it go on."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def close(self) -> None:
        """Stops the loop thread; requests still in flight are cancelled."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        self._running.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for request in [*self._waiting, *(r for r in self._live if r is not None)]:
            request.cancel()
        while self.has_work():
            self.step()
