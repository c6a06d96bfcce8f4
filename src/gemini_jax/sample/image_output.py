"""A reply of a model that writes images, as text and pictures in order.

A run whose config has `image_output` keeps its image tokenizer (model/image_tokenizer.py) in
`RUN/image_tokenizer/`; its replies hold spans of codes (sample/image_spans.py), which the
tokenizer's decoder turns into pixels:

    writer = ImageWriter.for_run(run)                      # None for a text-only run
    parts = writer.parts(reply_ids)                        # ["Here it is: ", uint8[64, 64, 3], "."]
    text = writer.save(parts, "out/", stem="reply0")      # "Here it is: out/reply0-1.png."

A run trained with its requests sometimes dropped (the image_generation recipe's
`guidance_dropout`) keeps the prompt that stood in for them in RUN/image_tokenizer/guidance.json,
so that its copies (a quantized run copies the directory) and a loaded run can sample with
classifier-free guidance: `unconditional_prompt(run_dir)`. A run whose replies say where they
draw before each picture (the recipe's `reply_layout`) says so in RUN/image_tokenizer/layout.json,
so that an evaluation asks it to edit its pictures as it would have written them:
`writes_layout(run_dir)`.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gemini_jax.checkpoint import CheckpointError, atomic_write, replace_dir
from gemini_jax.config import ModelConfig
from gemini_jax.data.image_codes import ImageCoder, tokenizer_key
from gemini_jax.data.tokenizer import Tokenizer
from gemini_jax.sample.image_spans import ImageSpans, image_spans_for, split_reply

if TYPE_CHECKING:
    from gemini_jax.data.examples import Example

IMAGE_TOKENIZER_DIR = "image_tokenizer"  # inside a run directory
IMAGE_SCORER_DIR = "image_scorer"  # inside a run directory: model/image_scorer.py's, where the run has one
SAMPLE_SEED_STRIDE = 1 << 20  # between the seeds of one request's samples when the best of several is kept
GUIDANCE_FILE = "guidance.json"  # inside IMAGE_TOKENIZER_DIR: {"unconditional_prompt": "..."}
LAYOUT_FILE = "layout.json"  # inside IMAGE_TOKENIZER_DIR: {"reply_layout": true}

Part = str | np.ndarray  # text, or an image as uint8[H, W, 3]
TEXT_REPLY_TOKENS = 64  # a reply's default length, before an image's room


def default_max_new_tokens(writer: ImageWriter | None) -> int:
    """A reply's default length: TEXT_REPLY_TOKENS, and one image's span beyond that where the run
    writes images (`writer`; with less room than a whole span the sampler never opens one)."""
    return TEXT_REPLY_TOKENS + (writer.spans.span_length if writer else 0)


class ImageWriter:
    """A run's image tokenizer, checked against the run's reserved code range."""

    def __init__(self, image_tokenizer: Any, *, spans: ImageSpans, tokenizer: Tokenizer, key: str = "image-tokenizer"):
        self.image_tokenizer, self.spans, self.tokenizer, self.key = image_tokenizer, spans, tokenizer, key
        self._decode = None

    @classmethod
    def for_run(cls, run: Any) -> ImageWriter | None:
        """The writer of a loaded run (`checkpoint.load_run`), or None when it writes text only."""
        config = run.model.config
        spans = image_spans_for(config, run.tokenizer)
        if spans is None:
            return None
        model, key = load_run_image_tokenizer(run.run_dir, config)
        return cls(model, spans=spans, tokenizer=run.tokenizer, key=key)

    def coder(self) -> ImageCoder:
        """The same image tokenizer's encoder: the codes of images in earlier model turns."""
        return ImageCoder(self.image_tokenizer, key=self.key)

    def pixels(self, codes: np.ndarray) -> np.ndarray:
        """uint8[H, W, 3] of one image's codes (in raster order, as the tokenizer wrote them)."""
        import jax

        config = self.image_tokenizer.config
        if codes.shape != (config.codes_per_image,):
            raise ValueError(f"an image of {codes.shape} codes; this tokenizer reads {config.codes_per_image}")
        if self._decode is None:
            from flax import nnx

            self._decode = nnx.jit(lambda model, c: model.decode(c))
        grid = codes.reshape(1, config.grid, config.grid)
        image = np.asarray(jax.device_get(self._decode(self.image_tokenizer, grid)))[0]
        return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)

    def parts(self, ids: Sequence[int]) -> list[Part]:
        """The reply as text and images, in order."""
        return [self.tokenizer.decode(p) if isinstance(p, list) else self.pixels(p)
                for p in split_reply(ids, self.spans)]

    @staticmethod
    def save(parts: Sequence[Part], out_dir: str | os.PathLike, *, stem: str) -> str:
        """Writes each image of `parts` as OUT_DIR/STEM-N.png (N from 1) and returns the text
        with each image's path in its place (after a space where the text before it ends in none)."""
        out = Path(out_dir)
        text, count = [], 0
        for part in parts:
            if isinstance(part, str):
                text.append(part)
                continue
            count += 1
            path = out / f"{stem}-{count}.png"
            path.write_bytes(png_bytes(part))
            text.append(f"{' ' if text and text[-1] and not text[-1][-1].isspace() else ''}{path}")
        return "".join(text)


def png_bytes(pixels: np.ndarray) -> bytes:
    """An image as PNG bytes: what --save-images writes and the server sends, byte for byte."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_url(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")


def load_run_image_tokenizer(run_dir: str | os.PathLike, config: ModelConfig) -> tuple[Any, str]:
    """RUN/image_tokenizer and its key (data/image_codes.py), refused unless its codes fill
    exactly the run's reserved range."""
    from gemini_jax.model.image_tokenizer import load_image_tokenizer, read_image_tokenizer_config

    directory = Path(run_dir) / IMAGE_TOKENIZER_DIR
    if not directory.is_dir():
        raise CheckpointError(f"{run_dir}: the run writes images (config.image_output) but has no {IMAGE_TOKENIZER_DIR}/ "
                              "directory holding the image tokenizer its codes belong to")
    saved = read_image_tokenizer_config(directory)
    wanted = config.image_output
    if (saved.codebook_size, saved.codes_per_image) != (wanted.codebook_size, wanted.codes_per_image):
        raise CheckpointError(
            f"{directory}: the image tokenizer has {saved.codebook_size} codes, {saved.codes_per_image} an image, but "
            f"the run reserves {wanted.codebook_size} codes, {wanted.codes_per_image} an image (config.image_output)")
    return load_image_tokenizer(directory), tokenizer_key(directory)


def write_unconditional_prompt(run_dir: str | os.PathLike, prompt: str | None) -> None:
    """Records the run's unconditional prompt beside its image tokenizer; None removes a record
    (a run trained without dropped requests, whose image tokenizer came from one with them)."""
    _write_record(run_dir, GUIDANCE_FILE, None if prompt is None else {"unconditional_prompt": prompt})


def write_reply_layout(run_dir: str | os.PathLike, layout: bool) -> None:
    """Records whether the run's replies say where they draw (data/corpora/drawings.py's
    layout_text) before each picture; False removes a record copied with the image tokenizer."""
    _write_record(run_dir, LAYOUT_FILE, {"reply_layout": True} if layout else None)


def _write_record(run_dir: str | os.PathLike, name: str, record: dict[str, Any] | None) -> None:
    """RUN/image_tokenizer/NAME as JSON, written whole; None removes it."""
    path = Path(run_dir) / IMAGE_TOKENIZER_DIR / name
    if record is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, (json.dumps(record) + "\n").encode())


def writes_layout(run_dir: str | os.PathLike) -> bool:
    """Whether the run was trained with replies that say where they draw (write_reply_layout)."""
    path = Path(run_dir) / IMAGE_TOKENIZER_DIR / LAYOUT_FILE
    if not path.is_file():
        return False
    try:
        layout = json.loads(path.read_text())["reply_layout"]
    except (json.JSONDecodeError, KeyError, TypeError):
        layout = None
    if not isinstance(layout, bool):
        raise CheckpointError(f"{path}: expected {{\"reply_layout\": true}}")
    return layout


def edit_request(picture: Any, change: str, *, first_request: str) -> Example:
    """A picture to change, as a model that writes images is asked to edit one: the picture is its
    own earlier reply to `first_request` (for a picture it did not draw, the run's unconditional
    prompt), then a user turn asks for `change`. `picture`: a path or uint8[H, W, 3]."""
    from gemini_jax.data.examples import Content, Example, Part

    return Example(contents=(Content("user", (Part(text=first_request),)), Content("model", (Part(image=picture),)),
                             Content("user", (Part(text=change),))))


def unconditional_prompt(run_dir: str | os.PathLike) -> str:
    """The prompt a run was trained on in place of dropped requests: what guidance samples beside
    each request. A CheckpointError where the run has none."""
    path = Path(run_dir) / IMAGE_TOKENIZER_DIR / GUIDANCE_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {IMAGE_TOKENIZER_DIR}/{GUIDANCE_FILE}, so guidance has no unconditional "
                              "prompt: the run was trained without dropped requests (train it with the image_generation "
                              "recipe's guidance_dropout > 0)")
    try:
        prompt = json.loads(path.read_text())["unconditional_prompt"]
    except (json.JSONDecodeError, KeyError, TypeError):
        prompt = None
    if not isinstance(prompt, str) or not prompt:
        raise CheckpointError(f"{path}: expected {{\"unconditional_prompt\": \"<text>\"}}")
    return prompt


def copy_image_tokenizer(source_run: str | os.PathLike, out_run: str | os.PathLike) -> None:
    """A run made from another (quantized, say) draws with the same image tokenizer, and chooses
    among its pictures with the same image scorer where there is one: their files, copied into
    OUT_RUN/image_tokenizer/ and OUT_RUN/image_scorer/ (each first written aside, then renamed)."""
    import shutil

    if not (Path(source_run) / IMAGE_TOKENIZER_DIR).is_dir():
        raise CheckpointError(f"{source_run}: the run writes images but has no {IMAGE_TOKENIZER_DIR}/ to copy")
    for name in (IMAGE_TOKENIZER_DIR, IMAGE_SCORER_DIR):
        source = Path(source_run) / name
        if source.is_dir():
            replace_dir(Path(out_run) / name, lambda staging, source=source: shutil.copytree(source, staging))


def check_output_dir(path: str | os.PathLike) -> Path:
    """`--save-images`' directory: made if missing; refused unless it is a writable directory."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--save-images {path}: not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--save-images {path}: cannot make this directory ({e.strerror})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--save-images {path}: the directory is not writable")
    return out
