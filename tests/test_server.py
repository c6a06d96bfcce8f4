"""The OpenAI-compatible HTTP API: answers, streaming, and a clear status for each bad request."""

import asyncio
import base64
import dataclasses
import inspect
import io
import json
import struct
import textwrap
import threading
import time
import zlib

import numpy as np
import pytest
import soundfile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from gemini_jax.config import PRESETS
from gemini_jax.data import media
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.sample.engine import Engine
from gemini_jax.sample.server import ChatServer, ServerConfig

CONFIG = dataclasses.replace(PRESETS["test"], vocab_size=400)
URL = "/v1/chat/completions"


@pytest.fixture(scope="module")
def engine(build_model, tmp_path_factory):
    corpus = [inspect.getsource(textwrap), "What colour is the shape? A red circle. A blue square.\n" * 30]
    tok = train_tokenizer(corpus, vocab_size=400, path=tmp_path_factory.mktemp("tok") / "t.model")
    return Engine(build_model(CONFIG), tok, slots=2, max_len=128)


def client(engine, **config) -> TestClient:
    return TestClient(ChatServer(engine, ServerConfig(**config)).app)


def ask(text="What colour is the shape?", **params) -> dict:
    return {"messages": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": text}],
            "temperature": 0, "max_tokens": 6, **params}


def png() -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def wav() -> str:
    buffer = io.BytesIO()
    soundfile.write(buffer, 0.1 * np.sin(np.arange(8000) / 5.0).astype(np.float32), 16_000, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def sse_text(response) -> tuple[str, str]:
    lines = [line for line in response.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    return text, chunks[-1]["choices"][0]["finish_reason"]


def test_answers_stream_the_same_text_and_accept_media(engine):
    with client(engine) as http:
        body = http.post(URL, json=ask()).json()
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
        assert body["usage"]["completion_tokens"] <= 6 and body["choices"][0]["finish_reason"] in ("stop", "length")
        streamed = http.post(URL, json=ask(stream=True))
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert sse_text(streamed) == (body["choices"][0]["message"]["content"], body["choices"][0]["finish_reason"])
        media = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png()}"}},
                 {"type": "input_audio", "input_audio": {"data": wav(), "format": "wav"}},
                 {"type": "text", "text": "What is this?"}]
        assert http.post(URL, json={"messages": [{"role": "user", "content": media}], "max_tokens": 3,
                                    "seed": 1}).status_code == 200
        assert http.get("/health").json() == {"status": "ok"}
        metrics = http.get("/metrics").json()
        assert metrics["requests_served"] == 3 and metrics["tokens_generated"] > 0 and metrics["slots"] == 2
        assert "gemini_jax_queue_depth 0" in http.get("/metrics?format=prometheus").text


@pytest.mark.parametrize("body, param, code", [
    (b"{not json", None, "invalid_json"),
    ({"temperature": 0}, "messages", None),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", None),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}]}]},
     "messages[0].content[0].image_url.url", "invalid_base64"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not an image").decode()}}]}]},
     "messages[0].content[0].image_url.url", "invalid_image"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%"}}]}]},
     "messages[0].content[0].input_audio.data", "invalid_base64"),
    (ask("A red circle. " * 100), "messages", "context_length_exceeded"),
    (ask(max_tokens=1000), "max_tokens", "context_length_exceeded"),
    (ask(temperature=-1), "temperature", None),
])
def test_malformed_requests_get_400_naming_the_field(engine, body, param, code):
    with client(engine) as http:
        response = http.post(URL, content=body) if isinstance(body, bytes) else http.post(URL, json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == code and error["message"]


def test_auth_size_routes_and_a_full_queue(engine):
    with client(engine, api_key="sesame", max_request_bytes=2000) as http:
        assert http.post(URL, json=ask()).status_code == 401
        assert http.post(URL, json=ask(), headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = {"Authorization": "Bearer sesame"}
        assert http.post(URL, json=ask(), headers=good).status_code == 200
        too_big = http.post(URL, json=ask("x" * 3000), headers=good)
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
        missing = http.get("/v1/nothing", headers=good)
        assert missing.status_code == 404 and "error" in missing.json()

        # Two slots and no queue: with the engine held, a third request in flight is refused at once.
        engine.max_queue = 0
        engine.pause()
        try:
            held = [threading.Thread(target=lambda: results.append(http.post(URL, json=ask(), headers=good)))
                    for _ in range(2)]
            results = []
            for t in held:
                t.start()
            deadline = time.monotonic() + 30
            while engine._in_flight < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = http.post(URL, json=ask(), headers=good)
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
        finally:
            engine.resume()
            engine.max_queue = None
        for t in held:
            t.join(60)
        assert [r.status_code for r in results] == [200, 200]
        assert http.get("/metrics", headers=good).json()["requests_refused"] == 1


# --- hostile input ------------------------------------------------------------------------------


def raw(extra: str = "", content: str = '"What colour is the shape?"') -> bytes:
    """A request body written by hand: JSON that json.dumps would never produce (NaN, lone surrogates)."""
    return f'{{"messages": [{{"role": "user", "content": {content}}}], "max_tokens": 2{extra}}}'.encode()


@pytest.mark.parametrize("body, param, code", [
    (raw(', "top_p": NaN'), "top_p", None),
    (raw(', "temperature": NaN'), "temperature", None),  # was greedy, silently
    (raw(', "temperature": Infinity'), "temperature", None),  # was noise
    (raw(', "temperature": 1e400'), "temperature", None),  # a literal that overflows to infinity
    (raw(', "temperature": 1e-300'), "temperature", None),  # underflows float32 to 0: greedy, silently
    (raw(', "top_k": 10000000000'), "top_k", None),
    (raw(', "seed": ' + "9" * 5000), None, "invalid_json"),  # over Python's int-from-string limit
    (raw(content='"\\ud800 half a character"'), "messages[0].content", "invalid_unicode"),
    (raw(', "stop": ["\\udfff"]'), "stop[0]", "invalid_unicode"),
    (raw(content='"@"').replace(b"@", b"\xed\xa0\x80"), None, "invalid_json"),  # a surrogate, UTF-8 encoded
    (raw(', "metadata": ' + "[" * 100_000 + "]" * 100_000), None, "invalid_json"),
    (raw(', "metadata": ' + "[" * 100 + "]" * 100), None, "invalid_json"),  # parses, but past the depth limit
    (b'{"messages": [{"role": ["user"], "content": "hi"}]}', "messages[0].role", None),
    (b'{"messages": [{"role": "user", "content": [{"type": {"a": 1}}]}]}', "messages[0].content[0].type", None),
])
def test_hostile_fields_get_400_and_the_server_stays_up(engine, body, param, code):
    with client(engine) as http:
        response = http.post(URL, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and error["code"] == code and len(error["message"]) < 1000
        assert http.get("/health").json() == {"status": "ok"}


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG: about 12 KB at 10000 x 10000, which decodes to 100 million pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def silent_flac(seconds: int) -> bytes:
    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", samplerate=16_000, channels=1, format="FLAC") as out:
        for _ in range(seconds // 10):
            out.write(np.zeros(160_000, np.int16))
    return buffer.getvalue()


def image_request(data: bytes) -> dict:
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
            "max_tokens": 2}


def audio_request(data: bytes, format: str = "flac") -> dict:
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": format}}
    return {"messages": [{"role": "user", "content": [part]}], "max_tokens": 2}


def test_media_over_the_limits_get_413_from_the_header_alone(engine, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded media that its header already put over a limit")

    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr(soundfile.SoundFile, "read", refuse)
    cases = [
        (image_request(bomb_png(10_000, 10_000)), "messages[0].content[0].image_url.url",
         "10000 x 10000 = 100000000 pixels, over the limit of 16777216 pixels"),
        (image_request(bomb_png(14_000, 14_000)), "messages[0].content[0].image_url.url", "decompression bomb"),
        (audio_request(silent_flac(3600)), "messages[0].content[0].input_audio.data",
         "lasts 3600.00 s; the model accepts clips of at most 30.0 s"),
    ]
    with client(engine) as http:
        for body, param, message in cases:
            response = http.post(URL, json=body)
            assert response.status_code == 413, response.text
            error = response.json()["error"]
            assert error["param"] == param and error["code"] == "media_too_large" and message in error["message"]
        assert http.get("/health").json() == {"status": "ok"}


def test_media_is_decoded_in_the_bounded_pool_and_never_stalls_the_loop(engine, monkeypatch):
    decoded_in, decode = [], media.load_image

    def slow_decode(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            decoded_in.append("the event loop")
        except RuntimeError:
            decoded_in.append(threading.current_thread().name)
        time.sleep(1.5)  # a large image's decode
        return decode(*args, **kwargs)

    monkeypatch.setattr(media, "load_image", slow_decode)
    with client(engine, media_workers=1) as http:
        slow = threading.Thread(target=lambda: http.post(URL, json=image_request(base64.b64decode(png()))))
        slow.start()
        while not decoded_in:
            time.sleep(0.01)
        start = time.monotonic()
        assert http.get("/health").status_code == 200
        assert time.monotonic() - start < 0.5  # answered while the decode runs
        slow.join(60)
    assert decoded_in and all(name.startswith("media-decode") for name in decoded_in)  # the pool's threads


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(codec=None), max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)
FIELDS = ("messages", "temperature", "top_p", "top_k", "max_tokens", "max_completion_tokens", "seed", "stop",
          "stream", "model", "n")
PART = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "input_audio"]) | JSON,
                              "text": JSON, "image_url": JSON, "input_audio": JSON})
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]) | JSON,
                                 "content": st.text(max_size=12) | st.lists(PART, max_size=2) | JSON})


def _dump(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # lone surrogates come out as \ud800 escapes


MALFORMED = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4).map(lambda extra: _dump({**ask(), **extra})),
    st.lists(MESSAGE, max_size=3).map(lambda messages: _dump({**ask(), "messages": messages})),
    st.binary(max_size=40),
    st.tuples(st.integers(1, 20_000), st.sampled_from("[{")).map(
        lambda d: b'{"messages": ' + (d[1] * d[0]).encode()),  # deep and unclosed
    st.integers(0, 200).map(lambda cut: _dump(ask())[:cut]),  # truncated
)


def test_generated_malformed_bodies_never_get_a_5xx(engine):
    with client(engine, default_max_tokens=2) as http:
        @settings(max_examples=120, deadline=None, derandomize=True, database=None)
        @given(body=MALFORMED)
        def check(body: bytes) -> None:
            response = http.post(URL, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code < 500, response.text
            assert http.get("/health").status_code == 200

        check()
