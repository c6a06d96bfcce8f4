"""benchmarks/drawn_image_factors.py: every variant changes only what it names, and a run is
scored on each, per kind of question."""

import dataclasses
import inspect
import sys
import textwrap
from pathlib import Path

import numpy as np
from conftest import write_fresh_run

from gemini_jax.config import PRESETS
from gemini_jax.data.corpora import robustness
from gemini_jax.data.tokenizer import train_tokenizer
from gemini_jax.evals.image_judge import shape_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import drawn_image_factors as factors  # noqa: E402


def test_each_variant_changes_what_it_names():
    for name, (size, dark, noise) in factors.VARIANTS.items():
        rng = np.random.default_rng(0)
        for _ in range(20):
            shape, colour, pixels = factors.scene(rng, size, dark, noise)
            assert shape in robustness.VQA_SHAPES and colour in robustness.VQA_COLOURS
            border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
            values, counts = np.unique(border, axis=0, return_counts=True)
            # Without noise the border is the background and perhaps the shape's flat fill; with it, all but unique.
            assert (np.sort(counts)[-2:].sum() < 0.2 * len(border)) == noise, name
            if not noise:  # the suite's dark backgrounds are 40-160 a channel, easy-VQA's 230-255
                assert (values[counts.argmax()].max() <= 160) == dark or shape_mask(pixels)[0].any(), name
                rows, cols = np.nonzero(shape_mask(pixels))
                extent = max(np.ptp(rows), np.ptp(cols)) + 1  # radius 3: 7 pixels; 8-16: 16-33; 22-30: 44-61
                assert (extent < 10) == (size == "small") and (extent > 40) == (size == "large"), (name, extent)


def test_a_run_is_scored_on_every_variant_and_kind(tmp_path, capsys):
    tokenizer = tmp_path / "t.model"
    train_tokenizer([inspect.getsource(textwrap), "is there a red shape? yes no circle\n" * 30], vocab_size=400,
                    path=tokenizer)
    config = dataclasses.replace(PRESETS["test"], vocab_size=400)
    run = write_fresh_run(tmp_path / "run", config=config, tokenizer_path=tokenizer)
    result = factors.main(["--runs", str(run), str(run), "--count", "3"])
    scores = result["runs"][str(run)]
    assert set(factors.VARIANTS) <= set(scores)
    assert all(0.0 <= v <= 100.0 for v in scores.values())
    assert {k.split(":")[1] for k in scores if ":" in k} <= {"present", "absent", "shape", "color"}
    assert result["std"] == dict.fromkeys(scores, 0.0)  # the same run twice
    assert '"easy-vqa-like"' in capsys.readouterr().out
