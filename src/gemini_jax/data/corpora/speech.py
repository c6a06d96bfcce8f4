"""Real speech synthesized offline with eSpeak NG, for the demo's speech-recognition task.

The `espeakng-loader` wheel ships `libespeak-ng.so` and its voice data; we drive its C API
through ctypes. Measured properties of the library shape this module:

- it is not deterministic inside one process (the same text twice gives different samples,
  from internal state), but a fixed ordered list synthesized in a fresh process is
  bit-identical run to run;
- it is not thread-safe (two unlocked threads crashed with SIGFPE);
- voices with breath noise (the +f2, +f3 variants) draw from a generator that
  `espeak_Initialize` seeds from the clock, so even a fresh process differs run to run
  unless the seed is set (`espeak_ng_SetRandSeed`, done here per utterance).

So a list is cut into fixed chunks of `CHUNK` utterances and each chunk is synthesized, in
order, in a new Python process of its own (several at once): the same list always gives the
same samples, however many cores run it, and the caller's process never loads the library.

    clips = synthesize([Utterance(text="four hundred and twelve", voice="en-us", rate=170, pitch=50)])
    clips[0]  # float32[N] at 16 kHz

eSpeak NG is GPL-3.0-or-later; this project calls the installed wheel at run time and does not
ship it.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import functools
import hashlib
import os
import pickle
import subprocess
import sys
import wave
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
ESPEAK_RATE = 22_050  # what espeak_Initialize reports for every voice

# espeak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # without it a bad data path calls exit(1) and kills Python
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3

CHUNK = 1024  # utterances per fresh process: part of what fixes the output, do not tune per machine

# Clips are trimmed to the sound plus this margin: eSpeak pads each utterance with silence
# that would only cost audio frames.
_SILENCE_THRESHOLD = 1e-3
_MARGIN_S = 0.05


class SpeechError(RuntimeError):
    """eSpeak NG could not be loaded or refused an utterance."""


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One thing to say: `voice` is an eSpeak voice name (e.g. "en-us", "en+f3"),
    `rate` in words per minute (80-450), `pitch` 0-100 (50 is the voice's default)."""

    text: str
    voice: str
    rate: int
    pitch: int

    def __post_init__(self):
        if not self.text.strip():
            raise ValueError("utterance text is empty")
        if not 80 <= self.rate <= 450:
            raise ValueError(f"utterance rate must be 80-450 words per minute, got {self.rate}")
        if not 0 <= self.pitch <= 100:
            raise ValueError(f"utterance pitch must be 0-100, got {self.pitch}")


_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """English words for 0 <= n <= 9999, British style with "and", no hyphens:
    412 -> "four hundred and twelve", 4012 -> "four thousand and twelve"."""
    if not 0 <= n <= 9999:
        raise ValueError(f"number_words covers 0..9999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    head, rest = (f"{_ONES[n // 1000]} thousand", n % 1000) if n >= 1000 else (f"{_ONES[n // 100]} hundred", n % 100)
    if rest == 0:
        return head
    if n >= 1000 and rest >= 100:
        return f"{head} {number_words(rest)}"
    return f"{head} and {number_words(rest)}"


def digit_words(digits: str) -> str:
    """"314" -> "three one four"."""
    if not digits.isdigit() or not digits.isascii():
        raise ValueError(f"digit_words takes a string of digits 0-9, got {digits!r}")
    return " ".join(_ONES[int(d)] for d in digits)


def synthesize(utterances: Sequence[Utterance], *, workers: int | None = None) -> list[np.ndarray]:
    """float32[N] mono waveforms at 16 kHz, one per utterance, silence trimmed.

    Runs in new child processes (at most `workers` at once, default the CPU count); the
    result depends only on the list (contents and order).
    """
    utterances = list(utterances)
    chunks = [(utterances[i : i + CHUNK],) for i in range(0, len(utterances), CHUNK)]
    return [clip for part in _in_fresh_processes(_synthesize_here, chunks, workers) for clip in part]


def synthesize_to_wav(
    *, utterances: Sequence[Utterance], paths: Sequence[str | os.PathLike], workers: int | None = None
) -> list[float]:
    """Writes each utterance as a 16 kHz mono 16-bit WAV file; returns the durations in seconds.

    Same samples as `synthesize` (before 16-bit rounding), but the audio never crosses the
    process boundary: this is the one to use for thousands of clips.
    """
    if len(utterances) != len(paths):
        raise ValueError(f"got {len(utterances)} utterances but {len(paths)} paths")
    utterances, paths = list(utterances), [os.fspath(p) for p in paths]
    chunks = [(utterances[i : i + CHUNK], paths[i : i + CHUNK]) for i in range(0, len(utterances), CHUNK)]
    return [d for part in _in_fresh_processes(_synthesize_to_wav_here, chunks, workers) for d in part]


def write_wav(path: str | os.PathLike, samples: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> None:
    """float samples in [-1, 1] -> mono 16-bit PCM WAV."""
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2")  # int16[N]
    with wave.open(os.fspath(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.tobytes())


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A mono 16-bit WAV -> (float32[N] in [-1, 1], sample rate)."""
    with wave.open(os.fspath(path), "rb") as f:
        if f.getnchannels() != 1 or f.getsampwidth() != 2:
            raise SpeechError(
                f"{path}: expected mono 16-bit PCM, got {f.getnchannels()} channels of {8 * f.getsampwidth()} bits"
            )
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")  # int16[N]
        return pcm.astype(np.float32) / 32767.0, f.getframerate()


def _in_fresh_processes(fn, chunks: list[tuple], workers: int | None) -> list:
    """fn(*chunk) for each chunk, each in a new Python process of its own; results in chunk order.

    A plain subprocess rather than multiprocessing's 'spawn': spawn re-imports the caller's main
    script in the child, which fails for `python - < script` and re-runs an unguarded script's
    top level. A fork would inherit whatever eSpeak state the parent holds.
    """
    if not chunks:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:  # threads only wait
        return list(pool.map(lambda chunk: _run_child(fn, chunk), chunks))


def _run_child(fn, args: tuple):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    # Pickle only crosses between this module and its own child, never from a file.
    request = pickle.dumps((fn.__name__, args))
    command = [sys.executable, "-c", "from gemini_jax.data.corpora.speech import _child_main; _child_main()"]
    done = subprocess.run(command, input=request, capture_output=True, env=env)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-2000:]
        raise SpeechError(f"an eSpeak NG synthesis process failed (exit status {done.returncode}): {tail}")
    ok, value = pickle.loads(done.stdout)
    if not ok:
        raise SpeechError(value)
    return value


def _child_main() -> None:
    """Entry point of a synthesis process: a pickled (function name, args) on stdin, a pickled
    (ok, result or error message) on stdout."""
    # The reply gets the real stdout to itself; anything the library prints goes to stderr.
    reply_to = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    name, args = pickle.loads(sys.stdin.buffer.read())
    functions = {f.__name__: f for f in (_synthesize_here, _synthesize_to_wav_here)}
    try:
        reply = (True, functions[name](*args))
    except (SpeechError, OSError) as e:
        reply = (False, str(e))
    reply_to.write(pickle.dumps(reply))
    reply_to.close()


class _Engine:
    """The library, initialised once in this (child) process, collecting samples by callback."""

    def __init__(self):
        try:
            import espeakng_loader
        except ImportError as e:
            raise SpeechError(
                "speech synthesis needs the `espeakng-loader` wheel (pip install espeakng-loader)"
            ) from e
        library_path = espeakng_loader.get_library_path()
        try:
            data_path = espeakng_loader.get_data_path()
            self._lib = ctypes.CDLL(library_path)
        except (OSError, RuntimeError) as e:
            raise SpeechError(f"could not load eSpeak NG from {library_path}: {e}") from e
        lib = self._lib
        if not hasattr(lib, "espeak_ng_SetRandSeed"):
            raise SpeechError(f"{library_path} lacks espeak_ng_SetRandSeed (eSpeak NG 1.52 or newer is needed)")
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None

        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT)
        if rate != ESPEAK_RATE:
            raise SpeechError(
                f"espeak_Initialize with voice data {data_path} returned {rate}, expected {ESPEAK_RATE} Hz"
            )
        self._chunks: list[np.ndarray] = []

        def on_samples(wav, count, _events):
            if wav and count > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
            return 0  # 0 = keep synthesizing

        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(on_samples)  # held: the library keeps only the raw pointer
        lib.espeak_SetSynthCallback(self._callback)

    def say(self, utterance: Utterance) -> np.ndarray:
        """int16 samples at 22,050 Hz, untrimmed."""
        lib = self._lib
        # The voice first: selecting a voice resets rate and pitch.
        if lib.espeak_SetVoiceByName(utterance.voice.encode()) != 0:
            raise SpeechError(f"eSpeak NG has no voice {utterance.voice!r} (e.g. en, en-us, en+f3, en-gb-x-rp+m1)")
        lib.espeak_SetParameter(_PARAM_RATE, utterance.rate, 0)
        lib.espeak_SetParameter(_PARAM_PITCH, utterance.pitch, 0)
        lib.espeak_ng_SetRandSeed(_seed_of(utterance))
        text = utterance.text.encode("utf-8") + b"\0"
        self._chunks = []
        status = lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise SpeechError(f"espeak_Synth failed with status {status} on {utterance.text!r}")
        if not self._chunks:
            raise SpeechError(f"eSpeak NG produced no audio for {utterance.text!r}")
        return np.concatenate(self._chunks)  # int16[N]


def _seed_of(utterance: Utterance) -> int:
    key = f"{utterance.text}|{utterance.voice}|{utterance.rate}|{utterance.pitch}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


@functools.cache
def _low_pass() -> np.ndarray:
    """float32[8821]: scipy's own default anti-aliasing filter for 441 -> 320 (a Kaiser-windowed
    sinc, beta 5, 10 zero crossings per side), designed once: redesigning it per clip cost
    more than the filtering itself."""
    from scipy.signal import firwin

    return firwin(2 * 10 * 441 + 1, 1.0 / 441, window=("kaiser", 5.0)).astype(np.float32)


def _to_16k(pcm: np.ndarray) -> np.ndarray:
    from scipy.signal import resample_poly

    samples = pcm.astype(np.float32) / 32768.0  # float32[N22]
    samples = resample_poly(samples, 320, 441, window=_low_pass()).astype(np.float32)  # 22,050 * 320 / 441 = 16,000 Hz
    loud = np.flatnonzero(np.abs(samples) > _SILENCE_THRESHOLD)
    if loud.size == 0:
        return samples
    margin = int(_MARGIN_S * SAMPLE_RATE)
    return samples[max(loud[0] - margin, 0) : loud[-1] + margin + 1]


def _synthesize_here(utterances: list[Utterance]) -> list[np.ndarray]:
    engine = _Engine()
    return [_to_16k(engine.say(u)) for u in utterances]


def _synthesize_to_wav_here(utterances: list[Utterance], paths: list[str]) -> list[float]:
    engine = _Engine()
    durations = []
    for utterance, path in zip(utterances, paths):
        samples = _to_16k(engine.say(utterance))
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_wav(path, samples)
        durations.append(len(samples) / SAMPLE_RATE)
    return durations
