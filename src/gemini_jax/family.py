"""The presets side by side: shapes and parameter counts by component (`gemini-jax presets`).

Counts come from `count_params`, which builds abstract one- and two-block models under
`jax.eval_shape` and extends them exactly to each stack's depth: nothing is allocated, and
Ultra's half a trillion parameters are counted in about a second on a laptop.
"""

from __future__ import annotations

import json
from typing import Any

from gemini_jax.config import PRESETS, ModelConfig
from gemini_jax.model.gemini import count_params

COLUMNS = (
    ("preset", "preset"), ("layers", "layers"), ("width", "width"), ("heads", "heads"), ("kv_heads", "KV heads"),
    ("head_dim", "head dim"), ("mlp_dim", "MLP width"), ("vocab", "vocabulary"), ("vision", "vision (w x d)"),
    ("audio", "audio (w x d)"), ("embedding", "embedding"), ("decoder", "decoder"), ("vision_params", "vision"),
    ("audio_params", "audio"), ("total", "total"),
)


def describe(name: str, config: ModelConfig) -> dict[str, Any]:
    """One preset's row: its shape and its parameter counts ("decoder" includes the embedding)."""
    counts = count_params(config)
    vision, audio = config.vision, config.audio
    return {
        "preset": name, "layers": config.depth, "width": config.width, "heads": config.num_heads,
        "kv_heads": config.num_kv_heads, "head_dim": config.head_dim, "mlp_dim": config.mlp_dim,
        "vocab": config.vocab_size,
        "vision": f"{vision.width} x {vision.depth}" if vision else "-",
        "audio": f"{audio.width} x {audio.depth}" if audio else "-",
        "embedding": config.vocab_size * config.width, "decoder": counts["decoder"],
        "vision_params": counts["vision"], "audio_params": counts["audio"], "total": counts["total"],
    }


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}" if n < 100 * scale else f"{n / scale:,.0f}{unit}"
    return str(n)


def table(rows: list[dict[str, Any]], *, markdown: bool = False) -> str:
    """Rows as an aligned text table, or as a Markdown table; counts in k/M/B."""
    cells = [[_human(r[k]) if k in ("embedding", "decoder", "vision_params", "audio_params", "total")
              and isinstance(r[k], int) else f"{r[k]:,}" if isinstance(r[k], int) else str(r[k])
              for k, _ in COLUMNS] for r in rows]
    header = [title for _, title in COLUMNS]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    fmt = lambda row: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, cells)])


def main(names: list[str] | None = None, *, output_format: str = "table") -> str:
    rows = [describe(n, PRESETS[n]) for n in (names or PRESETS)]
    if output_format == "json":
        return json.dumps(rows, indent=2)
    return table(rows, markdown=output_format == "markdown")
