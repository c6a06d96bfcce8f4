"""`gemini-jax quantize`: a float run directory -> a weight-only int4 (or int8) run directory.

    gemini-jax quantize --checkpoint runs/demo --out runs/demo-int4 --group-size 32 --bits 4
    gemini-jax eval --checkpoint runs/demo-int4          # generate, eval and serve read it as is
    gemini-jax quantize --checkpoint runs/demo --out runs/demo-gptq --calibrate 256   # GPTQ rounding

`--calibrate N` rounds by GPTQ (model/gptq.py) instead of to nearest, on N training examples of
the demo corpus (never its validation or test items), spread evenly over its four tasks.

The new run holds the same config.json and tokenizer.model, a quantization.json that says how
it was quantized (so loading never guesses), and one checkpoint step with the parameters only
(no optimizer state: a quantized run is for inference; training refuses it). Which weights
are quantized and how is `gemini_jax.model.quant`'s business; this module handles the files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from gemini_jax import checkpoint
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.model import Gemini, gptq, quant
from gemini_jax.sample.image_output import copy_image_tokenizer

CALIBRATION_TEXT_TOKENS = 128  # a code document's calibration row: the demo's text row length


def directory_bytes(path: str | os.PathLike) -> int:
    """Bytes of the files under `path` (what the checkpoint costs on disk, before block rounding)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _text_row(document: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An encoded document's first CALIBRATION_TEXT_TOKENS tokens as one model input row."""
    row = {k: v[:CALIBRATION_TEXT_TOKENS] for k, v in document.items()}
    length = row["tokens"].shape[0]
    return row | {"segment_ids": np.ones(length, np.int32), "positions": np.arange(length, dtype=np.int32),
                  "media_spans": np.zeros(length, np.int32)}


def demo_calibration(tokenizer: Any, config: Any, *, examples: int, cache_dir: str | None = None,
                     batch_size: int = 32) -> list[dict[str, np.ndarray]]:
    """Batches of `examples` training examples of the demo corpus, a quarter from each task (the
    first of each training split, so the same for every call): a GPTQ calibration set."""
    from gemini_jax.data.corpora.demo import TASKS, DemoCorpus
    from gemini_jax.data.encode import encode_document, encode_example
    from gemini_jax.data.row_shapes import collate

    corpus = DemoCorpus.build(cache_dir, progress=False)
    batches = []
    for i, task in enumerate(TASKS):
        count = examples // len(TASKS) + (i < examples % len(TASKS))
        chosen = corpus.examples(task, "train")[:count]
        if task == "text":
            rows = [_text_row(encode_document(d, tokenizer=tokenizer)) for d in chosen]
        else:
            rows = [encode_example(e, tokenizer=tokenizer, config=config) for e in chosen]
        for start in range(0, len(rows), batch_size):
            part = rows[start:start + batch_size]
            # Every batch of a task padded to the task's longest row: one compiled shape per task.
            longest = max(r["tokens"].shape[0] for r in rows)
            batches.append(collate(part, seq_len=longest, config=config, batch_size=batch_size))
    return batches


def quantize_run(source: str | os.PathLike, out: str | os.PathLike, *, group_size: int = 32, bits: int = 4,
                 step: int | None = None, calibrate: int = 0, cache_dir: str | None = None,
                 damp: float = gptq.DEFAULT_DAMP) -> dict[str, Any]:
    """Writes the quantized copy of run `source` (its latest step, or `step`) to `out`; returns a report
    with the parameter count and the bytes per parameter of the saved checkpoint. `calibrate` > 0
    rounds by GPTQ on that many demo training examples (`demo_calibration`), 0 to nearest."""
    source, out = Path(source), Path(out)
    if calibrate < 0:
        raise quant.QuantizationError(f"calibrate takes a number of examples >= 0 (0: to nearest), got {calibrate}")
    if checkpoint.read_quantization(source) is not None:
        raise checkpoint.CheckpointError(f"{str(source)!r} is already quantized; quantize the float run it came from")
    if out.exists() and not out.is_dir():
        raise checkpoint.CheckpointError(f"--out {str(out)!r} is a file; give a new or empty directory")
    if out.exists() and any(out.iterdir()):
        raise checkpoint.CheckpointError(f"output directory {str(out)!r} exists and is not empty")
    config = checkpoint.read_config(source)
    # Shapes only, then the restore allocates each parameter once (no random initialisation).
    model = nnx.eval_shape(lambda: Gemini(config, rngs=nnx.Rngs(0)))
    step = checkpoint.load_params(source, model, step=step)
    float_params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    float_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), float_params)
    count = quant.param_count(float_params)
    float_bytes = quant.numpy_nbytes(float_params)
    del float_params

    if calibrate:
        tokenizer = Tokenizer.load(checkpoint.tokenizer_path(source))
        batches = demo_calibration(tokenizer, config, examples=calibrate, cache_dir=cache_dir)
        hessians = gptq.capture_hessians(model, batches)
        report = gptq.quantize_model_gptq(model, hessians, group_size=group_size, bits=bits, damp=damp)
    else:
        report = quant.quantize_model(model, group_size=group_size, bits=bits)
    stored = quant.to_storage(nnx.to_pure_dict(nnx.state(model, nnx.Param)))

    checkpoint.write_run_files(out, config=config, tokenizer_path=checkpoint.tokenizer_path(source))
    if config.image_output is not None:  # its images are drawn by the source's image tokenizer
        copy_image_tokenizer(source, out)
    # The record goes first: a crash before the checkpoint completes leaves a run that says
    # "no completed checkpoint" rather than one that would be read as float.
    record = {"bits": bits, "group_size": group_size, "scale_dtype": jax.numpy.dtype(quant.SCALE_DTYPE).name,
              "source": str(source.absolute()), "source_step": step,
              "quantized": report["quantized"], "kept_float": report["kept_float"],
              "method": "gptq" if calibrate else "round-to-nearest"}
    if calibrate:
        record |= {"calibration_examples": calibrate, "damp": damp, "calibrated": report["calibrated"]}
    checkpoint.write_quantization(out, record)
    saver = checkpoint.Checkpointer(out, max_to_keep=1, async_save=False)
    try:
        saver.save(step, state={"params": stored}, meta={"step": step, "quantization": {"bits": bits,
                                                                                        "group_size": group_size}})
        saver.wait()
    finally:
        saver.close()
    saved = directory_bytes(out / checkpoint.CHECKPOINTS_DIR / str(step))
    return {
        "out": str(out), "step": step, "bits": bits, "group_size": group_size, "method": record["method"],
        "calibration_examples": calibrate, "parameters": count,
        "quantized_weights": len(report["quantized"]), "kept_float": report["kept_float"],
        "checkpoint_bytes": saved, "bytes_per_param": saved / count,
        "float32_bytes_per_param": float_bytes / count,
        "payload_bytes_per_param": quant.numpy_nbytes(stored) / count,
        # What a decode step reads: the decoder and the tied embedding (the encoders run once per prompt).
        "decoder_payload_bytes_per_param": (
            sum(quant.numpy_nbytes(stored[k]) for k in ("embedder", "decoder"))
            / sum(quant.param_count(float_shapes[k]) for k in ("embedder", "decoder"))
        ),
    }

