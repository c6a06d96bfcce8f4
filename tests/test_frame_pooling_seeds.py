"""benchmarks/frame_pooling_seeds.py: each arm is the demo with only its frame pooling changed."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from gemini_jax.config import FramePooling, get_preset
from gemini_jax.recipes.runner import recipe_as_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import frame_pooling_seeds  # noqa: E402


@pytest.mark.parametrize("arm", list(frame_pooling_seeds.ARMS))
def test_each_arm_changes_only_the_frame_pooling(arm):
    demo, model = get_preset("demo"), frame_pooling_seeds.arm_model(arm)
    pooling, tokens = frame_pooling_seeds.ARMS[arm]
    assert (model.vision.frame_pooling, model.vision.frame_soft_tokens) == (pooling, tokens)
    same = dataclasses.replace(model, vision=dataclasses.replace(
        model.vision, frame_pooling=demo.vision.frame_pooling, frame_soft_tokens=demo.vision.frame_soft_tokens))
    assert same == demo
    assert (model == demo) == (arm == frame_pooling_seeds.DEMO_ARM)
    assert frame_pooling_seeds.ARMS[frame_pooling_seeds.DEMO_ARM][0] == FramePooling.GRID_AND_FRAME


def _run(tmp_path, name, *, seed, model=None, preset="demo", steps=10_000):
    run = tmp_path / name
    run.mkdir()
    recipe = {"train": {"seed": seed, "steps": steps}, "model": model, "preset": preset}
    (run / "results.json").write_text(json.dumps({"recipe": recipe}))
    return run


def test_a_given_demo_run_must_be_the_demo_preset_at_its_seed(tmp_path):
    frame_pooling_seeds.check_demo_run(_run(tmp_path, "ok", seed=1), 1)
    with pytest.raises(SystemExit, match=r"seed 0 \(wanted 1\)"):
        frame_pooling_seeds.check_demo_run(_run(tmp_path, "other-seed", seed=0), 1)
    with pytest.raises(SystemExit, match="not the demo preset"):
        frame_pooling_seeds.check_demo_run(_run(tmp_path, "half", seed=1, preset="demo-half"), 1)
    with pytest.raises(SystemExit, match=r"20 steps \(wanted 10000\)"):
        frame_pooling_seeds.check_demo_run(_run(tmp_path, "short", seed=1, steps=20), 1)
    frame_pooling_seeds.check_demo_run(tmp_path / "short", 1, 20)
    with pytest.raises(SystemExit, match="has no results.json"):
        frame_pooling_seeds.check_demo_run(tmp_path / "missing", 1)
    with pytest.raises(SystemExit, match="one per seed"):
        frame_pooling_seeds.main(["--seeds", "0", "1", "--demo-runs", str(tmp_path / "ok")])


def test_a_finished_run_of_other_settings_is_refused_not_mixed_in(tmp_path):
    recipe = recipe_as_json(frame_pooling_seeds.DemoRecipe(model=frame_pooling_seeds.arm_model("grid")))
    run = tmp_path / "grid-s0"
    run.mkdir()
    recipe["train"]["seed"], recipe["train"]["steps"] = 0, 20
    (run / "results.json").write_text(json.dumps({"recipe": recipe}))
    assert frame_pooling_seeds.trained(run, "grid", 0, 20) == run  # finished as asked: read back
    with pytest.raises(SystemExit, match=r"train.steps differ from the grid arm at seed 0"):
        frame_pooling_seeds.trained(run, "grid", 0, None)
    with pytest.raises(SystemExit, match=r"model differ from the frame arm"):
        frame_pooling_seeds.trained(run, "frame", 0, 20)
