"""benchmarks/repeated_runs_memory.py: runs train one after another in one process, its memory read after each."""

import dataclasses
import sys
from pathlib import Path

import pytest

from gemini_jax.config import PRESETS
from gemini_jax.data.corpora.demo import DemoSizes
from gemini_jax.recipes import demo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import repeated_runs_memory  # noqa: E402


def test_memory_is_read_after_each_run(tmp_path):
    recipe = demo.DemoRecipe(run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), batch_size=4,
                             model=dataclasses.replace(PRESETS["test"], vocab_size=400), corpus=DemoSizes.tiny(),
                             eval_limit=3)
    recipe = dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, steps=4, progress=False))
    after = repeated_runs_memory.resident_after_runs([recipe], release=True)
    assert len(after) == 1 and after[0] > 0.1
    assert (tmp_path / "run" / "results.json").is_file()


def test_a_folder_with_runs_in_it_is_refused(tmp_path, capsys):
    (tmp_path / "with").mkdir()
    with pytest.raises(SystemExit):
        repeated_runs_memory.main(["--out", str(tmp_path)])
    assert "is not empty" in capsys.readouterr().err
