"""Media preprocessing with numpy, Pillow, soundfile and scipy (no JAX): the arrays the encoders read.

- images: any Pillow format (or bytes, a PIL image, a uint8 array) -> RGB uint8 -> resized,
  keeping the aspect ratio, to the largest patch grid within a patch budget (variable
  resolution, as Pix2Struct/NaViT; or stretched to a fixed square grid) -> flattened
  patches in [-1, 1] with their grid coordinates;
- audio: WAV/FLAC/OGG (soundfile; a file or its bytes) or `examples.Audio` -> mono float32 at 16 kHz (downmixed and
  resampled with a warning) -> log-mel frames, one per 10 ms hop;
- video: frames sampled uniformly from an animated GIF/WebP/PNG or a uint8[F, H, W, 3] array.

Every failure at this boundary is a `MediaError` naming the file and what is accepted. Sizes are
checked from the header before anything is decoded (pixels, frames, duration, channels, rate): a
few KB of PNG or FLAC can declare gigabytes, and over a limit is a `MediaTooLarge` naming it.
"""

from __future__ import annotations

import functools
import io
import math
import os
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile
from PIL import Image, ImageSequence, UnidentifiedImageError

from gemini_jax.config import AudioConfig
from gemini_jax.data.examples import Audio

IMAGE_FORMATS = (
    "an image file Pillow reads (PNG, JPEG, GIF, WebP, BMP, ...), bytes, a PIL image or uint8[H, W(, 1|3|4)]"
)
AUDIO_FORMATS = "a WAV/FLAC/OGG file or its bytes (soundfile), or examples.Audio(samples float32[N] or [N, channels], sample_rate)"
VIDEO_FORMATS = "an animated GIF, WebP or PNG (APNG) file, or uint8[F, H, W, 3]"


# Under Pillow's decompression-bomb warning (89 Mpx), so that our limit, not its warning, speaks first.
MAX_IMAGE_PIXELS = 50_000_000
MAX_VIDEO_FRAMES = 10_000
MAX_VIDEO_PIXELS = 500_000_000  # every frame up to the last sampled one is decoded
MAX_AUDIO_CHANNELS = 32
MAX_SAMPLE_RATE = 384_000  # the highest rate audio hardware records


class MediaError(ValueError):
    """A media file or array that cannot be used."""


class MediaTooLarge(MediaError):
    """Media whose header declares more than a limit allows; refused before decoding."""


class Patches(NamedTuple):
    patches: np.ndarray  # float32[n, patch_size * patch_size * 3] in [-1, 1]
    coords: np.ndarray  # int32[n, 2]: (row, column) of each patch in its grid


def _name(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    return f"<{type(source).__name__}>"


def _open_file(path: str | os.PathLike, accepted: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"media file {str(path)!r} does not exist (accepted: {accepted})")
    data = path.read_bytes()
    if not data:
        raise MediaError(f"media file {str(path)!r} is empty (accepted: {accepted})")
    return data


# warnings.catch_warnings swaps process-wide state: one thread at a time, for the header only.
_PIL_WARNINGS = threading.Lock()


def _open_pil(source: object, accepted: str, *, max_pixels: int | None) -> Image.Image:
    """The image with only its header read, refused if it declares more than `max_pixels` pixels."""
    data = _open_file(source, accepted) if isinstance(source, (str, os.PathLike)) else source
    name = _name(source)
    try:
        with _PIL_WARNINGS, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise MediaTooLarge(f"image {name} is refused by Pillow as a decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"media file {name} is not a readable image ({e}); accepted: {accepted}") from None
    for w in caught:  # anything but the bomb warning goes on to the caller's filters
        if not issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    width, height = image.size
    limits = [(max_pixels, "")] if max_pixels is not None else []
    if any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught):
        limits.append((Image.MAX_IMAGE_PIXELS, "Pillow's decompression-bomb "))
    for limit, kind in limits:
        if width * height > limit:
            raise MediaTooLarge(f"image {name} is {width} x {height} = {width * height} pixels, over the "
                                f"{kind}limit of {limit} pixels")
    return image


def _decode(image: Image.Image, source: object, accepted: str) -> Image.Image:
    try:
        image.load()  # decode now, so that a truncated file fails here with its name
    except (OSError, SyntaxError, ValueError) as e:
        raise MediaError(f"media file {_name(source)} is not a readable image ({e}); accepted: {accepted}") from None
    return image


def _to_rgb(image: Image.Image) -> np.ndarray:
    """uint8[H, W, 3]; transparent pixels are composited over white (a black drawing stays visible)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _array_to_rgb(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise MediaError(f"{where}: image arrays must be uint8, got {array.dtype}; accepted: {IMAGE_FORMATS}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)  # [H, W] -> [H, W, 3]
    if array.ndim == 3 and array.shape[-1] == 3:
        return np.ascontiguousarray(array)
    if array.ndim == 3 and array.shape[-1] == 4:
        return _to_rgb(Image.fromarray(array, mode="RGBA"))
    raise MediaError(f"{where}: image array has shape {array.shape}; accepted: {IMAGE_FORMATS}")


def load_image(source: str | os.PathLike | bytes | Image.Image | np.ndarray, *,
               max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image as uint8[H, W, 3] (grey and RGBA become RGB); a file or bytes over `max_pixels`
    (None: Pillow's own bomb limits only) is refused from its header."""
    if isinstance(source, np.ndarray):
        image = _array_to_rgb(source, "image array")
    elif isinstance(source, Image.Image):
        image = _to_rgb(source)
    elif isinstance(source, (str, os.PathLike, bytes)):
        image = _to_rgb(_decode(_open_pil(source, IMAGE_FORMATS, max_pixels=max_pixels), source, IMAGE_FORMATS))
    else:
        raise MediaError(f"cannot read an image from {type(source).__name__}; accepted: {IMAGE_FORMATS}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise MediaError(f"image {_name(source)} has no pixels (shape {image.shape})")
    return image


def patch_grid(*, height: int, width: int, max_patches: int, max_grid: int | None = None) -> tuple[int, int]:
    """(rows, cols) of the largest grid with rows * cols <= max_patches at the image's aspect ratio.

    The exact fit has rows / cols = height / width and rows * cols = max_patches; both are
    rounded down, so the aspect ratio changes only by that rounding (64x64, 16 -> 4x4; a
    3:1 landscape, 16 -> 2x6). Extreme shapes are clamped to at least one row or column.
    """
    if max_patches < 1:
        raise MediaError(f"max_patches must be at least 1, got {max_patches}")
    limit = max_patches if max_grid is None else min(max_patches, max_grid)
    rows = min(max(1, math.floor(math.sqrt(max_patches * height / width))), limit)
    cols = min(max(1, math.floor(math.sqrt(max_patches * width / height))), limit, max_patches // rows)
    return rows, cols


def image_patches(image: np.ndarray, *, patch_size: int, max_patches: int, max_grid: int | None = None,
                  keep_aspect_ratio: bool = True) -> Patches:
    """Resizes uint8[H, W, 3] onto its patch grid and flattens the patches.

    Patches come in row-major grid order; each is flattened (row, column, channel)
    as batch.py says. Small images are enlarged: the encoder sees a full budget.
    `keep_aspect_ratio=False` stretches any image to the largest square grid within the
    budget (a fixed-grid encoder such as PaliGemma's SigLIP, whose processor does the same).
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise MediaError(
            f"image_patches expects uint8[H, W, 3] (load_image gives one), got {image.dtype}{list(image.shape)}")
    height, width, _ = image.shape
    if keep_aspect_ratio:
        rows, cols = patch_grid(height=height, width=width, max_patches=max_patches, max_grid=max_grid)
    else:
        if max_patches < 1:
            raise MediaError(f"max_patches must be at least 1, got {max_patches}")
        rows = cols = min(math.isqrt(max_patches), max_patches if max_grid is None else max_grid)
    size = (cols * patch_size, rows * patch_size)  # PIL sizes are (width, height)
    if (width, height) != size:
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
    pixels = image.astype(np.float32) / 127.5 - 1.0  # [rows*p, cols*p, 3] in [-1, 1]
    pixels = pixels.reshape(rows, patch_size, cols, patch_size, 3)  # [R, p, C, p, 3]
    pixels = pixels.transpose(0, 2, 1, 3, 4)  # [R, C, p, p, 3]
    patches = pixels.reshape(rows * cols, patch_size * patch_size * 3)  # [R*C, p*p*3]
    r, c = np.meshgrid(np.arange(rows, dtype=np.int32), np.arange(cols, dtype=np.int32), indexing="ij")
    coords = np.stack([r.ravel(), c.ravel()], axis=-1)  # [R*C, 2]
    return Patches(patches=np.ascontiguousarray(patches), coords=coords)


def _audio_frames_allowed(sound: soundfile.SoundFile, name: str, *, max_seconds: float | None) -> int:
    """How many frames to read (-1: all), once the header's rate, channels and duration are within limits."""
    if sound.samplerate > MAX_SAMPLE_RATE:
        raise MediaTooLarge(f"audio {name} is sampled at {sound.samplerate} Hz; at most {MAX_SAMPLE_RATE} Hz "
                            "is accepted")
    if sound.channels > MAX_AUDIO_CHANNELS:
        raise MediaTooLarge(f"audio {name} has {sound.channels} channels; at most {MAX_AUDIO_CHANNELS} are accepted")
    if max_seconds is None:
        return -1
    if sound.frames / sound.samplerate > max_seconds:
        raise MediaTooLarge(f"audio {name} lasts {sound.frames / sound.samplerate:.2f} s; the model accepts clips "
                            f"of at most {max_seconds} s")
    return sound.frames  # what the header declared, never more: the limit holds whatever the data says


def _audio_samples(source: str | os.PathLike | bytes | Audio, *, max_seconds: float | None
                   ) -> tuple[np.ndarray, int]:
    """float32[N, channels] and the rate, as stored."""
    if isinstance(source, Audio):
        samples = np.asarray(source.samples)
        if np.issubdtype(samples.dtype, np.integer):
            samples = samples.astype(np.float32) / float(np.iinfo(samples.dtype).max + 1)
        elif not np.issubdtype(samples.dtype, np.floating):
            raise MediaError(
                f"audio samples must be float or integer PCM, got {samples.dtype}; accepted: {AUDIO_FORMATS}")
        if samples.ndim not in (1, 2):
            raise MediaError(f"audio samples have shape {samples.shape}; accepted: {AUDIO_FORMATS}")
        if not isinstance(source.sample_rate, (int, np.integer)) or source.sample_rate <= 0:
            raise MediaError(f"audio sample_rate must be a positive int, got {source.sample_rate!r}")
        return samples.astype(np.float32).reshape(samples.shape[0], -1), int(source.sample_rate)
    if isinstance(source, (str, os.PathLike, bytes)):
        data = _open_file(source, AUDIO_FORMATS) if not isinstance(source, bytes) else source
        try:
            with soundfile.SoundFile(io.BytesIO(data)) as sound:
                frames = _audio_frames_allowed(sound, _name(source), max_seconds=max_seconds)
                samples = sound.read(frames, dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
            raise MediaError(
                f"media file {_name(source)} is not readable audio ({e}); accepted: {AUDIO_FORMATS}") from None
        return samples, int(sound.samplerate)
    raise MediaError(f"cannot read audio from {type(source).__name__}; accepted: {AUDIO_FORMATS}")


def load_audio(
    source: str | os.PathLike | bytes | Audio, *, sample_rate: int = 16_000, max_seconds: float | None = None
) -> np.ndarray:
    """A clip as mono float32[N] at `sample_rate`; other channel counts and rates are converted with a warning.
    A file or bytes lasting over `max_seconds` is refused from its header."""
    name = _name(source)
    samples, rate = _audio_samples(source, max_seconds=max_seconds)  # [N, channels]
    if samples.shape[0] == 0:
        raise MediaError(f"audio {name} has no samples (accepted: {AUDIO_FORMATS})")
    if max_seconds is not None and samples.shape[0] / rate > max_seconds:
        raise MediaTooLarge(
            f"audio {name} lasts {samples.shape[0] / rate:.2f} s; the model accepts clips of at most {max_seconds} s"
        )
    if samples.shape[1] > 1:
        warnings.warn(f"audio {name}: {samples.shape[1]} channels downmixed to mono (mean)", stacklevel=2)
    mono = samples.mean(axis=1)  # [N]
    if rate != sample_rate:
        g = math.gcd(rate, sample_rate)
        warnings.warn(f"audio {name}: resampled from {rate} Hz to {sample_rate} Hz", stacklevel=2)
        from scipy import signal  # here: importing scipy.signal costs about 0.9 s of every start

        mono = signal.resample_poly(mono, sample_rate // g, rate // g)
    if not np.all(np.isfinite(mono)):
        raise MediaError(f"audio {name} holds NaN or infinite samples")
    return mono.astype(np.float32)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)  # HTK


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)  # built once per setting, not per clip (it costs as much as the clip's FFT)
def mel_filterbank(*, num_mels: int, fft_size: int, sample_rate: int) -> np.ndarray:
    """float32[fft_size // 2 + 1, num_mels]: HTK-spaced triangles from 0 Hz to Nyquist, read-only.

    Each triangle is scaled to unit area (the Slaney normalisation), so a band's
    energy does not grow with its width.
    """
    edges_hz = _mel_to_hz(np.linspace(0.0, _hz_to_mel(np.float64(sample_rate / 2)), num_mels + 2))  # [num_mels + 2]
    bins_hz = np.linspace(0.0, sample_rate / 2, fft_size // 2 + 1)  # [K]
    lower, centre, upper = edges_hz[:-2], edges_hz[1:-1], edges_hz[2:]  # [num_mels] each
    rising = (bins_hz[:, None] - lower) / (centre - lower)  # [K, num_mels]
    falling = (upper - bins_hz[:, None]) / (upper - centre)  # [K, num_mels]
    triangles = np.maximum(0.0, np.minimum(rising, falling))
    filters = (triangles * (2.0 / (upper - lower))).astype(np.float32)
    filters.flags.writeable = False  # shared by every caller
    return filters


def log_mel(samples: np.ndarray, config: AudioConfig) -> np.ndarray:
    """float32[config.num_mel_frames(N), num_mels] log-mel features of mono float32[N] samples.

    Frame m covers samples [m * hop, m * hop + window) (the end is zero-padded) under a
    periodic Hann window. Features are log10 of the mel power, floored at 1e-10, then
    (x + 4) / 4: a fixed affine map (as Whisper's), not per-clip statistics, so a clip's
    features do not depend on what else it contains; silence maps to -1.5.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise MediaError(f"log_mel expects mono float32[N] (load_audio gives one), got shape {samples.shape}")
    hop, window = config.hop_length, config.window_length
    frames = config.num_mel_frames(samples.shape[0])
    padded = np.zeros((frames - 1) * hop + window, dtype=np.float32)
    used = min(samples.shape[0], padded.shape[0])
    padded[:used] = samples[:used]
    windows = np.lib.stride_tricks.sliding_window_view(padded, window)[::hop]  # [M, window]
    hann = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(window) / window)).astype(np.float32)  # [window]
    fft_size = 1 << (window - 1).bit_length()
    spectrum = np.fft.rfft(windows * hann, n=fft_size, axis=-1)  # [M, K]
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)  # [M, K]
    filters = mel_filterbank(num_mels=config.num_mels, fft_size=fft_size, sample_rate=config.sample_rate)
    mel = np.einsum("MK,KN->MN", power, filters)  # [M, num_mels]
    return ((np.log10(np.maximum(mel, 1e-10)) + 4.0) / 4.0).astype(np.float32)


def _uniform_indices(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over `total` frames (the centre of each of count equal parts)."""
    if total <= count:
        return list(range(total))
    return [int((i + 0.5) * total / count) for i in range(count)]


def _check_animation(image: Image.Image, name: str, *, max_frames: int | None,
                     max_video_pixels: int | None) -> int:
    """The frame count, from the header (GIF: by skipping frames undecoded), within the limits."""
    total = getattr(image, "n_frames", 1)
    if max_frames is not None and total > max_frames:
        raise MediaTooLarge(f"video {name} has {total} frames; at most {max_frames} are accepted")
    width, height = image.size
    if max_video_pixels is not None and total * width * height > max_video_pixels:
        raise MediaTooLarge(f"video {name} has {total} frames of {width} x {height} = {total * width * height} "
                            f"pixels in all; at most {max_video_pixels} pixels are accepted")
    return total


def load_video(source: str | os.PathLike | bytes | np.ndarray, *, num_frames: int,
               max_pixels: int | None = MAX_IMAGE_PIXELS, max_frames: int | None = MAX_VIDEO_FRAMES,
               max_video_pixels: int | None = MAX_VIDEO_PIXELS) -> np.ndarray:
    """uint8[F, H, W, 3]: `num_frames` frames sampled uniformly (all of them when the clip has fewer).

    A still image (a PNG, a one-frame GIF) is a one-frame video: the model sees what
    there is rather than failing on a clip the user thinks of as short. A file's frame
    size, frame count and their product are checked against the limits before decoding.
    """
    if num_frames < 1:
        raise MediaError(f"num_frames must be at least 1, got {num_frames}")
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 4 or source.shape[-1] != 3 or source.shape[0] == 0:
            raise MediaError(f"video array is {source.dtype}{list(source.shape)}; accepted: {VIDEO_FORMATS}")
        return np.ascontiguousarray(source[_uniform_indices(source.shape[0], num_frames)])
    if not isinstance(source, (str, os.PathLike, bytes)):
        raise MediaError(f"cannot read a video from {type(source).__name__}; accepted: {VIDEO_FORMATS}")
    image = _open_pil(source, VIDEO_FORMATS, max_pixels=max_pixels)
    try:
        total = _check_animation(image, _name(source), max_frames=max_frames, max_video_pixels=max_video_pixels)
    except MediaError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError) as e:
        raise MediaError(f"media file {_name(source)} is not a readable animation ({e})") from None
    _decode(image, source, VIDEO_FORMATS)
    wanted = set(_uniform_indices(total, num_frames))
    frames = []
    try:
        # Frames are visited in order: GIF frames are drawn over their predecessors.
        for index, frame in enumerate(ImageSequence.Iterator(image)):
            if index in wanted:
                frames.append(_to_rgb(frame))
            if len(frames) == len(wanted):
                break
    except (OSError, ValueError, EOFError) as e:
        raise MediaError(f"media file {_name(source)}: frame {len(frames)} is unreadable ({e})") from None
    if not frames or len({f.shape for f in frames}) != 1:
        raise MediaError(f"media file {_name(source)} gave no usable frames; accepted: {VIDEO_FORMATS}")
    return np.stack(frames)  # [F, H, W, 3]
