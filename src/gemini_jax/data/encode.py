"""One example -> the arrays of one batch row (batch.py's keys, without the batch axis).

Rendering follows the Gemma chat template:

    <bos><start_of_turn>user\\n{parts}<end_of_turn>\\n<start_of_turn>model\\n{parts}<end_of_turn>\\n

with media parts written as placeholders the model overwrites with soft tokens:

    image  <start_of_image> <image> x vision.num_soft_tokens(patches) <end_of_image>
    video  <start_of_video> (<frame> x vision.num_soft_tokens(patches, frame=True), one
           span per frame) ... <end_of_video>
    audio  <start_of_audio> <audio> x audio.num_soft_tokens(samples) <end_of_audio>

Each media item is one bidirectional span (`media_spans`). With
`config.prompt_attention="bidirectional"`, a whole user turn that is not trained on
(<start_of_turn> to its closing newline, media included) is one span instead.

`tokens` is the rendering without its last token and `targets` without its first, so
position i predicts token i + 1. Loss (train_on="model"): the parts of model turns and
their <end_of_turn>, the stop token the sampler waits for; train_on="last": the same for
the last model turn only; train_on="all": every text
target, template included. Media placeholders and markers are never targets: the model
reads media, it does not write it. The exception is an image in a model turn of a run that
writes images (config.image_output): `<start_of_image>`, its image tokenizer's codes,
`<end_of_image>`, targets as the turn's text is. Raw-text examples are <bos> text <eos>, all
counted.

Models with `config.prompt_format="prefix"` (imported PaliGemma) are rendered in
PaliGemma's layout instead; see `_render_prefix`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from gemini_jax.config import ModelConfig
from gemini_jax.data import media
from gemini_jax.data.examples import Example, ExampleError, Part
from gemini_jax.data.media_cache import MediaCache
from gemini_jax.data.tokenizer import (
    END_OF_AUDIO,
    END_OF_IMAGE,
    END_OF_VIDEO,
    START_OF_AUDIO,
    START_OF_IMAGE,
    START_OF_VIDEO,
    Tokenizer,
)


class EncodeError(ValueError):
    """An example that cannot be encoded for this model (too long, media without an encoder)."""


class ImageCodes(Protocol):
    """The codes of an image a model writes (data/image_codes.py's ImageCoder)."""

    key: str  # names the image tokenizer: codes cached for another one are never reused

    def __call__(self, source: Any) -> np.ndarray:  # int [codes_per_image], raster order
        ...


@dataclasses.dataclass
class _Rendering:
    """Token ids with, per token, whether it counts as a target and its media span."""

    ids: list[int] = dataclasses.field(default_factory=list)
    counts: list[bool] = dataclasses.field(default_factory=list)
    spans: list[int] = dataclasses.field(default_factory=list)
    images: list[media.Patches] = dataclasses.field(default_factory=list)
    frames: list[media.Patches] = dataclasses.field(default_factory=list)
    mels: list[np.ndarray] = dataclasses.field(default_factory=list)
    num_spans: int = 0

    def add(self, ids: list[int], *, counts: bool, span: int = 0) -> None:
        self.ids += ids
        self.counts += [counts] * len(ids)
        self.spans += [span] * len(ids)

    def new_span(self) -> int:
        self.num_spans += 1
        return self.num_spans


def check_compatible(tokenizer: Tokenizer, config: ModelConfig) -> None:
    """The tokenizer's ids must fit the model's embedding table and agree on placeholders."""
    if tokenizer.vocab_size > config.vocab_size:
        raise EncodeError(
            f"the tokenizer has {tokenizer.vocab_size} pieces but the model's vocab_size is {config.vocab_size}")
    if config.image_output is not None and tokenizer.vocab_size > config.first_image_code:
        raise EncodeError(
            f"the tokenizer's {tokenizer.vocab_size} pieces overlap the model's image codes, ids "
            f"{config.first_image_code} to {config.vocab_size - 1}: a model that writes images needs vocab_size >= "
            f"the tokenizer's pieces + image_output.codebook_size")
    if not tokenizer.has_media:  # text only: a media part fails when it asks for its placeholder
        return
    pairs = {
        "image": (tokenizer.image_id, config.image_token_id),
        "frame": (tokenizer.frame_id, config.frame_token_id),
        "audio": (tokenizer.audio_id, config.audio_token_id),
    }
    wrong = {k: v for k, v in pairs.items() if v[0] != v[1]}
    if wrong:
        raise EncodeError(f"placeholder ids (tokenizer, model config) disagree: {wrong}")


class _Encoder:
    def __init__(self, *, tokenizer: Tokenizer, config: ModelConfig, cache: MediaCache | None, where: str,
                 image_codes: ImageCodes | None = None):
        self.tok = tokenizer
        self.config = config
        self.cache = cache
        self.where = where
        self.image_codes = image_codes
        self.out = _Rendering()
        self.turn_span = 0  # nonzero: every token goes into this span (a bidirectional turn)

    def ids(self, ids: list[int], *, counts: bool) -> None:
        self.out.add(ids, counts=counts, span=self.turn_span)

    def text(self, text: str, *, counts: bool) -> None:
        self.ids(self.tok.encode(text), counts=counts)

    def special(self, name: str, *, counts: bool) -> None:
        self.ids([self.tok.special_id(name)], counts=counts)

    def placeholders(self, token_id: int, count: int) -> None:
        """A media item's slots: never targets, bidirectional among themselves (or the turn's span)."""
        self.out.add([token_id] * count, counts=False, span=self.turn_span or self.out.new_span())

    def _cached(self, source: Any, key: tuple, make: Callable[[], Any]) -> Any:
        if self.cache is not None and isinstance(source, (str, os.PathLike)):
            return self.cache.get((os.fspath(source), *key), make)
        if self.cache is not None and isinstance(source, bytes):
            # Prepared records embed their media: the questions about one image carry the same bytes.
            return self.cache.get((hashlib.blake2b(source, digest_size=16).digest(), *key), make)
        return make()

    def part(self, part: Part, *, counts: bool, written: bool = False) -> None:
        """One part of a turn; `written`: the model's own turn, where an image is one it wrote."""
        try:
            if part.kind == "text":
                if not isinstance(part.text, str):
                    raise ExampleError(f"a text part holds {type(part.text).__name__}, not str")
                self.text(part.text, counts=counts)
            elif part.kind == "image" and written:
                self.written_image(part.image, counts=counts)
            elif part.kind == "image":
                self.image(part.image)
            elif part.kind == "video":
                self.video(part.video)
            else:
                self.audio(part.audio)
        except (media.MediaError, ExampleError) as e:
            raise type(e)(f"{self.where}: {e}") from None

    def _vision(self, kind: str):
        if self.config.vision is None:
            raise EncodeError(f"{self.where}: the example has {kind} but the model config has no vision encoder")
        return self.config.vision

    def image(self, source: Any) -> None:
        vision = self._vision("an image")
        key = ("image", vision.patch_size, vision.max_patches, vision.max_grid, vision.keep_aspect_ratio)
        patches = self._cached(source, key, lambda: media.image_patches(
            media.load_image(source), patch_size=vision.patch_size, max_patches=vision.max_patches,
            max_grid=vision.max_grid, keep_aspect_ratio=vision.keep_aspect_ratio))
        self.out.images.append(patches)
        prefix = self.config.prompt_format == "prefix"  # PaliGemma: bare placeholders, no markers
        if not prefix:
            self.special(START_OF_IMAGE, counts=False)
        self.placeholders(self.config.image_token_id, vision.num_soft_tokens(len(patches.patches)))
        if not prefix:
            self.special(END_OF_IMAGE, counts=False)

    def written_image(self, source: Any, *, counts: bool) -> None:
        """An image in a model turn, as the model writes one: <start_of_image>, the codes of the
        run's image tokenizer (ids from config.first_image_code), <end_of_image>; all targets
        when the turn is."""
        output = self.config.image_output
        if output is None:
            raise EncodeError(f"{self.where}: a model turn holds an image, but this model writes text only (its "
                              "config has no image_output and no image tokenizer): move the image to a user turn, "
                              "or train a run that writes images")
        if self.image_codes is None:
            raise EncodeError(f"{self.where}: a model turn holds an image; encoding it needs the run's image "
                              "tokenizer (image_codes=...), which was not given")
        codes = np.asarray(self._cached(source, ("image_codes", self.image_codes.key),
                                        lambda: self.image_codes(source))).reshape(-1)
        if codes.shape[0] != output.codes_per_image or codes.min() < 0 or codes.max() >= output.codebook_size:
            raise EncodeError(f"{self.where}: the image tokenizer gave {codes.shape[0]} codes in [{codes.min()}, "
                              f"{codes.max()}]; this model takes {output.codes_per_image} in [0, "
                              f"{output.codebook_size - 1}]")
        self.special(START_OF_IMAGE, counts=counts)
        self.ids((codes + self.config.first_image_code).tolist(), counts=counts)
        self.special(END_OF_IMAGE, counts=counts)

    def video(self, source: Any) -> None:
        vision = self._vision("a video")

        # The cache keeps the decoded uint8 frames: their float patches, upscaled to the patch
        # budget, take up to 16 times the bytes (a demo clip's 8 x 32 x 32 frames: 24 KiB against
        # 384 KiB), and cutting patches again is cheap.
        frames = self._cached(source, ("video", vision.num_frames),
                              lambda: media.load_video(source, num_frames=vision.num_frames))  # [F, H, W, 3]
        self.special(START_OF_VIDEO, counts=False)
        for pixels in frames:
            frame = media.image_patches(pixels, patch_size=vision.patch_size, max_patches=vision.frame_max_patches,
                                        max_grid=vision.max_grid, keep_aspect_ratio=vision.keep_aspect_ratio)
            self.out.frames.append(frame)
            self.placeholders(self.config.frame_token_id, vision.num_soft_tokens(len(frame.patches), frame=True))
        self.special(END_OF_VIDEO, counts=False)

    def audio(self, source: Any) -> None:
        audio = self.config.audio
        if audio is None:
            raise EncodeError(f"{self.where}: the example has audio but the model config has no audio encoder")

        def make() -> tuple[np.ndarray, np.ndarray]:
            samples = media.load_audio(source, sample_rate=audio.sample_rate, max_seconds=audio.max_seconds)
            return media.log_mel(samples, audio), np.array(samples.shape[0])

        key = ("audio", audio.sample_rate, audio.max_seconds, audio.num_mels, audio.hop_length, audio.window_length)
        mels, num_samples = self._cached(source, key, make)
        self.out.mels.append(mels)
        self.special(START_OF_AUDIO, counts=False)
        self.placeholders(self.config.audio_token_id, audio.num_soft_tokens(int(num_samples)))
        self.special(END_OF_AUDIO, counts=False)


def _render_prefix(example: Example, enc: _Encoder, *, for_generation: bool) -> None:
    """PaliGemma's layout (prompt_format="prefix"), as PaliGemmaProcessor builds it:

        <image> x n (every image) <bos> {user text}\\n {model text}<eos>

    The prompt (images, bos, text, newline) is one bidirectional span; the answer is
    causal and, with its <eos>, the loss (train_on="all" too: there is no template to
    learn). The layout has one question and one answer, so only a user turn (then, for
    training, one model turn) can be rendered; anything else is refused, not guessed at.
    """
    where, turns = enc.where, example.contents
    roles = [turn.role for turn in turns]
    expected = ["user"] if for_generation else ["user", "model"]
    if example.raw_text or roles != expected:
        got = "raw text" if example.raw_text else f"turns {roles}"
        raise EncodeError(f"{where}: a prompt_format='prefix' model (PaliGemma) takes one user turn"
                          f"{'' if for_generation else ' and one model turn'}; got {got}")
    user = turns[0]
    media_parts = [p for p in user.parts if p.kind != "text"]
    if any(p.kind != "image" for p in media_parts):
        raise EncodeError(f"{where}: a prompt_format='prefix' model takes images and text only; got "
                          f"{sorted({p.kind for p in media_parts})}")
    texts = [p.text for t in turns for p in t.parts if p.kind == "text"]
    if not all(isinstance(t, str) for t in texts):
        raise ExampleError(f"{where}: a text part holds {[type(t).__name__ for t in texts]}, not str")
    enc.turn_span = enc.out.new_span()
    for part in media_parts:  # the processor puts every image first, whatever the order
        enc.part(part, counts=False)
    enc.ids([enc.tok.bos_id], counts=False)
    # One string, as the processor tokenizes "prompt\n" (a split could change the pieces).
    enc.part(Part(text="".join(p.text for p in user.parts if p.kind == "text") + "\n"), counts=False)
    enc.turn_span = 0
    if not for_generation:
        answer = turns[1]
        if any(p.kind != "text" for p in answer.parts):
            raise EncodeError(f"{where}: the model turn of a prompt_format='prefix' example must be text only")
        enc.part(Part(text="".join(p.text for p in answer.parts)), counts=True)
        enc.ids([enc.tok.eos_id], counts=True)


def _render(example: Example, enc: _Encoder, *, for_generation: bool) -> None:
    if enc.config.prompt_format == "prefix":
        _render_prefix(example, enc, for_generation=for_generation)
        return
    tok = enc.tok
    enc.ids([tok.bos_id], counts=False)
    if example.raw_text:
        for turn in example.contents:
            for part in turn.parts:
                enc.part(part, counts=True)
        if not for_generation:
            enc.ids([tok.eos_id], counts=True)
        return
    template = example.train_on == "all"
    bidirectional = enc.config.prompt_attention == "bidirectional"
    last_model = max((i for i, t in enumerate(example.contents) if t.role == "model"), default=-1)
    for i, turn in enumerate(example.contents):
        in_loss = template or (turn.role == "model" and (example.train_on == "model" or i == last_model))
        # A turn the model reads but never writes may see itself both ways; a scored one
        # may not, or its tokens would see the targets they predict.
        enc.turn_span = enc.out.new_span() if bidirectional and not in_loss else 0
        enc.ids([tok.start_of_turn_id], counts=template)
        enc.text(f"{turn.role}\n", counts=template)
        for part in turn.parts:
            enc.part(part, counts=in_loss, written=turn.role == "model")
        enc.ids([tok.end_of_turn_id], counts=in_loss)
        enc.text("\n", counts=template)
        enc.turn_span = 0
    if for_generation:
        enc.ids([tok.start_of_turn_id], counts=False)
        enc.text("model\n", counts=False)


def _stack_patches(
    items: list[media.Patches], *, max_patches: int, patch_dim: int, prefix: str
) -> dict[str, np.ndarray]:
    n = len(items)
    patches = np.zeros((n, max_patches, patch_dim), np.float32)  # [I, P, pd]
    coords = np.zeros((n, max_patches, 2), np.int32)  # [I, P, 2]
    mask = np.zeros((n, max_patches), bool)  # [I, P]
    for i, item in enumerate(items):
        k = item.patches.shape[0]
        patches[i, :k], coords[i, :k], mask[i, :k] = item.patches, item.coords, True
    return {f"{prefix}_patches": patches, f"{prefix}_coords": coords, f"{prefix}_patch_mask": mask}


def _stack_mels(mels: list[np.ndarray], *, num_mels: int) -> dict[str, np.ndarray]:
    longest = max(m.shape[0] for m in mels)
    out = np.zeros((len(mels), longest, num_mels), np.float32)  # [C, M, num_mels]
    mask = np.zeros((len(mels), longest), bool)  # [C, M]
    for c, m in enumerate(mels):
        out[c, : m.shape[0]], mask[c, : m.shape[0]] = m, True
    return {"audio_mels": out, "audio_mel_mask": mask}


def encode_example(
    example: Example,
    *,
    tokenizer: Tokenizer,
    config: ModelConfig,
    max_len: int | None = None,
    for_generation: bool = False,
    media_cache: MediaCache | None = None,
    image_codes: ImageCodes | None = None,
) -> dict[str, np.ndarray]:
    """The arrays of one row (batch.py's keys, no batch axis, length T = the rendering's).

    Training (default): tokens, targets, loss_mask, segment_ids (all 1), positions,
    media_spans, plus image_*/frame_*/audio_* for each modality present (image slots
    padded to `vision.max_patches` patches, frames to `frame_max_patches`, clips to the
    longest clip). `for_generation=True` renders the whole conversation, then opens a
    model turn, and returns no targets/loss_mask. More than `max_len` (default
    `config.max_seq_len`) tokens is an EncodeError. An image in a model turn is written as
    its codes (a run with config.image_output), which `image_codes` gives.
    """
    if not isinstance(example, Example):
        raise ExampleError(f"encode_example expects an examples.Example, got {type(example).__name__}")
    check_compatible(tokenizer, config)
    where = f"example of task {example.task!r}" if example.task else "example"
    enc = _Encoder(tokenizer=tokenizer, config=config, cache=media_cache, where=where, image_codes=image_codes)
    _render(example, enc, for_generation=for_generation)
    r = enc.out
    ids = np.asarray(r.ids, np.int32)
    spans = np.asarray(r.spans, np.int32)
    if for_generation:
        row = {"tokens": ids, "media_spans": spans}
    else:
        row = {
            "tokens": ids[:-1],
            "targets": ids[1:],
            "loss_mask": np.asarray(r.counts[1:], np.float32),
            "media_spans": spans[:-1],
        }
    length = row["tokens"].shape[0]
    limit = config.max_seq_len if max_len is None else max_len
    if length > limit:
        what = "prompt" if for_generation else "example"
        room = (f"the model's context is {limit}" if limit == config.max_seq_len
                else f"at most {limit} fit here (a row's length; the model's context is {config.max_seq_len})")
        raise EncodeError(f"{where}: {what} is {length} tokens; {room}")
    row["segment_ids"] = np.ones(length, np.int32)
    row["positions"] = np.arange(length, dtype=np.int32)
    vision = config.vision
    if r.images:
        row |= _stack_patches(r.images, max_patches=vision.max_patches, patch_dim=vision.patch_dim, prefix="image")
    if r.frames:
        row |= _stack_patches(r.frames, max_patches=vision.frame_max_patches, patch_dim=vision.patch_dim,
                              prefix="frame")
    if r.mels:
        row |= _stack_mels(r.mels, num_mels=config.audio.num_mels)
    return row


def document_text(example: Example | str) -> str:
    """The text of a plain document (a str, or a raw-text example holding only text parts)."""
    if isinstance(example, str):
        return example
    if not isinstance(example, Example):
        raise ExampleError(f"a document is a str or an examples.Example, got {type(example).__name__}")
    kinds = sorted({p.kind for t in example.contents for p in t.parts} - {"text"})
    if kinds:
        raise ExampleError(f"document of task {example.task!r} holds {kinds} parts; packed text takes text only")
    return "".join(p.text for t in example.contents for p in t.parts)


def encode_document(example: Example | str, *, tokenizer: Tokenizer) -> dict[str, np.ndarray]:
    """tokens/targets/loss_mask of `<bos> text <eos>` at any length (packing splits long ones)."""
    ids = np.asarray([tokenizer.bos_id, *tokenizer.encode(document_text(example)), tokenizer.eos_id], np.int32)
    return {"tokens": ids[:-1], "targets": ids[1:], "loss_mask": np.ones(ids.shape[0] - 1, np.float32)}
