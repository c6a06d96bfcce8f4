"""`gemini-jax serve`: an OpenAI-compatible chat API over the continuous-batching engine.

    gemini-jax serve --checkpoint runs/demo --port 8000 --slots 8
    curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "What colour is the shape?"}], "temperature": 0}'

Routes: POST /v1/chat/completions (stream: true answers with server-sent events, `data: {chunk}`
lines ending in `data: [DONE]`), GET /v1/models, GET /health, GET /metrics (JSON, or Prometheus
text with ?format=prometheus).

The engine runs in one background thread; a request's handler reads the body, then parses,
validates and encodes it (media decoding included, sized from headers first) in a small pool of
worker threads, submits it, and waits on an asyncio queue that the engine feeds after each
step. So requests join the batch at its next step, and the event loop never blocks on the
model or on a large upload: /health answers while an image decodes. Admission is bounded: once
every slot is busy and `max_queue` requests wait, a new one is refused with 429 at once rather
than left to time out. No malformed request is a 500 (docs/serving.md lists the checks).

With a safety classifier (`serve(..., safety=DIR)`, `--safety DIR`) a request may carry
`safety_settings`; the user turns' text is checked before generation and the reply at every
chunk as it grows. A blocked request is answered 200 with finish_reason "content_filter", no
generated text past the point it was blocked, and a `safety` object naming the category and
score (docs/safety.md).

A run that writes images (config.image_output, its image tokenizer in RUN/image_tokenizer/)
answers with content parts: text, and each image it wrote as a PNG data URL, in order; a
stream sends each image in a chunk of its own as soon as the model closes it (chat_api.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from gemini_jax.data.encode import EncodeError
from gemini_jax.data.examples import ExampleError
from gemini_jax.data.media import MediaError
from gemini_jax.data.tokenizer import TokenizerError
from gemini_jax.safety.filter import SafetyFilter, Verdict, prompt_text
from gemini_jax.sample.chat_api import (
    APIError,
    ChatRequest,
    RequestLimits,
    chunk_body,
    completion_body,
    image_part,
    parse_chat_request,
    text_part,
)
from gemini_jax.sample.engine import Engine, Event, QueueFull, Row
from gemini_jax.sample.image_output import ImageWriter, png_data_url

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerConfig:
    model_name: str = "gemini-jax"
    api_key: str | None = None  # None: no authentication
    max_request_bytes: int = 8 << 20  # a few images fit; a video would not (none is accepted over HTTP)
    default_max_tokens: int = 256  # when a request gives no max_tokens (also capped by the context)
    max_image_pixels: int = 4096 * 4096  # per uploaded image, read from its header before decoding
    media_workers: int = 2  # threads that parse, decode and encode requests, off the event loop


@dataclasses.dataclass
class _Counters:
    requests_served: int = 0
    requests_refused: int = 0  # 429
    requests_rejected: int = 0  # other 4xx
    requests_failed: int = 0  # 5xx
    prompt_tokens: int = 0
    tokens_generated: int = 0


@dataclasses.dataclass
class _SafetyCounters:
    """Blocked requests by where they were blocked and by category."""

    prompt: dict[str, int]
    response: dict[str, int]

    @classmethod
    def zero(cls, categories) -> _SafetyCounters:
        return cls(prompt=dict.fromkeys(categories, 0), response=dict.fromkeys(categories, 0))


@dataclasses.dataclass(frozen=True)
class _Blocked:
    """A prompt the safety filter refused: answered without generating."""

    verdict: Verdict
    prompt_tokens: int


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, f"request body exceeds the limit of {limit} bytes", code="request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


class ChatServer:
    """The HTTP handlers around one Engine; `app` is the ASGI application."""

    def __init__(self, engine: Engine, config: ServerConfig = ServerConfig(), *, safety: SafetyFilter | None = None,
                 images: ImageWriter | None = None):
        """`images`: the run's image tokenizer (ImageWriter.for_run), for a run that writes images."""
        self.engine = engine
        self.images = images
        self.config = config
        self.counters = _Counters()
        self.safety = safety
        self.safety_blocked = _SafetyCounters.zero(safety.categories) if safety else None
        audio = engine.config.audio
        self.limits = RequestLimits(max_image_pixels=config.max_image_pixels,
                                    max_audio_seconds=audio.max_seconds if audio else RequestLimits().max_audio_seconds)
        # Bounded: a burst of uploads queues here instead of decoding in as many threads at once.
        self._workers = ThreadPoolExecutor(max_workers=config.media_workers, thread_name_prefix="media-decode")
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/metrics", self.metrics, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self._http_error},
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.engine.start()
        try:
            yield
        finally:
            self._workers.shutdown(wait=False, cancel_futures=True)
            await run_in_threadpool(self.engine.close)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                            status_code=exc.status_code)

    def _authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), key.encode())):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           type="authentication_error", code="invalid_api_key")

    # -- routes ----------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except APIError as e:
            return _error(e)
        return JSONResponse({"object": "list", "data": [{"id": self.config.model_name, "object": "model",
                                                         "owned_by": "gemini-jax"}]})

    def metrics_values(self) -> dict[str, Any]:
        """Counters; with a safety filter also `safety_blocked`: {"prompt"|"response": {category: n}}."""
        engine = self.engine
        values: dict[str, Any] = {
            **dataclasses.asdict(self.counters), "queue_depth": engine.queue_depth,
            "active_slots": engine.active_slots, "slots": engine.slots, "decode_steps": engine.stats.decode_steps}
        if self.safety_blocked is not None:
            values["safety_blocked"] = dataclasses.asdict(self.safety_blocked)
        return values

    async def metrics(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except APIError as e:
            return _error(e)
        values = self.metrics_values()
        if request.query_params.get("format") == "prometheus":
            blocked = values.pop("safety_blocked", {})
            lines = [f"gemini_jax_{name} {value}" for name, value in values.items()]
            lines += [f'gemini_jax_safety_blocked{{stage="{stage}",category="{category}"}} {n}'
                      for stage, counts in blocked.items() for category, n in counts.items()]
            return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")
        return JSONResponse(values)

    async def chat_completions(self, request: Request) -> Response:
        try:
            self._authorize(request)
            raw = await _read_body(request, self.config.max_request_bytes)
            loop = asyncio.get_running_loop()
            chat, row = await loop.run_in_executor(self._workers, self._prepare, raw)
            if isinstance(row, _Blocked):
                return self._blocked_prompt(chat, row)
            submitted, events = self._submit(chat, row)
        except APIError as e:
            if e.status == 429:
                self.counters.requests_refused += 1
            elif e.status < 500:
                self.counters.requests_rejected += 1
            return _error(e)
        except Exception:  # a bug, not the client's fault: an answer and a log, not a dropped connection
            log.exception("preparing a chat request failed")
            self.counters.requests_failed += 1
            return _error(APIError(500, "internal error while preparing the request", type="server_error"))
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        model = chat.model or self.config.model_name
        if chat.stream:
            return StreamingResponse(self._stream(chat, submitted, events, request_id, model),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        text, parts = "", []  # parts: the reply's content parts, where it holds images
        check = self._reply_check(chat)
        try:
            async for event in self._events(submitted, events):
                if event.finish_reason == "error":
                    self.counters.requests_failed += 1
                    return _error(APIError(500, f"generation failed: {event.error}", type="server_error"))
                text += event.delta
                if event.image is not None:
                    parts += [text_part(text)] if text else []
                    parts.append(await self._image_part(event.image))
                    text = ""
                verdict = await self._check_response(check, "".join(p.get("text", "") for p in parts) + text,
                                                     changed=bool(event.delta))
                if verdict is not None:  # the text so far is withheld, and generation stops here
                    self._count(submitted)
                    return JSONResponse(completion_body(
                        request_id=request_id, model=model, text="", finish_reason="content_filter",
                        prompt_tokens=submitted.prompt_tokens, completion_tokens=len(submitted.token_ids),
                        safety=verdict.to_json("response")))
        finally:
            submitted.cancel()  # a no-op once finished; frees the slot if the client went away
        completion = submitted.result()
        self._count(submitted)
        content = parts + ([text_part(text)] if text else []) if parts else completion.text
        return JSONResponse(completion_body(
            request_id=request_id, model=model, text=content, finish_reason=completion.finish_reason,
            prompt_tokens=completion.prompt_tokens, completion_tokens=len(completion.token_ids)))

    async def _image_part(self, codes) -> dict[str, Any]:
        """The content part of an image the model finished: decoded by the run's image tokenizer
        (in a worker thread) and sent as a PNG data URL."""
        loop = asyncio.get_running_loop()
        pixels = await loop.run_in_executor(self._workers, self.images.pixels, codes)
        return image_part(png_data_url(pixels))

    # -- helpers -----------------------------------------------------------------------------------

    def _prepare(self, raw: bytes) -> tuple[ChatRequest, Row | _Blocked]:
        """The body parsed, checked and encoded: CPU work for a worker thread, never the event loop.
        A prompt the safety filter blocks comes back as _Blocked instead of its row."""
        chat = parse_chat_request(raw, limits=self.limits,
                                  safety_categories=self.safety.categories if self.safety else None)
        try:
            row = self.engine.encode(chat.example)
        except EncodeError as e:
            code = "context_length_exceeded" if "context" in str(e) else None
            raise APIError(400, str(e), param="messages", code=code) from None
        except (ExampleError, MediaError, TokenizerError) as e:
            raise APIError(400, str(e), param="messages") from None
        if self.safety is not None:
            verdict = self.safety.check(prompt_text(chat.example), chat.safety_settings)
            if verdict is not None:
                return chat, _Blocked(verdict, prompt_tokens=int(row["tokens"].shape[0]))
        return chat, row

    def _blocked_prompt(self, chat: ChatRequest, blocked: _Blocked) -> Response:
        """The answer to a blocked prompt: nothing generated, finish_reason "content_filter"."""
        assert self.safety_blocked is not None
        self.safety_blocked.prompt[blocked.verdict.category] += 1
        self.counters.requests_served += 1
        self.counters.prompt_tokens += blocked.prompt_tokens
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        model = chat.model or self.config.model_name
        safety = blocked.verdict.to_json("prompt")
        if not chat.stream:
            return JSONResponse(completion_body(
                request_id=request_id, model=model, text="", finish_reason="content_filter",
                prompt_tokens=blocked.prompt_tokens, completion_tokens=0, safety=safety))
        chunks = [chunk_body(request_id=request_id, model=model, delta={"role": "assistant"}, finish_reason=None),
                  chunk_body(request_id=request_id, model=model, delta={}, finish_reason="content_filter",
                             safety=safety)]
        return StreamingResponse(iter([*(f"data: {json.dumps(c)}\n\n" for c in chunks), "data: [DONE]\n\n"]),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def _reply_check(self, chat: ChatRequest) -> Callable[[str], Verdict | None] | None:
        """The safety check of one reply as it grows (None without a filter)."""
        return self.safety.reply_check(chat.safety_settings) if self.safety is not None else None

    async def _check_response(self, check: Callable[[str], Verdict | None] | None, text: str, *,
                              changed: bool) -> Verdict | None:
        """The reply so far through its safety check (in a worker thread: it is CPU work), counted
        when blocked; None without a filter or when the text has not changed since the last check."""
        if check is None or not changed:
            return None
        verdict = await run_in_threadpool(check, text)
        if verdict is not None:
            assert self.safety_blocked is not None
            self.safety_blocked.response[verdict.category] += 1
        return verdict

    def _submit(self, chat: ChatRequest, row: Row):
        """Queues the encoded prompt with its token budget."""
        engine = self.engine
        length = int(row["tokens"].shape[0])
        room = engine.max_len - length
        if chat.max_tokens is None:
            if room < 1:
                raise APIError(400, f"the prompt is {length} tokens and fills the context of {engine.max_len}",
                               param="messages", code="context_length_exceeded")
            max_tokens = min(self.config.default_max_tokens, room)
        elif chat.max_tokens > room:
            raise APIError(400, f"the prompt is {length} tokens; with max_tokens {chat.max_tokens} it exceeds the "
                           f"context of {engine.max_len} tokens (at most {max(room, 0)} new tokens fit)",
                           param="max_tokens", code="context_length_exceeded")
        else:
            max_tokens = chat.max_tokens
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        try:
            submitted = engine.submit(row, chat.sampling(max_tokens), stop=chat.stop,
                                      on_event=lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        except QueueFull as e:
            raise APIError(429, f"the server is busy ({e}); retry later", type="rate_limit_error",
                           code="queue_full") from None
        return submitted, events

    @staticmethod
    async def _events(submitted, events: asyncio.Queue[Event]) -> AsyncIterator[Event]:
        while True:
            event = await events.get()
            yield event
            if event.finished:
                return

    def _count(self, submitted) -> None:
        self.counters.requests_served += 1
        self.counters.prompt_tokens += submitted.prompt_tokens
        self.counters.tokens_generated += len(submitted.token_ids)

    async def _stream(self, chat: ChatRequest, submitted, events: asyncio.Queue[Event], request_id: str,
                      model: str) -> AsyncIterator[str]:
        def sse(body: dict[str, Any]) -> str:
            return f"data: {json.dumps(body)}\n\n"

        try:
            yield sse(chunk_body(request_id=request_id, model=model, delta={"role": "assistant"},
                                 finish_reason=None))
            text, check = "", self._reply_check(chat)
            async for event in self._events(submitted, events):
                if event.finish_reason == "error":
                    self.counters.requests_failed += 1
                    yield sse(APIError(500, f"generation failed: {event.error}", type="server_error").body())
                    break
                text += event.delta
                verdict = await self._check_response(check, text, changed=bool(event.delta))
                if verdict is None and event.image is not None:
                    if event.delta:
                        yield sse(chunk_body(request_id=request_id, model=model, delta={"content": event.delta},
                                             finish_reason=None))
                    yield sse(chunk_body(request_id=request_id, model=model,
                                         delta={"content": [await self._image_part(event.image)]}, finish_reason=None))
                    continue
                if verdict is not None:  # this chunk is not sent; the stream ends here
                    self._count(submitted)
                    yield sse(chunk_body(request_id=request_id, model=model, delta={}, finish_reason="content_filter",
                                         safety=verdict.to_json("response")))
                    break
                if event.delta:
                    yield sse(chunk_body(request_id=request_id, model=model, delta={"content": event.delta},
                                         finish_reason=None))
                if event.finished:
                    self._count(submitted)
                    yield sse(chunk_body(request_id=request_id, model=model, delta={},
                                         finish_reason=event.finish_reason))
            yield "data: [DONE]\n\n"
        finally:
            submitted.cancel()


def load_run(run_dir: str, *, step: int | None = None):
    """(model, tokenizer) of a run directory at checkpoint `step` (default: the latest), loaded as
    every run is (`checkpoint.load_run`)."""
    from gemini_jax import checkpoint

    run = checkpoint.load_run(run_dir, step=step)
    return run.model, run.tokenizer


def serve(run_dir: str, *, host: str = "127.0.0.1", port: int = 8000, slots: int = 8, max_queue: int = 64,
          max_request_bytes: int = 8 << 20, api_key: str | None = None, max_len: int | None = None,
          step: int | None = None, max_image_pixels: int = ServerConfig.max_image_pixels,
          media_workers: int = ServerConfig.media_workers, safety: str | None = None) -> None:
    """Loads a run directory's model (at checkpoint `step`) and serves it until interrupted;
    `safety`: a directory written by `gemini-jax safety train`, checking prompts and replies."""
    import uvicorn

    from gemini_jax.config import ConfigError

    if max_request_bytes < 1:
        raise ConfigError(f"--max-request-bytes must be at least 1, got {max_request_bytes}")
    try:  # before the model: a wrong directory is found in a second, not after loading
        safety_filter = SafetyFilter.load(safety) if safety is not None else None
    except (OSError, ValueError) as e:
        raise ConfigError(f"--safety {safety}: {e}") from None
    from gemini_jax import checkpoint

    run = checkpoint.load_run(run_dir, step=step)
    images = ImageWriter.for_run(run)  # None for a text-only run; a missing image tokenizer fails here
    try:
        engine = Engine(run.model, run.tokenizer, slots=slots, max_queue=max_queue, max_len=max_len,
                        image_codes=images.coder() if images else None)
    except ValueError as e:  # the flags: slots, queue, cache length
        raise ConfigError(f"serve: {e}") from None
    engine.warm_up()  # before the port opens: ready means the first request compiles nothing
    name = run_dir.rstrip("/").split("/")[-1] or "gemini-jax"
    server = ChatServer(engine, ServerConfig(model_name=name, api_key=api_key, max_request_bytes=max_request_bytes,
                                             max_image_pixels=max_image_pixels, media_workers=media_workers),
                        safety=safety_filter, images=images)
    uvicorn.run(server.app, host=host, port=port, log_level="info")
