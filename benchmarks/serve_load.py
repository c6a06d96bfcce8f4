"""Load on `gemini-jax serve`: many concurrent clients, every answer checked (prints JSON).

    python benchmarks/serve_load.py [--clients 256] [--slots 16] [--max-queue 64] [--max-tokens 8]
                                    [--checkpoint RUN_DIR] [--time-limit 300]

Starts the HTTP server on loopback (uvicorn in a subprocess: clients in the same process
would compete with it for the GIL and measure themselves) with the demo preset's model at random
weights (or a trained run with --checkpoint), fires all clients at once (asyncio + httpx), each
with one greedy request drawn from a set of varied prompts (some with an image), and checks
each answer against `Sampler`'s direct greedy output for the same prompt, one prompt at a time:
an answer from another request, a lost one or a corrupted one counts as mismatched; a 429 is a
refusal. Compilation is warmed up first (one request per prompt shape) and timed apart.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import io
import json
import socket
import statistics
import subprocess
import sys
import time

import numpy as np
from PIL import Image

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "grey", "teal")
SHAPES = ("circle", "square", "triangle", "rectangle")


def random_model(preset: str, tokenizer_path: str | None = None):
    """The preset's model at its initialisers' random weights (seed 0: the same in every process),
    with a tokenizer trained here, or loaded from `tokenizer_path` (the one the parent trained)."""
    import dataclasses
    import json as json_module
    import tempfile
    import textwrap

    from flax import nnx

    from gemini_jax.config import get_preset
    from gemini_jax.data.tokenizer import Tokenizer, train_tokenizer
    from gemini_jax.model import Gemini

    config = get_preset(preset)
    if tokenizer_path is None:
        corpus = [inspect.getsource(m) for m in (textwrap, json_module.decoder, argparse)]
        tokenizer_path = tempfile.mkdtemp(prefix="serve_load_") + "/tok.model"
        train_tokenizer(corpus, vocab_size=config.vocab_size, path=tokenizer_path)
    tokenizer = Tokenizer.load(tokenizer_path)
    tokenizer.path = tokenizer_path
    config = dataclasses.replace(config, vocab_size=max(config.vocab_size, tokenizer.vocab_size))
    return Gemini(config, rngs=nnx.Rngs(0)), tokenizer


def prompts(count: int, *, with_images: bool) -> list[tuple[str, np.ndarray | None]]:
    """Varied prompts: different words and lengths; every fifth carries a small random image."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        text = f"Is shape {i} a {COLOURS[i % 8]} {SHAPES[i % 4]}?" + " Look again." * (i % 5)
        image = rng.integers(0, 255, (24 + i % 3 * 8, 32, 3), np.uint8) if with_images and i % 5 == 0 else None
        out.append((text, image))
    return out


def png_url(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request_body(text: str, image: np.ndarray | None, max_tokens: int) -> dict:
    content = [{"type": "text", "text": text}]
    if image is not None:
        content.insert(0, {"type": "image_url", "image_url": {"url": png_url(image)}})
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, "max_tokens": max_tokens}


def expected_answers(model, tokenizer, items, max_tokens: int) -> list[str]:
    from gemini_jax.data.examples import Content, Example, Part
    from gemini_jax.sample.sampler import Sampler
    from gemini_jax.sample.token_choice import SamplingParams

    sampler = Sampler(model, tokenizer)
    answers = []
    for text, image in items:
        parts = ([Part(image=image)] if image is not None else []) + [Part(text=text)]
        example = Example(contents=(Content("user", tuple(parts)),))
        answers.append(sampler.generate([example], [SamplingParams(max_new_tokens=max_tokens)])[0])
    return answers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_child(args: argparse.Namespace) -> None:
    """The server process: the same model as the parent's, uvicorn on loopback until terminated."""
    import uvicorn

    from gemini_jax.sample.engine import Engine
    from gemini_jax.sample.server import ChatServer, ServerConfig, load_run

    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    model, tokenizer = load_run(args.checkpoint) if args.checkpoint else random_model(args.preset, args.tokenizer)
    engine = Engine(model, tokenizer, slots=args.slots, max_len=args.max_len, max_queue=args.max_queue)
    uvicorn.run(ChatServer(engine, ServerConfig()).app, host="127.0.0.1", port=args.serve_port,
                log_level="warning", backlog=4096, timeout_keep_alive=60)


def start_server(args: argparse.Namespace, tokenizer_path: str | None, port: int) -> subprocess.Popen:
    """The server in its own process, so that the clients do not compete with it for the GIL."""
    import httpx

    command = [sys.executable, __file__, "--serve-port", str(port), "--preset", args.preset, "--slots",
               str(args.slots), "--max-queue", str(args.max_queue), "--max-len", str(args.max_len)]
    command += ["--checkpoint", args.checkpoint] if args.checkpoint else ["--tokenizer", tokenizer_path]
    if args.switch_interval is not None:
        command += ["--switch-interval", str(args.switch_interval)]
    child = subprocess.Popen(command)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the server exited with status {child.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return child
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    child.terminate()
    raise RuntimeError("the server did not answer /health within 300 s")


async def fire(url: str, bodies: list[dict], *, time_limit: float) -> list[tuple[int, str, int, float]]:
    """All requests at once: (status, text, completion tokens, latency s) each; status 0 = no answer."""
    import httpx

    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(timeout=time_limit, limits=limits) as client:
        async def one(body):
            start = time.perf_counter()
            try:
                response = await client.post(url, json=body)
            except httpx.HTTPError as e:
                return 0, f"{type(e).__name__}: {e}", 0, time.perf_counter() - start
            latency = time.perf_counter() - start
            if response.status_code != 200:
                return response.status_code, response.text, 0, latency
            data = response.json()
            return 200, data["choices"][0]["message"]["content"], data["usage"]["completion_tokens"], latency

        return await asyncio.wait_for(asyncio.gather(*(one(b) for b in bodies)), time_limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a run directory (default: random demo weights)")
    parser.add_argument("--preset", default="demo", help="preset of the random-weight model")
    parser.add_argument("--clients", type=int, default=256, help="concurrent clients, one request each")
    parser.add_argument("--prompts", type=int, default=40, help="distinct prompts the requests draw from")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=128, help="cache positions per slot")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--no-images", action="store_true", help="text prompts only")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds for the whole load")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval of the server process (default: Python's 5 ms)")
    parser.add_argument("--serve-port", type=int, default=None, help=argparse.SUPPRESS)  # the child's mode
    parser.add_argument("--tokenizer", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_port is not None:
        serve_child(args)
        return

    from gemini_jax.sample.server import load_run

    start = time.perf_counter()
    model, tokenizer = load_run(args.checkpoint) if args.checkpoint else random_model(args.preset)
    with_images = model.config.vision is not None and not args.no_images
    items = prompts(args.prompts, with_images=with_images)
    expected = expected_answers(model, tokenizer, items, args.max_tokens)
    setup_s = time.perf_counter() - start

    server = start_server(args, getattr(tokenizer, "path", None), port := free_port())
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    bodies = [request_body(*item, args.max_tokens) for item in items]
    try:
        start = time.perf_counter()
        asyncio.run(fire(url, bodies, time_limit=args.time_limit))  # compiles every prompt shape once
        warmup_s = time.perf_counter() - start
        picks = np.random.default_rng(1).integers(0, len(items), args.clients)
        start = time.perf_counter()
        results = asyncio.run(fire(url, [bodies[i] for i in picks], time_limit=args.time_limit))
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(30)

    ok = [r for r, i in zip(results, picks) if r[0] == 200 and r[1] == expected[i]]
    mismatched = [(int(i), r[1], expected[i]) for r, i in zip(results, picks) if r[0] == 200 and r[1] != expected[i]]
    refused = sum(r[0] == 429 for r in results)
    failed = [(r[0], r[1][:200]) for r in results if r[0] not in (200, 429)]
    latencies = sorted(r[3] for r in results if r[0] == 200)
    tokens = sum(r[2] for r in results if r[0] == 200)
    print(json.dumps({
        "requests": len(results), "ok": len(ok), "refused": refused, "mismatched": len(mismatched),
        "failed": len(failed), "distinct_prompts": len(items), "slots": args.slots, "max_queue": args.max_queue,
        "max_tokens": args.max_tokens, "model": args.checkpoint or f"{args.preset} (random weights)",
        "wall_s": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)
        if latencies else None,
        "setup_s": round(setup_s, 1), "warmup_s": round(warmup_s, 1),
        "examples_mismatched": mismatched[:3], "examples_failed": failed[:3],
    }, indent=2))


if __name__ == "__main__":
    main()
