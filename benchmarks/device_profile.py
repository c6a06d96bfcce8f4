"""Where a compiled program's device time goes: `jax.profiler` traces summarised as JSON.

    with device_profile.traced(directory):
        for _ in range(steps):
            out = step(...)
        jax.block_until_ready(out)
    summary = device_profile.summarize(directory, steps=steps)

The trace (`*.trace.json.gz`, the format TensorBoard's profile plugin reads) holds one event
per GPU kernel on the device's stream lines. `summarize` adds them up per step: busy time (the
sum of kernel times; the rest of the step is the device waiting), time by kind of kernel
(matmuls, attention, fusions, copies), and the kernels that take the most. Where the trace has
the XLA op line (each HLO instruction's span), the same by HLO op name, which can be looked up in
the optimized HLO (`--xla_dump_to`).

On a CPU the trace holds host events only; the summary then says so and has no device time.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import jax

# Kernel name patterns of each kind, tried in order (cuBLAS's sm90_xmma / nvjet kernels,
# cuDNN's fused attention, XLA's own Triton matmuls, XLA's fusions, memory copies).
KINDS = (
    ("attention", re.compile(r"sdpa|fmha|flash|cudnn", re.I)),
    ("matmul_cublas", re.compile(r"gemm|xmma|nvjet|cutlass|cublas", re.I)),
    ("matmul_triton", re.compile(r"triton", re.I)),
    ("copy", re.compile(r"memcpy|memset|copy", re.I)),
    ("reduce_fusion", re.compile(r"reduce|scatter", re.I)),
    ("fusion", re.compile(r"fusion|kernel", re.I)),
)


def kind_of(kernel: str) -> str:
    for kind, pattern in KINDS:
        if pattern.search(kernel):
            return kind
    return "other"


@contextlib.contextmanager
def traced(directory: str | pathlib.Path) -> Iterator[None]:
    """`jax.profiler.trace` into `directory` (the trace lands in its plugins/profile/<run>/)."""
    with jax.profiler.trace(str(directory)):
        yield


def _latest_trace(directory: pathlib.Path) -> pathlib.Path:
    traces = sorted(directory.glob("plugins/profile/*/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"no *.trace.json.gz under {directory}/plugins/profile: was it traced?")
    return traces[-1]


def summarize(directory: str | pathlib.Path, *, steps: int, top: int = 30) -> dict[str, Any]:
    """Per-step device time of the latest trace under `directory`, which covered `steps` steps."""
    with gzip.open(_latest_trace(pathlib.Path(directory)), "rt") as f:
        events = json.load(f)["traceEvents"]
    processes, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            processes[e["pid"]] = e["args"]["name"]
        elif e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e["tid"])] = e["args"]["name"]
    devices = {pid for pid, name in processes.items() if "/device:" in name}
    spans = [e for e in events if e.get("ph") == "X" and e.get("pid") in devices and "dur" in e]
    if not spans:
        return {"device_events": 0, "note": f"no device events (processes: {sorted(processes.values())})"}

    line = lambda e: threads.get((e["pid"], e["tid"]), str(e["tid"]))  # noqa: E731
    by_line = collections.Counter()
    for e in spans:
        by_line[line(e)] += e["dur"]
    # Kernels run on the stream lines; derived lines (XLA Ops, XLA Modules, Steps) repeat them.
    kernels = [e for e in spans if line(e).startswith("Stream")] or spans
    first = min(e["ts"] for e in kernels)
    last = max(e["ts"] + e["dur"] for e in kernels)
    per_step = lambda us: round(us / 1e3 / steps, 3)  # noqa: E731  microseconds in all -> ms a step

    by_kind, by_kernel, counts = collections.Counter(), collections.Counter(), collections.Counter()
    for e in kernels:
        by_kind[kind_of(e["name"])] += e["dur"]
        by_kernel[e["name"]] += e["dur"]
        counts[e["name"]] += 1
    busy = sum(by_kind.values())
    summary: dict[str, Any] = {
        "steps": steps,
        "device_events": len(kernels),
        "kernels_per_step": round(len(kernels) / steps, 1),
        "span_ms_per_step": per_step(last - first),
        "busy_ms_per_step": per_step(busy),
        "busy_share_of_span": round(busy / max(last - first, 1e-9), 3),
        "ms_per_step_by_kind": {k: per_step(v) for k, v in by_kind.most_common()},
        "lines_ms_per_step": {k: per_step(v) for k, v in by_line.most_common(12)},
        "top_kernels": [
            {"name": name[:160], "kind": kind_of(name), "ms_per_step": per_step(us), "calls_per_step": counts[name] / steps}
            for name, us in by_kernel.most_common(top)
        ],
    }
    # The HLO instruction of each kernel: an argument of the kernel's event, or the XLA Ops line.
    by_op = collections.Counter()
    for e in kernels:
        if "hlo_op" in e.get("args", {}):
            by_op[e["args"]["hlo_op"]] += e["dur"]
    if not by_op:
        for e in spans:
            if line(e) == "XLA Ops":
                by_op[e["name"]] += e["dur"]
    if by_op:
        summary["top_hlo_ops"] = [{"op": op, "ms_per_step": per_step(us)} for op, us in by_op.most_common(top)]
    return summary
