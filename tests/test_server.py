"""The OpenAI-compatible HTTP API: answers, streaming, and a clear status for each bad request."""

import base64
import dataclasses
import inspect
import io
import json
import textwrap
import threading
import time

import numpy as np
import pytest
import soundfile
from PIL import Image
from starlette.testclient import TestClient

from gemini_jax.config import PRESETS
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
