"""The on-disk format of a run: what training writes and what generation and evaluation read.

    RUN_DIR/
      config.json        the ModelConfig (plain JSON)
      tokenizer.model    the SentencePiece model the run used
      checkpoints/<step>/state   Orbax: {"params": ..., "opt_state": ...}
      checkpoints/<step>/meta    JSON: step, data iterator state, training settings
      quantization.json  only in a quantized run (`gemini-jax quantize`): bits, group size;
                         its checkpoint then holds {"params": ...} with packed codes and scales
      lora.json          only in a LoRA run: rank, alpha, targets and its base (run, step,
                         digests of the base's parameters); its checkpoints hold the adapters
                         and their optimizer state alone, loaded onto the base and merged

Saves are asynchronous: `Checkpointer.save` returns once the arrays are copied off the
devices, and training goes on while a background thread writes them; the next save (or
`wait`) waits for the write in flight. Each step is written into a temporary directory
(`<step>.orbax-checkpoint-tmp*`) that is renamed to `<step>` only when complete, so a crash
or kill -9 during a save leaves the previous step usable; `latest_step` sees finished steps
only, and the next Checkpointer deletes the leftover. Inference restores the parameters only.
Once a run has checkpoints its model is fixed: resuming it, or writing its run files again,
with another model's config or another tokenizer is refused (`check_same_model`).
It lives outside `train/` so that serving and evaluation need no training code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from gemini_jax import digests
from gemini_jax.config import ConfigError, ModelConfig, config_from_dict, config_to_dict
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.model import Gemini, lora, quant

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
CHECKPOINTS_DIR = "checkpoints"
QUANTIZATION_FILE = "quantization.json"
QUANTIZATION_FORMAT = "gemini-jax/int-groupwise-v1"
LORA_FILE = "lora.json"
LORA_FORMAT = "gemini-jax/lora-v1"
DIGESTS_KEY = "digests"  # in each step's metadata: {array path: digest} of the saved state


class CheckpointError(ValueError):
    """A directory that is not a usable run or checkpoint."""


# Config fields that leave the parameters as they are: a run may resume with other values
# (another dtype or attention, or a longer context: max_seq_len and RoPE's base, as in
# context extension).
RUNTIME_FIELDS = ("dtype", "attention_impl", "attention_block", "remat", "scan_layers", "max_seq_len", "rope_base")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}


def has_checkpoints(run_dir: str | os.PathLike) -> bool:
    """Whether the run holds a finished checkpoint (a step directory; not a save cut short)."""
    checkpoints = Path(run_dir) / CHECKPOINTS_DIR
    return checkpoints.is_dir() and any(p.name.isdigit() and p.is_dir() for p in checkpoints.iterdir())


def model_differences(saved: dict[str, Any], config: ModelConfig) -> list[str]:
    """How `config` differs from a saved config dict in what its parameters are ("width 24 -> 32");
    fields that leave the parameters as they are (RUNTIME_FIELDS) do not count."""
    # Through JSON, as the saved config went: tuples become lists.
    saved, wanted = _flat(saved), _flat(json.loads(json.dumps(config_to_dict(config))))
    return [f"{k} {saved.get(k)!r} -> {wanted.get(k)!r}" for k in sorted(set(saved) | set(wanted))
            if k not in RUNTIME_FIELDS and saved.get(k) != wanted.get(k)]


def another_model_error(run_dir: str | os.PathLike, differences: list[str]) -> CheckpointError:
    return CheckpointError(
        f"{str(run_dir)!r} holds checkpoints of another model ({'; '.join(differences)}): resume it with the "
        f"settings it was trained with, or train into another run directory")


def check_same_model(run_dir: str | os.PathLike, config: ModelConfig, tokenizer_path: str | os.PathLike) -> None:
    """Refuses to write `config` and a tokenizer over those of a run that has checkpoints of
    another model: its checkpoints would no longer load, with anything."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists() or not has_checkpoints(run_dir):
        return
    differences = model_differences(json.loads((run_dir / CONFIG_FILE).read_text()), config)
    if (run_dir / TOKENIZER_FILE).exists() and (
            Path(tokenizer_path).read_bytes() != (run_dir / TOKENIZER_FILE).read_bytes()):
        differences.append("another tokenizer")
    if differences:
        raise another_model_error(run_dir, differences)


def write_run_files(run_dir: str | os.PathLike, *, config: ModelConfig, tokenizer_path: str | os.PathLike) -> None:
    run_dir = Path(run_dir)
    check_same_model(run_dir, config, tokenizer_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CONFIG_FILE, json.dumps(config_to_dict(config), indent=2).encode())
    atomic_write(run_dir / TOKENIZER_FILE, Path(tokenizer_path).read_bytes())


def atomic_write(path: Path, data: bytes) -> None:
    """Writes `data` beside `path`, then renames it into place: a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def replace_dir(path: Path, fill: Callable[[Path], Any]) -> None:
    """Replaces the directory `path` by one that `fill` writes beside it (PATH.partial, cleared first)
    and then renames into place: a crash leaves the old directory or the new one, never half of it."""
    import shutil

    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    fill(partial)
    shutil.rmtree(path, ignore_errors=True)
    partial.rename(path)


def read_config(run_dir: str | os.PathLike) -> ModelConfig:
    path = Path(run_dir) / CONFIG_FILE
    _check_run_dir(run_dir)
    try:
        return config_from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, ConfigError) as e:
        raise CheckpointError(f"{path}: not a valid model config: {e}") from None


def _read_record(path: Path, *, expected_format: str, what: str,
                 check: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
    """The JSON record at `path` (None where there is none), its format and `check` passed; any
    problem is a CheckpointError naming the file and `what` it should have been."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("format") != expected_format:
            raise ValueError(f"format {record.get('format')!r}, expected {expected_format!r}")
        check(record)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a valid {what}: {e}") from None
    return record


def _check_quantization(record: dict[str, Any]) -> None:
    int(record["bits"]), int(record["group_size"])
    names = record.get("quantized", [])
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError("'quantized' must be a list of weight names")


def read_quantization(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's quantization record (bits, group_size, ...), or None for a float run."""
    return _read_record(Path(run_dir) / QUANTIZATION_FILE, expected_format=QUANTIZATION_FORMAT,
                        what="quantization record", check=_check_quantization)


def write_quantization(run_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    atomic_write(Path(run_dir) / QUANTIZATION_FILE,
                  json.dumps({"format": QUANTIZATION_FORMAT, **record}, indent=2).encode())


def check_trainable(run_dir: str | os.PathLike) -> None:
    """Training refuses a quantized run: its integer codes have no gradient and no optimizer state."""
    if (Path(run_dir) / QUANTIZATION_FILE).exists():
        raise CheckpointError(
            f"{str(run_dir)!r} is a quantized run (it has {QUANTIZATION_FILE}): it can be used for generate, "
            f"eval and serve, not for training; train or fine-tune the float run it was made from"
        )


def tokenizer_path(run_dir: str | os.PathLike) -> Path:
    _check_run_dir(run_dir)
    return Path(run_dir) / TOKENIZER_FILE


def _check_run_dir(run_dir: str | os.PathLike) -> None:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"checkpoint directory {str(run_dir)!r} does not exist")
    missing = [name for name in (CONFIG_FILE, TOKENIZER_FILE, CHECKPOINTS_DIR) if not (run_dir / name).exists()]
    if missing:
        raise CheckpointError(
            f"{str(run_dir)!r} is not a gemini-jax run directory: missing {', '.join(missing)} "
            f"(expected {CONFIG_FILE}, {TOKENIZER_FILE} and {CHECKPOINTS_DIR}/<step>/, as `gemini-jax train` writes)"
        )


class Checkpointer:
    """Saves and restores training state under RUN_DIR/checkpoints (async, atomic, pruned)."""

    def __init__(self, run_dir: str | os.PathLike, *, max_to_keep: int = 2, async_save: bool = True):
        self.directory = Path(run_dir).absolute() / CHECKPOINTS_DIR
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True,
                cleanup_tmp_directories=True,  # what a save cut short by a crash left behind
            ),
        )
        # Orbax deletes those leftovers in a background thread that close() does not wait for:
        # a second Checkpointer on the same directory would race it, both deleting the same
        # files, and its first save would fail. Waiting here leaves only saves in the background.
        # (A private method, as of orbax-checkpoint 0.12.8: should it go, nothing breaks but
        # this wait, and tests/test_train.py's race test says so.)
        await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
        if await_cleanup is not None:
            await_cleanup()

    def latest_step(self) -> int | None:
        """The newest finished step (never one whose save is still in flight or was cut short)."""
        return self._manager.latest_step()

    def save(self, step: int, *, state: dict[str, Any], meta: dict[str, Any]) -> None:
        """`state` is a pytree of arrays (params as a pure dict, optimizer state). Its digests go
        into `meta`, written in the same atomic step, and are checked when the step is read."""
        meta = {**meta, DIGESTS_KEY: digests.digests(state)}
        self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )

    def read_meta(self, step: int) -> dict[str, Any]:
        """A step's JSON metadata alone (step, model config, data position, settings)."""
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(self, step: int, *, state_like: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A step's state (shaped and placed like `state_like`) and metadata, its digests checked."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        run_dir = self.directory.parent

        def read(step: int) -> Any:
            return self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))

        restored = _read_verified(run_dir, step, read, lambda r: (r.state, r.meta),
                                  steps=self._manager.all_steps(), purpose="to resume training")
        return restored.state, restored.meta

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def load_params(run_dir: str | os.PathLike, model: nnx.Module, *, step: int | None = None) -> int:
    """Restores a run's parameters into `model` (built from the run's config); returns the step.

    A quantized run (see `read_quantization`) is loaded transparently: the model's dense
    weights become QuantizedWeights first (shapes only), then its codes and scales are restored.
    A LoRA run (see `read_lora`) too: its base run's parameters, checked against the digests
    the LoRA run recorded of them, with its adapters merged in (model/lora.py `merge_lora`).
    """
    _check_run_dir(run_dir)
    lora_record = read_lora(run_dir)
    if lora_record is not None:
        return _load_lora_run(run_dir, model, lora_record, step=step)
    quantization = read_quantization(run_dir)
    if quantization is not None:
        try:
            like = quant.quantized_params_like(model, group_size=int(quantization["group_size"]),
                                               bits=int(quantization["bits"]), names=quantization.get("quantized"))
        except quant.QuantizationError as e:
            raise CheckpointError(f"{str(run_dir)!r}: its quantization record does not fit its config: {e}") from None
        step, params = _restore_params(run_dir, quant.storage_like(like), step=step)
        quant.set_params(model, quant.from_storage(params, like))
    else:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        step, params = _restore_params(run_dir, abstract, step=step)
        state = nnx.state(model, nnx.Param)
        nnx.replace_by_pure_dict(state, params)
        nnx.update(model, state)
    return step


def _restore_params(run_dir: str | os.PathLike, abstract: Any, *, step: int | None) -> tuple[int, Any]:
    """(step, the "params" of checkpoint `step` (default: the latest), shaped like `abstract`),
    its digests checked."""
    manager = ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINTS_DIR)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"{str(run_dir)!r} holds no completed checkpoint under {CHECKPOINTS_DIR}/")
    if step not in manager.all_steps():
        raise CheckpointError(f"{str(run_dir)!r} has no checkpoint step {step}; it has steps "
                              f"{', '.join(map(str, sorted(manager.all_steps())))}")

    def read(step: int) -> Any:
        return manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={"params": abstract},
                restore_args=ocp.checkpoint_utils.construct_restore_args({"params": abstract}),
                partial_restore=True,
            ),
            meta=ocp.args.JsonRestore(),
        ))

    try:
        restored = _read_verified(run_dir, step, read, lambda r: (r.state, r.meta), steps=manager.all_steps(),
                                  purpose="for generate, eval and serve")
    finally:
        manager.close()
    return step, restored.state["params"]


def param_digests(model: nnx.Module) -> dict[str, str]:
    """{parameter path: digest} of `model`'s nnx.Params (digests.py): how a LoRA run knows its base."""
    return digests.digests(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def write_lora(run_dir: str | os.PathLike, *, lora: dict[str, Any], base_run: str | os.PathLike, base_step: int,
               base_digests: dict[str, str]) -> None:
    """Marks `run_dir` as a LoRA run: its LoRA settings and the base it adapts (the run's
    absolute path, the step and its parameters' digests)."""
    record = {"format": LORA_FORMAT, "lora": lora,
              "base": {"run_dir": os.path.abspath(base_run), "step": int(base_step), "digests": base_digests}}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    atomic_write(Path(run_dir) / LORA_FILE, json.dumps(record, indent=1).encode())


def _check_lora(record: dict[str, Any]) -> None:
    base = record["base"]
    if not (isinstance(base["run_dir"], str) and isinstance(base["step"], int)
            and isinstance(base["digests"], dict) and isinstance(record["lora"], dict)):
        raise ValueError("expected lora {rank, alpha, targets} and base {run_dir, step, digests}")


def read_lora(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A LoRA run's record (see `write_lora`), or None for any other run."""
    return _read_record(Path(run_dir) / LORA_FILE, expected_format=LORA_FORMAT, what="LoRA record",
                        check=_check_lora)


def load_lora_base(run_dir: str | os.PathLike, model: nnx.Module, record: dict[str, Any]) -> None:
    """Restores the base parameters of LoRA run `run_dir` (`record`, from `read_lora`) into
    `model`, refusing a base whose parameters differ from those the adapters were trained on."""
    base = record["base"]
    where = f"{str(run_dir)!r} is a LoRA run on {base['run_dir']!r} step {base['step']}"
    try:
        load_params(base["run_dir"], model, step=base["step"])
    except CheckpointError as e:
        raise CheckpointError(f"{where}, which does not load: {e}") from None
    now, then = param_digests(model), base["digests"]
    changed = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
    if changed:
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        raise CheckpointError(f"{where}, whose parameters have changed since the adapters were trained on them "
                              f"({shown} differ from the digests in {LORA_FILE}): the adapters fit only that base")


def _load_lora_run(run_dir: str | os.PathLike, model: nnx.Module, record: dict[str, Any], *,
                   step: int | None) -> int:
    """`load_params` for a LoRA run: its base, with the adapters of checkpoint `step` merged in."""
    load_lora_base(run_dir, model, record)
    try:
        adapted = lora.apply_lora(model, lora.LoraConfig.from_json(record["lora"]), nnx.Rngs(0))
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, lora.adapter_state(adapted))
        step, adapters = _restore_params(run_dir, abstract, step=step)
        lora.load_adapter_state(adapted, adapters)
    except lora.LoraError as e:
        raise CheckpointError(f"{str(run_dir)!r}: its adapters do not fit its {LORA_FILE}: {e}") from None
    nnx.update(model, nnx.state(lora.merge_lora(adapted), nnx.Param))
    return step


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained run as generation, evaluation and serving use it: the model with the
    parameters of checkpoint `step`, and its tokenizer."""

    model: Gemini
    tokenizer: Tokenizer
    run_dir: Path
    step: int

    @property
    def config(self) -> ModelConfig:
        return self.model.config


def load_run(run_dir: str | os.PathLike, *, step: int | None = None) -> Run:
    """The run in `run_dir` at checkpoint `step` (default: the latest), float or quantized."""
    config = read_config(run_dir)
    tokenizer = Tokenizer.load(tokenizer_path(run_dir))
    # An abstract model filled from the checkpoint: running the initialisers first would cost
    # more than the restore (tens of seconds for a small model on a laptop).
    model = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
    loaded = load_params(run_dir, model, step=step)
    return Run(model=model, tokenizer=tokenizer, run_dir=Path(run_dir), step=loaded)


def _drop_closed_loop_errors(unraisable: Any, *, previous: Callable[[Any], None] = sys.unraisablehook) -> None:
    """After a failed read, TensorStore's threads still complete futures of Orbax's event loop,
    which is closed by then: each prints a traceback ("Event loop is closed") that says nothing."""
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
        previous(unraisable)


@contextlib.contextmanager
def _quiet_storage_errors() -> Iterator[None]:
    """Orbax and TensorStore log every failed read of a damaged checkpoint at length (thousands
    of lines of tracebacks from their worker threads); the caller reports it in one line."""
    sys.unraisablehook = _drop_closed_loop_errors  # and it stays: those threads finish after the read returns
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio", "orbax", "jax")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _damage(step: int, read: Callable[[int], Any], parts: Callable[[Any], tuple[Any, dict]]
            ) -> tuple[Any, str | None]:
    """(what step `step` holds, or None; what is wrong with it, or None when it is intact)."""
    try:
        with _quiet_storage_errors():
            restored = read(step)
    except Exception as e:  # Orbax and TensorStore raise many types for a damaged or mismatched step
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"cannot be read ({reason[:300]})"
    state, meta = parts(restored)
    bad = digests.mismatches(state, (meta or {}).get(DIGESTS_KEY, {}))
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        return None, f"is damaged: the digest of {shown} does not match the one saved with it"
    return restored, None


def _read_verified(run_dir: Path, step: int, read: Callable[[int], Any],
                   parts: Callable[[Any], tuple[Any, dict]], *, steps: Iterable[int], purpose: str) -> Any:
    """`read(step)`, its arrays checked against the digests saved with them. A damaged step is
    a CheckpointError that names it and the newest earlier step that reads back intact."""
    restored, problem = _damage(step, read, parts)
    if problem is None:
        return restored
    message = f"checkpoint step {step} of {str(run_dir)!r} {problem}"
    for earlier in sorted((s for s in steps if s < step), reverse=True):
        if _damage(earlier, read, parts)[1] is None:
            raise CheckpointError(f"{message}; step {earlier} is intact: `--step {earlier}` loads it {purpose}, "
                                  f"or move {CHECKPOINTS_DIR}/{step} out of the run to resume from it")
    raise CheckpointError(f"{message}, and no earlier step is intact")
