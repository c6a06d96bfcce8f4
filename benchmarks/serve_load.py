"""Load on `gemini-jax serve`: many concurrent clients, every answer checked (prints JSON).

    python benchmarks/serve_load.py [--clients 256] [--slots 16] [--max-queue 64] [--max-tokens 8]
                                    [--checkpoint RUN_DIR] [--time-limit 300] [--mixed --hostile 64]

Starts the HTTP server on loopback (uvicorn in a subprocess: clients in the same process
would compete with it for the GIL and measure themselves) with the demo preset's model at random
weights (or a trained run with --checkpoint), fires all clients at once (asyncio + httpx), each
with one greedy request drawn from a set of varied prompts (some with an image), and checks
each answer against `Sampler`'s direct greedy output for the same prompt, one prompt at a time:
an answer from another request, a lost one or a corrupted one counts as mismatched; a 429 is a
refusal. Compilation is warmed up first (one request per prompt shape) and timed apart.

--mixed fires the same valid requests alone, then while --hostile requests arrive at the same
moment from another process, as prebuilt HTTP on raw sockets (an hour of FLAC, 10000 and 14000 pixel-square PNGs of a few KB,
NaN, Infinity, 10^10, a lone surrogate, 100,000 nested brackets, broken JSON), --rounds times
each, and reports the valid requests' p99 latency in both and the ratio of their medians, every
5xx (there must be none), the hostile requests' statuses, the server's peak memory (resident
set, sampled, and the kernel's high-water mark) and whether every valid answer is right.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import io
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib

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
    safety = None
    if args.safety:
        from gemini_jax.safety.filter import SafetyFilter

        safety = SafetyFilter.load(args.safety)
    uvicorn.run(ChatServer(engine, ServerConfig(), safety=safety).app, host="127.0.0.1", port=args.serve_port,
                log_level="warning", backlog=4096, timeout_keep_alive=60)


def start_server(args: argparse.Namespace, tokenizer_path: str | None, port: int) -> subprocess.Popen:
    """The server in its own process, so that the clients do not compete with it for the GIL."""
    import httpx

    command = [sys.executable, __file__, "--serve-port", str(port), "--preset", args.preset, "--slots",
               str(args.slots), "--max-queue", str(args.max_queue), "--max-len", str(args.max_len)]
    command += ["--checkpoint", args.checkpoint] if args.checkpoint else ["--tokenizer", tokenizer_path]
    if args.switch_interval is not None:
        command += ["--switch-interval", str(args.switch_interval)]
    if args.safety:
        command += ["--safety", args.safety]
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


async def fire(url: str, bodies: list[bytes], *, time_limit: float) -> list[tuple[int, str, int, float]]:
    """All requests at once (JSON bodies, as bytes): (status, text, completion tokens, latency s)
    each; status 0 = no answer."""
    import httpx

    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(timeout=time_limit, limits=limits) as client:
        async def one(body: bytes):
            start = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers={"Content-Type": "application/json"})
            except httpx.HTTPError as e:
                return 0, f"{type(e).__name__}: {e}", 0, time.perf_counter() - start
            latency = time.perf_counter() - start
            if response.status_code != 200:
                return response.status_code, response.text, 0, latency
            data = response.json()
            return 200, data["choices"][0]["message"]["content"], data["usage"]["completion_tokens"], latency

        return await asyncio.wait_for(asyncio.gather(*(one(b) for b in bodies)), time_limit)


# -- the mixed mode: hostile requests among valid ones ---------------------------------------------


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG: a few KB that decode to width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def silent_flac(seconds: int) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    with soundfile.SoundFile(buffer, "w", samplerate=16_000, channels=1, format="FLAC") as out:
        for _ in range(seconds // 10):
            out.write(np.zeros(160_000, np.int16))
    return buffer.getvalue()


HOSTILE_KINDS = ("audio_1h_flac", "image_10000px_png", "image_14000px_png", "top_p_nan", "temperature_infinity",
                 "top_k_1e10", "lone_surrogate", "nested_100k", "not_json")


def hostile_kinds() -> dict[str, bytes]:
    """Request bodies that must each be refused with a 4xx, quickly, without disturbing the rest."""
    def media_body(part: dict) -> bytes:
        return json.dumps({"messages": [{"role": "user", "content": [part]}], "max_tokens": 2}).encode()

    def png(width: int) -> bytes:
        url = "data:image/png;base64," + base64.b64encode(bomb_png(width, width)).decode()
        return media_body({"type": "image_url", "image_url": {"url": url}})

    def raw(extra: str, content: str = '"Is it red?"') -> bytes:
        return f'{{"messages": [{{"role": "user", "content": {content}}}], "max_tokens": 2{extra}}}'.encode()

    audio = {"data": base64.b64encode(silent_flac(3600)).decode(), "format": "flac"}
    return {
        "audio_1h_flac": media_body({"type": "input_audio", "input_audio": audio}),
        "image_10000px_png": png(10_000), "image_14000px_png": png(14_000),
        "top_p_nan": raw(', "top_p": NaN'), "temperature_infinity": raw(', "temperature": Infinity'),
        "top_k_1e10": raw(', "top_k": 10000000000'), "lone_surrogate": raw("", '"\\ud800"'),
        "nested_100k": raw(', "x": ' + "[" * 100_000 + "]" * 100_000), "not_json": b"{not json",
    }


class ServerUsage:
    """The server's resident set, sampled every 20 ms while running, and the CPU seconds it spent
    (Linux /proc; zeros elsewhere)."""

    def __init__(self, pid: int):
        self.path, self.peak_kib, self._stop = f"/proc/{pid}/status", 0, threading.Event()
        self.cpu_s = 0.0

    def cpu(self) -> float:
        try:
            with open(self.path.replace("status", "stat")) as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, ValueError, IndexError):
            return 0.0

    def read(self, field: str) -> int | None:
        try:
            with open(self.path) as status:
                return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))
        except (OSError, StopIteration):
            return None

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_kib = max(self.peak_kib, self.read("VmRSS") or 0)

    def __enter__(self) -> "ServerUsage":
        self.peak_kib, self._cpu_start = self.read("VmRSS") or 0, self.cpu()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_s = self.cpu() - self._cpu_start


def selected_kinds(args: argparse.Namespace) -> list[str]:
    kinds = list(HOSTILE_KINDS)
    if args.hostile_kinds is not None:
        unknown = set(args.hostile_kinds) - set(kinds)
        if unknown:
            raise SystemExit(f"--hostile-kinds: unknown {sorted(unknown)}; known: {list(HOSTILE_KINDS)}")
        kinds = [k for k in kinds if k in args.hostile_kinds]
    return [kinds[i % len(kinds)] for i in range(args.hostile)]


async def fire_raw(url: str, bodies: list[bytes], *, time_limit: float) -> list[tuple[int, float]]:
    """All requests at once, each a prebuilt HTTP/1.1 POST written to its own socket:
    (status, latency s) each; status 0 = no answer. Next to no CPU, as for clients on machines of
    their own: what a client spends here is taken from the server on a small machine."""
    host, port_path = url.split("//", 1)[1].split(":", 1)
    port, path = port_path.split("/", 1)

    async def one(body: bytes) -> tuple[int, float]:
        head = (f"POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        start = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
            await reader.read()  # the rest, until the server closes
            writer.close()
            status = int(status_line.split()[1])
        except (OSError, ValueError, IndexError):
            status = 0
        return status, time.perf_counter() - start

    return await asyncio.wait_for(asyncio.gather(*(one(b) for b in bodies)), time_limit)


def attack_child(args: argparse.Namespace) -> None:
    """The hostile clients, in their own process as real ones would be: they fire when the parent
    writes a line, then print (kind, status, latency s) of each request and their own CPU
    seconds as JSON."""
    names = selected_kinds(args)
    bodies = hostile_kinds()
    print("ready", flush=True)
    sys.stdin.readline()
    before = os.times()
    results = asyncio.run(fire_raw(args.attack_url, [bodies[name] for name in names], time_limit=args.time_limit))
    after = os.times()
    cpu_s = after.user + after.system - before.user - before.system
    print(json.dumps({"results": [[name, *r] for name, r in zip(names, results)], "cpu_s": cpu_s}), flush=True)


def attacked(args: argparse.Namespace, url: str, valid: list[bytes]) -> tuple[list, dict]:
    """The valid requests' results, fired while the hostile process fires its own, and its report."""
    command = [sys.executable, __file__, "--attack-url", url, "--hostile", str(args.hostile),
               "--time-limit", str(args.time_limit)] + (["--hostile-kinds", *args.hostile_kinds]
                                                        if args.hostile_kinds else [])
    attacker = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if attacker.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the hostile clients did not start (status {attacker.wait()})")
    attacker.stdin.write("go\n")
    attacker.stdin.flush()
    results = asyncio.run(fire(url, valid, time_limit=args.time_limit))
    hostile, _ = attacker.communicate(timeout=args.time_limit)
    return results, json.loads(hostile)


def mixed_runs(args: argparse.Namespace, url: str, pid: int, valid: list[bytes], picks, expected) -> dict:
    """The valid load alone, then the same load while `args.hostile` hostile requests arrive from
    another process, in `args.rounds` alternating pairs (p99s compared by their medians: one run
    on a shared machine is noisy)."""
    runs: dict[str, list[dict]] = {"all_valid": [], "mixed_valid": []}
    statuses: dict[str, dict[int, int]] = {}
    fives, unanswered, hostile_max, memory = 0, 0, 0.0, {"all_valid": 0, "mixed_valid": 0}
    attacker_cpu: list[float] = []
    cpu: dict[str, list[float]] = {"all_valid": [], "mixed_valid": []}
    for _ in range(args.rounds):
        for run in runs:
            with ServerUsage(pid) as peak:
                if run == "all_valid":
                    results, hostile = asyncio.run(fire(url, valid, time_limit=args.time_limit)), []
                else:
                    results, report = attacked(args, url, valid)
                    hostile = report["results"]
                    attacker_cpu.append(report["cpu_s"])
            memory[run] = max(memory[run], peak.peak_kib)
            cpu[run].append(peak.cpu_s)
            for name, status, latency in hostile:
                statuses.setdefault(name, {}).setdefault(status, 0)
                statuses[name][status] += 1
                hostile_max = max(hostile_max, latency)
            fives += sum(r[0] >= 500 for r in results) + sum(h[1] >= 500 for h in hostile)
            unanswered += sum(r[0] == 0 for r in results) + sum(h[1] == 0 for h in hostile)
            runs[run].append(summary(results, picks, expected))
    p99 = {run: statistics.median(r["latency_p99_s"] or float("nan") for r in rounds) for run, rounds in runs.items()}
    return {
        "mode": "mixed", "valid_requests": len(valid), "hostile_requests": args.hostile, "rounds": args.rounds,
        "valid_p99_s_per_round": {run: [r["latency_p99_s"] for r in rounds] for run, rounds in runs.items()},
        "valid_p99_s_median": p99,
        "p99_ratio_mixed_to_all_valid": round(p99["mixed_valid"] / p99["all_valid"], 2),
        "server_5xx": fives, "no_answer": unanswered,
        # A 429 is an answer (refused, counted below), not a lost or wrong one.
        "every_valid_answer_right": all(r["ok"] + r["refused"] == len(valid) for rounds in runs.values()
                                        for r in rounds),
        "refused_429": {run: sum(r["refused"] for r in rounds) for run, rounds in runs.items()},
        "hostile_statuses": statuses, "hostile_latency_max_s": round(hostile_max, 3),
        "server_cpu_s_median": {run: round(statistics.median(values), 2) for run, values in cpu.items()},
        "hostile_clients_cpu_s_median": round(statistics.median(attacker_cpu), 2),
        "server_peak_rss_mib": {**{run: round(kib / 1024, 1) for run, kib in memory.items()},
                                "lifetime_high_water": round((ServerUsage(pid).read("VmHWM") or 0) / 1024, 1)},
        "examples_failed": [e for rounds in runs.values() for r in rounds for e in r["examples_failed"]][:3],
    }


def parse_args() -> argparse.Namespace:
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
    parser.add_argument("--mixed", action="store_true",
                        help="run the valid load alone, then mixed with hostile requests, and compare")
    parser.add_argument("--hostile", type=int, default=64, help="hostile requests in the mixed run")
    parser.add_argument("--hostile-kinds", nargs="+", default=None, help="only these kinds (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating all-valid and mixed runs")
    parser.add_argument("--safety", default=None, metavar="DIR",
                        help="serve with this safety classifier (`gemini-jax safety train --out DIR`): every prompt "
                        "and every reply chunk is checked at the classifier's thresholds; a blocked answer counts "
                        "as mismatched")
    parser.add_argument("--serve-port", type=int, default=None, help=argparse.SUPPRESS)  # the child's mode
    parser.add_argument("--tokenizer", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--attack-url", default=None, help=argparse.SUPPRESS)  # the hostile clients' mode
    return parser.parse_args()


def summary(results, picks, expected) -> dict:
    """Counts and latencies of the valid requests of one run (`picks`: their prompts' indices)."""
    ok = [r for r, i in zip(results, picks) if r[0] == 200 and r[1] == expected[i]]
    mismatched = [(int(i), r[1], expected[i]) for r, i in zip(results, picks) if r[0] == 200 and r[1] != expected[i]]
    failed = [(r[0], r[1][:200]) for r in results if r[0] not in (200, 429)]
    latencies = sorted(r[3] for r in results if r[0] == 200)
    return {
        "requests": len(results), "ok": len(ok), "refused": sum(r[0] == 429 for r in results),
        "mismatched": len(mismatched), "failed": len(failed),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)
        if latencies else None,
        "tokens": sum(r[2] for r in results if r[0] == 200),
        "examples_mismatched": mismatched[:3], "examples_failed": failed[:3],
    }


def main() -> None:
    args = parse_args()
    if args.serve_port is not None:
        serve_child(args)
        return
    if args.attack_url is not None:
        attack_child(args)
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
    bodies = [json.dumps(request_body(*item, args.max_tokens)).encode() for item in items]
    picks = np.random.default_rng(1).integers(0, len(items), args.clients)
    try:
        start = time.perf_counter()
        asyncio.run(fire(url, bodies, time_limit=args.time_limit))  # compiles every prompt shape once
        warmup_s = time.perf_counter() - start
        if args.mixed:
            report = mixed_runs(args, url, server.pid, [bodies[i] for i in picks], picks, expected)
        else:
            start = time.perf_counter()
            results = asyncio.run(fire(url, [bodies[i] for i in picks], time_limit=args.time_limit))
            wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(30)

    common = {"distinct_prompts": len(items), "slots": args.slots, "max_queue": args.max_queue,
              "max_tokens": args.max_tokens, "model": args.checkpoint or f"{args.preset} (random weights)",
              "safety": args.safety}
    if args.mixed:
        print(json.dumps({**report, **common, "setup_s": round(setup_s, 1), "warmup_s": round(warmup_s, 1)},
                         indent=2))
        return
    run = summary(results, picks, expected)
    latency_count = sum(r[0] == 200 for r in results)
    print(json.dumps({
        **{k: run[k] for k in ("requests", "ok", "refused", "mismatched", "failed")}, **common,
        "wall_s": round(wall, 2), "requests_per_s": round(latency_count / wall, 2),
        "tokens_per_s": round(run["tokens"] / wall, 1),
        "latency_p50_s": run["latency_p50_s"], "latency_p99_s": run["latency_p99_s"],
        "setup_s": round(setup_s, 1), "warmup_s": round(warmup_s, 1),
        "examples_mismatched": run["examples_mismatched"], "examples_failed": run["examples_failed"],
    }, indent=2))


if __name__ == "__main__":
    main()
