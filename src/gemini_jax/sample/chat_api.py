"""The OpenAI chat-completions request and response formats, read into our Example and SamplingParams.

Accepted (POST /v1/chat/completions):

    {"messages": [{"role": "system" | "user" | "assistant", "content": "text" | [part, ...]}, ...],
     "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": 64, "seed": 0,
     "stop": "str" | ["str", ...], "stream": false, "model": "any"}

with parts {"type": "text", "text": ...}, {"type": "image_url", "image_url": {"url":
"data:image/png;base64,..."}} and {"type": "input_audio", "input_audio": {"data": base64,
"format": "wav"}}. `top_k` and `safety_settings` (a server started with --safety; see
gemini_jax.safety.filter for its forms) are our extensions. Gemini has no system role: as Gemma's chat
template does, system text opens the next user turn. Images come only as data: URLs; the
server fetches nothing. Media are decoded here, so a bad upload is refused with the field
that holds it before it costs any model time; their preprocessing is the data pipeline's own.

A run that writes images (config.image_output) answers with content parts instead of a string
where its reply holds images: text parts and image parts whose URL is a base64 PNG data URL;
in a stream, a chunk's delta carries each finished image as {"content": [image part]}.

Nothing in a body is trusted: it must be UTF-8 JSON nested at most `RequestLimits.max_depth`
deep whose every string is valid Unicode; numbers are finite and in range; media are sized from
their headers before decoding. Every refusal is an APIError whose body follows OpenAI's:
{"error": {"message", "type", "param", "code"}}, 413 for media over a limit, 400 for the rest.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import reprlib
import secrets
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gemini_jax.data import media
from gemini_jax.data.examples import Audio, Content, Example, ExampleError, Part
from gemini_jax.safety.filter import SettingsError, parse_settings
from gemini_jax.sample.token_choice import SamplingParams

ROLES = {"user": "user", "assistant": "model", "system": "system"}
AUDIO_FORMATS = ("wav", "flac", "ogg")
MAX_STOP_STRINGS = 4
# Below it a float32 temperature underflows or overflows logits / temperature, and sampling is
# already greedy in effect; above MAX_TEMPERATURE every token is equally likely.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-6, 1e6
INT32_MAX = 2**31 - 1  # the sampler holds top_k as int32
_SHOW = reprlib.Repr()  # values in error messages, cut short: a body may hold megabytes
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong, _SHOW.maxlist, _SHOW.maxdict = 2, 40, 40, 40, 4, 4


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestLimits:
    """What one request may hold; over a limit is refused before the work it would cost."""

    max_depth: int = 32  # a chat request nests 6 deep; room for clients' tool schemas, none for a bomb
    max_image_pixels: int = 4096 * 4096  # per image, read from its header before decoding
    max_audio_seconds: float = 30.0  # per clip, from its header (the server passes the model's)


class APIError(Exception):
    """A refused request: HTTP status, a message naming what is wrong, and the field it is in."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    example: Example
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int | None  # None: as many as the context and the server's default allow
    seed: int
    stop: tuple[str, ...]
    stream: bool
    model: str | None
    safety_settings: dict[str, float | None] | None = None  # None: the server checks nothing

    def sampling(self, max_tokens: int) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              max_new_tokens=max_tokens, seed=self.seed)


def _bad(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _too_large(e: media.MediaTooLarge, param: str) -> APIError:
    return APIError(413, f"{param}: {e}", param=param, code="media_too_large")


def _b64(data: Any, param: str) -> bytes:
    if not isinstance(data, str) or not data:
        raise _bad(f"{param} must be a non-empty base64 string", param)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad(f"{param} is not valid base64 ({e})", param, "invalid_base64") from None


def _image_part(part: dict[str, Any], param: str, limits: RequestLimits) -> Part:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    param = f"{param}.image_url.url"
    if not isinstance(url, str) or not url.startswith("data:"):
        raise _bad(f"{param} must be a data: URL (data:image/png;base64,...); this server fetches nothing", param)
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise _bad(f"{param} must be a base64 data: URL (data:image/...;base64,...)", param)
    try:
        pixels = media.load_image(_b64(payload, param), max_pixels=limits.max_image_pixels)  # uint8[H, W, 3]
    except media.MediaTooLarge as e:
        raise _too_large(e, param) from None
    except media.MediaError as e:
        raise _bad(f"{param} does not decode as an image: {e}", param, "invalid_image") from None
    return Part(image=pixels)


def _audio_part(part: dict[str, Any], param: str, limits: RequestLimits) -> Part:
    audio = part.get("input_audio")
    param = f"{param}.input_audio"
    if not isinstance(audio, dict):
        raise _bad(f'{param} must be {{"data": base64, "format": "wav"}}', param)
    if audio.get("format", "wav") not in AUDIO_FORMATS:
        raise _bad(f"{param}.format must be one of {AUDIO_FORMATS}, got {_SHOW.repr(audio.get('format'))}",
                   f"{param}.format")
    try:  # float32[N] at 16 kHz
        samples = media.load_audio(_b64(audio.get("data"), f"{param}.data"), max_seconds=limits.max_audio_seconds)
    except media.MediaTooLarge as e:
        raise _too_large(e, f"{param}.data") from None
    except media.MediaError as e:
        raise _bad(f"{param}.data does not decode as audio: {e}", f"{param}.data", "invalid_audio") from None
    return Part(audio=Audio(samples=samples, sample_rate=16_000))


def _parts(content: Any, param: str, limits: RequestLimits) -> list[Part]:
    if isinstance(content, str):
        return [Part(text=content)]
    if not isinstance(content, list) or not content:
        raise _bad(f"{param} must be a string or a non-empty list of parts", param)
    parts = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise _bad(f"{where}.text must be a string", f"{where}.text")
            parts.append(Part(text=part["text"]))
        elif kind == "image_url":
            parts.append(_image_part(part, where, limits))
        elif kind == "input_audio":
            parts.append(_audio_part(part, where, limits))
        else:
            raise _bad(f"{where}.type must be 'text', 'image_url' or 'input_audio', got {_SHOW.repr(kind)}",
                       f"{where}.type")
    return parts


def _messages(messages: Any, limits: RequestLimits) -> Example:
    if messages is None:
        raise _bad("missing required field 'messages'", "messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of {role, content}", "messages")
    contents: list[Content] = []
    system: list[Part] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object with 'role' and 'content'", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _bad(f"{where}.role must be one of {sorted(ROLES)}, got {_SHOW.repr(role)}", f"{where}.role")
        if "content" not in message:
            raise _bad(f"{where} has no 'content'", f"{where}.content")
        parts = _parts(message["content"], f"{where}.content", limits)
        if role == "system":
            system += [*parts, Part(text="\n\n")]
        elif role == "user":
            contents.append(Content("user", tuple(system + parts)))
            system = []
        else:
            contents.append(Content("model", tuple(parts)))
    if system:  # only system text, or system text after the last user turn
        contents.append(Content("user", tuple(system[:-1])))
    return Example(contents=tuple(contents))


def _number(body: dict, name: str, default: float, *, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"'{name}' must be a finite number, got {_SHOW.repr(value)}", name)
    if value < low or (low_open and value == low) or value > high:
        raise _bad(f"'{name}' must be in {'(' if low_open else '['}{low}, {high}], got {value}", name)
    return float(value)


def _temperature(body: dict) -> float:
    temperature = _number(body, "temperature", 1.0, low=0.0, high=MAX_TEMPERATURE)  # OpenAI's default: sample
    if 0 < temperature < MIN_TEMPERATURE:
        raise _bad(f"'temperature' must be 0 (greedy) or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got "
                   f"{temperature}", "temperature")
    return temperature


def _top_p(body: dict) -> float:
    top_p = _number(body, "top_p", 1.0, low=0.0, high=1.0, low_open=True)
    if float(np.float32(top_p)) == 0.0:  # the sampler's float32 would keep no token at all
        raise _bad(f"'top_p' must be in (0, 1] as a float32, got {top_p}", "top_p")
    return top_p


def _integer(body: dict, name: str, *, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low or value > high:
        raise _bad(f"'{name}' must be an integer in [{low}, {high}], got {_SHOW.repr(value)}", name)
    return value


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stops)):
        raise _bad(f"'stop' must be a non-empty string or a list of at most {MAX_STOP_STRINGS} of them", "stop")
    return tuple(stops)


def _json(raw: bytes, limits: RequestLimits) -> Any:
    try:
        text = raw.decode("utf-8-sig")  # strict: an encoded surrogate is refused too
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 ({e})", code="invalid_json") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise APIError(400, f"the request body nests deeper than {limits.max_depth} levels",
                       code="invalid_json") from None
    except ValueError as e:  # JSONDecodeError, or an integer literal of thousands of digits
        raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    _check_tree(body, limits.max_depth)
    return body


def _check_tree(body: Any, max_depth: int) -> None:
    """Refuses nesting deeper than `max_depth` and strings that are not valid Unicode (a JSON
    \\ud800 escape parses to a lone surrogate, which no tokenizer or encoder accepts)."""
    stack: list[tuple[Any, str, int]] = [(body, "", 1)] if isinstance(body, (dict, list)) else []
    while stack:
        node, path, depth = stack.pop()
        if depth > max_depth:
            raise APIError(400, f"the request body nests deeper than {max_depth} levels (at {path or 'the top'})",
                           code="invalid_json")
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(key, str) and not _is_unicode(key):
                raise _bad(f"a key in {path or 'the body'} holds a lone surrogate: not valid Unicode", path or None,
                           "invalid_unicode")
            name = key if isinstance(key, int) or len(key) <= 40 else f"{key[:40]}..."
            where = f"{path}[{name}]" if isinstance(key, int) else f"{path}.{name}" if path else name
            if isinstance(value, str) and not _is_unicode(value):
                raise _bad(f"{where} holds a lone surrogate: not valid Unicode", where, "invalid_unicode")
            if isinstance(value, (dict, list)):
                stack.append((value, where, depth + 1))


def _is_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _safety_settings(body: dict, categories: Sequence[str] | None) -> dict[str, float | None] | None:
    if categories is None:
        if "safety_settings" in body:
            raise _bad("'safety_settings' needs a safety classifier and this server has none (start it with "
                       "--safety DIR)", "safety_settings")
        return None
    try:
        return parse_settings(body.get("safety_settings"), categories)
    except SettingsError as e:
        raise _bad(str(e), e.field) from None


def parse_chat_request(raw: bytes, *, limits: RequestLimits = RequestLimits(),
                       safety_categories: Sequence[str] | None = None) -> ChatRequest:
    """The request body (JSON bytes) -> ChatRequest, or an APIError naming the bad field.
    `safety_categories`: the server's safety classifier's, or None when it has none."""
    body = _json(raw, limits)
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    if body.get("n", 1) != 1:
        raise _bad("only n = 1 is supported", "n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad(f"'stream' must be true or false, got {_SHOW.repr(stream)}", "stream")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("'model' must be a string", "model")
    max_tokens = _integer(body, "max_tokens", low=1, high=INT32_MAX)
    if max_tokens is None:
        max_tokens = _integer(body, "max_completion_tokens", low=1, high=INT32_MAX)
    seed = _integer(body, "seed", low=0, high=2**32 - 1)
    safety_settings = _safety_settings(body, safety_categories)
    try:
        example = _messages(body.get("messages"), limits)
    except ExampleError as e:
        raise _bad(str(e), "messages") from None
    return ChatRequest(
        example=example, temperature=_temperature(body), top_p=_top_p(body),
        top_k=_integer(body, "top_k", low=0, high=INT32_MAX) or 0, max_tokens=max_tokens,
        seed=secrets.randbits(32) if seed is None else seed, stop=_stop(body.get("stop")), stream=stream, model=model,
        safety_settings=safety_settings,
    )


def completion_body(*, request_id: str, model: str, text: str | list[dict[str, Any]], finish_reason: str,
                    prompt_tokens: int, completion_tokens: int, safety: dict[str, Any] | None = None) -> dict[str, Any]:
    """`text`: the reply, or its content parts where it holds images (`content_parts`). `safety`:
    why the reply was blocked (finish_reason "content_filter"), else None and absent."""
    body = {
        "id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
    return body if safety is None else {**body, "safety": safety}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def image_part(url: str) -> dict[str, Any]:
    """An image the model wrote, as the request format's image part: a PNG data URL."""
    return {"type": "image_url", "image_url": {"url": url}}


def chunk_body(*, request_id: str, model: str, delta: dict[str, Any], finish_reason: str | None,
               safety: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {
        "id": request_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return body if safety is None else {**body, "safety": safety}
