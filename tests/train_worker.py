"""A training run in a child process, for tests that kill it with SIGKILL (tests/test_train.py).

    python tests/train_worker.py RUN_DIR --tokenizer T.model [--checkpoint-every 2]
                                 [--step-delay 0.3] [--kill-in-save-of 6]

Trains the text-only `test` preset for `STEPS` steps on `text_stream` (a seeded, shuffled
Grain pipeline whose state is checkpointed), logging every step to RUN_DIR/metrics.jsonl;
run again on the same RUN_DIR, it resumes. tests/test_train.py imports the data and the
settings from here, so its in-process runs are the reference the killed runs must match.

--step-delay slows each batch down, so that a test can kill the run between two checkpoints.
--kill-in-save-of N kills the process with SIGKILL inside the save of step N, once Orbax has
written all of the step's files into its temporary directory and before it renames it into
place: the moment a save is most nearly complete but not yet committed.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

STEPS = 8


def documents() -> list[str]:
    return [inspect.getsource(textwrap)[i : i + 600] for i in range(0, 12_000, 600)]


def text_stream(documents, tok, seed=0):
    from gemini_jax.data import pipeline

    return iter(pipeline.packed_text(documents, tokenizer=tok, seq_len=48, batch_size=4, seed=seed,
                                     prefetch_batches=0))


def model_config():
    from gemini_jax.config import PRESETS

    return dataclasses.replace(PRESETS["test"].text_only, vocab_size=400)


def train_config(**changes):
    from gemini_jax.train.optimizer import OptimizerConfig
    from gemini_jax.train import TrainConfig

    settings = {"steps": STEPS, "log_every": 1, "checkpoint_every": 4, "progress": False,
                "optimizer": OptimizerConfig(learning_rate=1e-2, warmup_steps=2, total_steps=STEPS)}
    return TrainConfig(**{**settings, **changes})


class Slowed:
    """`stream` with a pause before each batch; its state is the stream's."""

    def __init__(self, stream, seconds: float):
        self.stream, self.seconds = stream, seconds

    def __next__(self):
        time.sleep(self.seconds)
        return next(self.stream)

    def get_state(self):
        return self.stream.get_state()

    def set_state(self, state):
        self.stream.set_state(state)


def kill_in_save_of(step: int, run_dir: Path) -> None:
    import orbax.checkpoint as ocp

    atomic = ocp.path.atomicity.AtomicRenameTemporaryPath
    finalize = atomic.finalize

    async def finalize_or_die(self):
        if self.get_final().name == str(step):
            # Which thread commits tells the test whether the save ran in the background.
            (run_dir / "killed_in_save.txt").write_text(threading.current_thread().name)
            os.kill(os.getpid(), signal.SIGKILL)
        await finalize(self)

    atomic.finalize = finalize_or_die


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--kill-in-save-of", type=int, default=None)
    args = parser.parse_args()

    import jax

    # As tests/conftest.py, so that these losses equal the test process's bit for bit.
    jax.config.update("jax_num_cpu_devices", 4)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    from gemini_jax.data.tokenizer import Tokenizer
    from gemini_jax.train import train

    if args.kill_in_save_of is not None:
        kill_in_save_of(args.kill_in_save_of, args.run_dir)
    data = text_stream(documents(), Tokenizer.load(args.tokenizer))
    if args.step_delay:
        data = Slowed(data, args.step_delay)
    train(config=model_config(), run_dir=args.run_dir, data=data,
          train_config=train_config(checkpoint_every=args.checkpoint_every))


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    main()
