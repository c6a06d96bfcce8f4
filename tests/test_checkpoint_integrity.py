"""Damaged checkpoints are refused in one line that names the step, the array and an intact
earlier step; `--step` loads that one. Every saved array's digest is written with its step."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from gemini_jax import checkpoint, cli, digests
from gemini_jax.config import PRESETS
from gemini_jax.data.tokenizer import train_tokenizer

CONFIG = dataclasses.replace(PRESETS["test"], vocab_size=400).text_only
TEXT = ["def add(a, b):\n    return a + b\n" * 20, "the quick brown fox jumps over the lazy dog\n" * 20]


@pytest.fixture()
def run(tmp_path, build_model):
    """A run with checkpoint steps 1 and 2 of two different parameter sets."""
    train_tokenizer(TEXT, vocab_size=CONFIG.vocab_size, path=tmp_path / "tok.model")
    run_dir = tmp_path / "run"
    checkpoint.write_run_files(run_dir, config=CONFIG, tokenizer_path=tmp_path / "tok.model")
    saver = checkpoint.Checkpointer(run_dir, async_save=False)
    for step, seed in ((1, 0), (2, 1)):
        params = nnx.to_pure_dict(nnx.state(build_model(CONFIG, seed=seed), nnx.Param))
        saver.save(step, state={"params": params}, meta={"step": step})
    saver.close()
    return run_dir


def _chunks(run_dir: Path, step: int) -> list[Path]:
    """The data files of a step's arrays, largest first."""
    files = [p for p in (run_dir / "checkpoints" / str(step) / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    return sorted(files, key=lambda p: -p.stat().st_size)


def _flip(path: Path, count: int = 64, *, at: float = 0.5, original: bytes | None = None) -> None:
    """Flips `count` bytes of the file (or of `original`, written to it) from `at` of its length."""
    data = bytearray(path.read_bytes() if original is None else original)
    start = int(len(data) * at)
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_digests_catch_changed_and_moved_bytes():
    x = np.arange(64, dtype=np.float32)
    saved = digests.digests({"w": x})
    flipped = x.copy()
    flipped.view(np.uint8)[9] ^= 1
    assert digests.mismatches({"w": flipped}, saved) == ["w"]
    assert digests.mismatches({"w": x[::-1].copy()}, saved) == ["w"]  # same bytes, other places
    assert digests.mismatches({"w": x.copy()}, saved) == []


def test_a_step_with_flipped_bytes_is_refused_naming_an_intact_step(run, build_model):
    # The arrays are stored compressed: flipped bytes that still decompress are wrong values only the
    # digest can catch (naming the array), while those that land on the compression's framing are refused
    # by the storage itself. Which a given place holds varies from save to save, so several are tried:
    # every one must be refused, and the digest must name the array for some.
    chunk = _chunks(run, 2)[0]
    intact = chunk.read_bytes()
    model = nnx.eval_shape(lambda: build_model(CONFIG))
    named = 0
    for at in np.linspace(0.1, 0.9, 9):
        _flip(chunk, at=at, original=intact)
        with pytest.raises(checkpoint.CheckpointError) as error:
            checkpoint.load_params(run, model)
        message = str(error.value)
        assert "step 2" in message and "step 1 is intact" in message and "--step 1" in message, message
        named += "params/" in message and "does not match the one saved with it" in message
    assert named >= 3
    assert checkpoint.load_run(run, step=1).step == 1  # the intact step still loads


@pytest.mark.parametrize("damage", ["truncate", "manifest"])
def test_unreadable_steps_get_one_line_not_tracebacks(run, damage, capsys):
    if damage == "truncate":
        chunk = _chunks(run, 2)[0]
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    else:
        next((run / "checkpoints" / "2" / "state").rglob("manifest.ocdbt")).unlink()
    assert cli.main(["generate", "--checkpoint", str(run), "--max-new-tokens", "2", "hi"]) == 2
    captured = capsys.readouterr()
    [line] = [line for line in captured.err.splitlines() if line.strip()]
    assert "step 2" in line and "step 1 is intact" in line, line
    assert "Traceback" not in captured.err + captured.out
    assert cli.main(["generate", "--checkpoint", str(run), "--step", "1", "--max-new-tokens", "2", "hi"]) == 0


def test_every_step_damaged_says_so(run):
    _flip(_chunks(run, 1)[0])
    _flip(_chunks(run, 2)[0])
    with pytest.raises(checkpoint.CheckpointError, match="no earlier step is intact"):
        checkpoint.load_run(run)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint step 7; it has steps 1, 2"):
        checkpoint.load_run(run, step=7)


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
    from gemini_jax.checkpoint import replace_dir

    target = tmp_path / "image_scorer"
    target.mkdir()
    (target / "old.json").write_text("old")

    def fails(partial):
        partial.mkdir()
        (partial / "new.json").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_dir(target, fails)
    assert [p.name for p in target.iterdir()] == ["old.json"]  # the old directory, untouched

    def writes(partial):
        partial.mkdir()
        (partial / "new.json").write_text("new")

    replace_dir(target, writes)  # a stale half-written .partial from the failure is cleared first
    assert [p.name for p in target.iterdir()] == ["new.json"]
    assert not (tmp_path / "image_scorer.partial").exists()
