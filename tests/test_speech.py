"""eSpeak NG synthesis and the spoken forms of numbers."""

import os
import subprocess
import sys

import numpy as np
import pytest

from gemini_jax.data.corpora import speech
from gemini_jax.data.corpora.speech import SpeechError, Utterance


@pytest.mark.parametrize(
    "n, words",
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (58, "fifty eight"),
        (105, "one hundred and five"),
        (412, "four hundred and twelve"),
        (999, "nine hundred and ninety nine"),
        (1000, "one thousand"),
        (1100, "one thousand one hundred"),
        (4012, "four thousand and twelve"),
        (7305, "seven thousand three hundred and five"),
    ],
)
def test_number_words(n, words):
    assert speech.number_words(n) == words


def test_number_words_range_and_digits():
    with pytest.raises(ValueError, match="0..9999"):
        speech.number_words(10_000)
    assert speech.digit_words("3140") == "three one four zero"
    with pytest.raises(ValueError, match="digits"):
        speech.digit_words("3a")


def test_utterance_rejects_bad_settings():
    with pytest.raises(ValueError, match="rate"):
        Utterance(text="hello", voice="en", rate=20, pitch=50)
    with pytest.raises(ValueError, match="pitch"):
        Utterance(text="hello", voice="en", rate=150, pitch=120)


def test_synthesis_is_real_speech_and_reproducible():
    # en+f3 adds breath noise from a clock-seeded generator: the case that needs the fixed seed.
    utterances = [
        Utterance(text="zero", voice="en", rate=170, pitch=50),
        Utterance(text="four thousand three hundred and twelve", voice="en+f3", rate=170, pitch=50),
        Utterance(text="three one four", voice="en-us+f2", rate=150, pitch=40),
        Utterance(text="zero", voice="en", rate=170, pitch=50),
    ]
    first = speech.synthesize(utterances)
    second = speech.synthesize(utterances)
    for a, b in zip(first, second, strict=True):
        assert a.dtype == np.float32 and a.ndim == 1
        np.testing.assert_array_equal(a, b)
    seconds = [len(clip) / speech.SAMPLE_RATE for clip in first]
    assert 0.2 < seconds[0] < 1.0  # one word
    assert seconds[1] > 2 * seconds[0]  # six words take far longer than one
    assert all(np.sqrt(np.mean(clip**2)) > 0.01 for clip in first)  # not silence
    assert all(np.abs(clip).max() <= 1.0 for clip in first)


def test_unknown_voice_is_a_clear_error():
    with pytest.raises(SpeechError, match="no voice 'xx-nonsense'"):
        speech.synthesize([Utterance(text="hello", voice="xx-nonsense", rate=150, pitch=50)])


def test_wav_round_trip(tmp_path):
    samples = (0.5 * np.sin(np.arange(1600) * 2 * np.pi * 440 / 16_000)).astype(np.float32)
    speech.write_wav(tmp_path / "a.wav", samples)
    back, rate = speech.read_wav(tmp_path / "a.wav")
    assert rate == 16_000 and back.shape == samples.shape
    np.testing.assert_allclose(back, samples, atol=1 / 32767)
    assert (tmp_path / "a.wav").stat().st_size == 44 + 2 * 1600  # RIFF header + 16-bit mono PCM


def test_resampling_matches_scipys_default_filter():
    from scipy.signal import resample_poly

    pcm = (np.random.default_rng(0).standard_normal(22_050) * 8000).astype(np.int16)
    reference = resample_poly(pcm.astype(np.float32) / 32768.0, 320, 441)  # float32[16000]
    ours = speech._to_16k(pcm)  # trimmed only where the signal is quiet: noise never is
    assert ours.shape == (16_000,)
    np.testing.assert_array_equal(ours, reference)


def test_synthesis_works_from_a_script_on_stdin():
    # multiprocessing's 'spawn' would try to re-import the parent's main script: '<stdin>' here.
    script = (
        "from gemini_jax.data.corpora.speech import Utterance, synthesize\n"
        "print(len(synthesize([Utterance(text='one', voice='en', rate=160, pitch=50)])[0]) > 1000)\n"
    )
    done = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
