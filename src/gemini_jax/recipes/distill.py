"""Distillation as a recipe: the demo recipe of a student preset, taught by a trained teacher run.

    gemini-jax distill --teacher runs/demo --student-preset demo-half

Everything but the loss and the tokenizer is the student recipe's (`gemini-jax train --preset
<student>`): the same data stream, seed, schedule and final evaluation, so a distilled and a
scratch student compare step for step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

from gemini_jax import checkpoint
from gemini_jax.recipes.demo import DemoRecipe
from gemini_jax.recipes.runner import run_dir_of, train_and_evaluate
from gemini_jax.train import distill

RECORD_FILE = "distillation.json"


def distill_and_evaluate(student: DemoRecipe, *, teacher: str,
                         config: distill.DistillConfig = distill.DistillConfig()) -> dict[str, Any]:
    """Trains `student` (a DemoRecipe; its run_dir defaults to runs/distill) on the distillation
    loss against the teacher run, then evaluates it as the recipe does."""
    teacher_model = distill.load_teacher(teacher)
    student = dataclasses.replace(student, run_dir=student.run_dir or "runs/distill",
                                  tokenizer_file=str(checkpoint.tokenizer_path(teacher)))
    distill.check_compatible(teacher=teacher_model.config, student=student.model_config())
    run_dir = run_dir_of(student)
    checkpoint.check_trainable(run_dir)
    _record_teacher(run_dir, teacher=teacher, config=config)
    return train_and_evaluate(
        student, make_trainer=functools.partial(distill.DistillTrainer, teacher=teacher_model, distill=config))


def _record_teacher(run_dir: Path, *, teacher: str, config: distill.DistillConfig) -> None:
    """Writes distillation.json. Only the student is checkpointed: the record says what it
    learned from, and a resumed run must learn from the same teacher."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RECORD_FILE
    if path.exists() and checkpoint.has_checkpoints(run_dir):
        earlier = json.loads(path.read_text()).get("teacher")
        if earlier is not None and Path(earlier).resolve() != Path(teacher).resolve():
            raise checkpoint.CheckpointError(
                f"{str(run_dir)!r} was distilled from {earlier!r}; resume it with that teacher, or distil from "
                f"{str(teacher)!r} into another run directory")
    record = {"teacher": str(Path(teacher).resolve()), **dataclasses.asdict(config)}
    path.write_text(json.dumps(record, indent=2) + "\n")
