"""Media preprocessing: image patch grids, audio loading and log-mel, video frame sampling."""

import math
import struct
import warnings
import zlib

import numpy as np
import pytest
import soundfile
from PIL import Image
from scipy import signal

from gemini_jax.config import AudioConfig
from gemini_jax.data import media
from gemini_jax.data.examples import Audio

# --- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "height, width, budget, max_grid, expected",
    [
        (64, 64, 16, None, (4, 4)),
        (10, 30, 16, None, (2, 6)),  # 3:1 landscape: sqrt(16/3) = 2.3 rows, 6.9 columns
        (30, 10, 16, None, (6, 2)),
        (8, 8, 16, None, (4, 4)),  # small images are enlarged to the budget
        (1, 1000, 16, None, (1, 16)),  # extreme: one row, as many columns as the budget allows
        (1, 1000, 16, 8, (1, 8)),
        (50, 40, 1, None, (1, 1)),
    ],
)
def test_patch_grid(height, width, budget, max_grid, expected):
    assert media.patch_grid(height=height, width=width, max_patches=budget, max_grid=max_grid) == expected


def test_patch_grid_keeps_aspect_ratio_within_budget():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(x) for x in rng.integers(1, 2000, size=2))
        budget = int(rng.integers(1, 300))
        rows, cols = media.patch_grid(height=h, width=w, max_patches=budget)
        assert 1 <= rows * cols <= budget
        if rows > 1 and cols > 1:  # not clamped: the rounding error is below one row/column
            assert cols / (rows + 1) < w / h < (cols + 1) / rows


def test_patches_are_flattened_row_column_channel():
    image = np.random.default_rng(1).integers(0, 256, size=(8, 12, 3), dtype=np.uint8)
    out = media.image_patches(image, patch_size=4, max_patches=6)  # grid 2x3: no resize
    assert out.patches.shape == (6, 48) and out.patches.dtype == np.float32
    np.testing.assert_array_equal(out.coords, [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    for k, (r, c) in enumerate(out.coords):
        block = image[4 * r : 4 * r + 4, 4 * c : 4 * c + 4, :].astype(np.float32)  # [row, column, channel]
        np.testing.assert_allclose(out.patches[k], block.reshape(-1) / 127.5 - 1.0, atol=1e-6)
    assert out.patches.min() >= -1.0 and out.patches.max() <= 1.0


def test_patches_of_a_resized_image():
    image = np.zeros((30, 90, 3), np.uint8)
    image[:, 45:] = 255  # left half black, right half white
    out = media.image_patches(image, patch_size=4, max_patches=16)  # 3:1 -> 2x6
    assert out.patches.shape == (12, 48)
    assert out.coords.max(axis=0).tolist() == [1, 5]
    means = out.patches.mean(axis=1).reshape(2, 6)
    np.testing.assert_allclose(means[:, :2], -1.0, atol=1e-6)  # away from the edge, where bicubic rings
    np.testing.assert_allclose(means[:, 4:], 1.0, atol=1e-6)
    assert np.all(means[:, 2] < -0.9) and np.all(means[:, 3] > 0.9)


def test_fixed_grid_stretches_any_image_to_the_square_grid():
    """keep_aspect_ratio=False (PaliGemma): every image fills the full square grid, resized
    exactly as PaliGemma's processor does (bicubic to the square size, ratio dropped)."""
    image = np.random.default_rng(0).integers(0, 256, (30, 90, 3), dtype=np.uint8)
    out = media.image_patches(image, patch_size=4, max_patches=9, max_grid=3, keep_aspect_ratio=False)
    assert out.patches.shape == (9, 48)
    assert out.coords.tolist() == [[r, c] for r in range(3) for c in range(3)]
    stretched = np.asarray(Image.fromarray(image).resize((12, 12), Image.Resampling.BICUBIC))
    expected = (stretched.astype(np.float32) / 127.5 - 1.0).reshape(3, 4, 3, 4, 3).transpose(0, 2, 1, 3, 4)
    np.testing.assert_array_equal(out.patches, expected.reshape(9, 48))
    # The budget and max_grid still bound the square; keeping the ratio would give 1x3 here.
    assert media.image_patches(image, patch_size=4, max_patches=5, keep_aspect_ratio=False).patches.shape[0] == 4
    assert media.image_patches(image, patch_size=4, max_patches=16, max_grid=3,
                               keep_aspect_ratio=False).patches.shape[0] == 9
    assert media.image_patches(image, patch_size=4, max_patches=9, max_grid=3).patches.shape[0] == 3


def test_load_image_converts_to_rgb(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    rgb = media.load_image(tmp_path / "grey.png")
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.repeat(grey[:, :, None], 3, axis=2))
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque pixel kept, transparent ones become white
    out = media.load_image(rgba)
    assert out[0, 0].tolist() == [10, 20, 30] and out[1, 1].tolist() == [255, 255, 255]
    data = (tmp_path / "grey.png").read_bytes()
    np.testing.assert_array_equal(media.load_image(data), rgb)


def test_bad_images_are_named(tmp_path):
    with pytest.raises(media.MediaError, match="nothere.png.*does not exist"):
        media.load_image(tmp_path / "nothere.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(media.MediaError, match="broken.png.*not a readable image"):
        media.load_image(tmp_path / "broken.png")
    with pytest.raises(media.MediaError, match="must be uint8"):
        media.load_image(np.zeros((4, 4, 3), np.float32))


# --- audio -------------------------------------------------------------------------------------


def _tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def test_audio_is_downmixed_and_resampled_with_warnings(tmp_path):
    left, right = _tone(1000, 0.5, 22_050), _tone(500, 0.5, 22_050)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 22_050, subtype="FLOAT")
    with pytest.warns(UserWarning) as record:
        out = media.load_audio(tmp_path / "stereo.wav", sample_rate=16_000)
    messages = " ".join(str(w.message) for w in record)
    assert "stereo.wav" in messages and "2 channels downmixed" in messages and "22050 Hz to 16000 Hz" in messages
    expected = signal.resample_poly((left + right) / 2, 320, 441)  # 16000/22050 reduced
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert out.shape == (math.ceil(left.shape[0] * 320 / 441),)


def test_mono_audio_at_the_right_rate_is_untouched(tmp_path):
    tone = _tone(440, 0.25, 16_000)
    soundfile.write(tmp_path / "mono.flac", tone, 16_000, subtype="PCM_24")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = media.load_audio(tmp_path / "mono.flac")
        from_memory = media.load_audio(Audio(tone, 16_000))
    np.testing.assert_allclose(out, tone, atol=1e-5)
    np.testing.assert_array_equal(from_memory, tone)


def test_bad_audio_is_named(tmp_path):
    with pytest.raises(media.MediaError, match="gone.wav.*does not exist.*WAV/FLAC"):
        media.load_audio(tmp_path / "gone.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF....WAVEjunkjunk")
    with pytest.raises(media.MediaError, match="junk.wav.*not readable audio"):
        media.load_audio(tmp_path / "junk.wav")
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16_000)
    with pytest.raises(media.MediaError, match="empty.wav.*no samples"):
        media.load_audio(tmp_path / "empty.wav")
    soundfile.write(tmp_path / "long.wav", np.zeros(16_000 * 3, np.float32), 16_000)
    with pytest.raises(media.MediaError, match=r"long.wav.*3.00 s.*at most 2.0 s"):
        media.load_audio(tmp_path / "long.wav", max_seconds=2.0)


@pytest.mark.parametrize("num_samples", [1, 159, 160, 161, 4000])
def test_log_mel_frame_count(num_samples):
    config = AudioConfig(num_mels=16)
    mels = media.log_mel(np.zeros(num_samples, np.float32), config)
    assert mels.shape == (config.num_mel_frames(num_samples), 16) and mels.dtype == np.float32
    np.testing.assert_allclose(mels, -1.5, atol=1e-6)  # silence sits on the floor: (log10(1e-10) + 4) / 4


def test_log_mel_matches_a_direct_computation():
    config = AudioConfig(num_mels=32)
    samples = np.random.default_rng(2).normal(size=1000).astype(np.float32)
    mels = media.log_mel(samples, config)
    filters = media.mel_filterbank(num_mels=32, fft_size=512, sample_rate=16_000)
    window = signal.get_window("hann", 400)  # periodic Hann
    padded = np.concatenate([samples, np.zeros(400, np.float32)])
    for m in (0, 3, mels.shape[0] - 1):  # the last frame runs into the padding
        power = np.abs(np.fft.rfft(padded[160 * m : 160 * m + 400] * window, n=512)) ** 2
        expected = (np.log10(np.maximum(power @ filters, 1e-10)) + 4) / 4
        np.testing.assert_allclose(mels[m], expected, rtol=1e-4, atol=1e-4)


def test_mel_filterbank_shape_and_centres():
    filters = media.mel_filterbank(num_mels=40, fft_size=512, sample_rate=16_000)
    assert filters.shape == (257, 40)
    # HTK: 1000 Hz is 1000 mel; the 40 centres are evenly spaced in mel up to 8 kHz.
    top_mel = 2595 * np.log10(1 + 8000 / 700)
    centres_hz = 700 * (10 ** (np.linspace(0, top_mel, 42)[1:-1] / 2595) - 1)
    bin_hz = 8000 / 256
    peaks_hz = filters.argmax(axis=0) * bin_hz
    assert np.all(np.abs(peaks_hz - centres_hz) <= bin_hz)
    widths = filters.sum(axis=0)[10:] * bin_hz  # unit area (wide enough triangles to integrate by bins)
    np.testing.assert_allclose(widths, 1.0, rtol=0.05)


def test_log_mel_of_a_tone_peaks_at_its_band():
    config = AudioConfig(num_mels=40)
    mels = media.log_mel(_tone(1000, 0.5, 16_000), config)
    filters = media.mel_filterbank(num_mels=40, fft_size=512, sample_rate=16_000)
    band = int(filters[round(1000 / (8000 / 256))].argmax())
    assert set(mels[2:-2].argmax(axis=1)) == {band}


# --- video -------------------------------------------------------------------------------------

COLOURS = [(i * 25, 255 - i * 25, (i * 70) % 256) for i in range(10)]


def _gif(path, count):
    frames = [Image.new("RGB", (8, 6), c) for c in COLOURS[:count]]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)


def test_video_frames_are_sampled_uniformly(tmp_path):
    _gif(tmp_path / "clip.gif", 10)
    video = media.load_video(tmp_path / "clip.gif", num_frames=4)
    assert video.shape == (4, 6, 8, 3) and video.dtype == np.uint8
    # The centres of 4 equal parts of 10 frames: 1.25, 3.75, 6.25, 8.75 -> 1, 3, 6, 8.
    for frame, index in zip(video, [1, 3, 6, 8]):
        np.testing.assert_allclose(frame[0, 0], COLOURS[index], atol=8)  # GIF palettes round colours
    short = media.load_video(tmp_path / "clip.gif", num_frames=20)
    assert short.shape[0] == 10


def test_video_from_array_and_still_image(tmp_path):
    array = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((5, 2, 3, 3), np.uint8)
    np.testing.assert_array_equal(media.load_video(array, num_frames=2)[:, 0, 0, 0], [1, 3])
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "still.png")
    still = media.load_video(tmp_path / "still.png", num_frames=8)
    assert still.shape == (1, 4, 4, 3)


def test_bad_videos_are_named(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not decodable here")
    with pytest.raises(media.MediaError, match="clip.mp4.*animated GIF"):
        media.load_video(tmp_path / "clip.mp4", num_frames=4)
    with pytest.raises(media.MediaError, match="video array"):
        media.load_video(np.zeros((3, 4, 4), np.uint8), num_frames=2)


# --- limits read from headers, before decoding ----------------------------------------------------


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG of width x height: a few KB that decode to width * height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture
def no_decoding(monkeypatch):
    """Fails a test that decodes pixels or samples: the limits must refuse from the header alone."""
    def refuse(*args, **kwargs):
        raise AssertionError("decoded media that its header already put over a limit")

    monkeypatch.setattr(Image.Image, "load", refuse)
    monkeypatch.setattr(soundfile.SoundFile, "read", refuse)


def test_images_over_the_pixel_limit_are_refused_from_the_header(tmp_path, no_decoding):
    (tmp_path / "wide.png").write_bytes(bomb_png(10_000, 10_000))  # 100 Mpx: PIL's bomb warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not escape either
        with pytest.raises(media.MediaError, match=r"wide.png.*10000 x 10000.*limit of 50000000 pixels"):
            media.load_image(tmp_path / "wide.png")
    with pytest.raises(media.MediaTooLarge, match=r"<bytes>.*300 x 200 = 60000 pixels.*limit of 50000"):
        media.load_image(bomb_png(300, 200), max_pixels=50_000)


def test_a_decompression_bomb_is_a_media_error_naming_the_file_and_limit(tmp_path, monkeypatch):
    assert media.load_image(bomb_png(30, 20), max_pixels=600).shape == (20, 30, 3)  # at the limit: decoded
    (tmp_path / "bomb.png").write_bytes(bomb_png(14_000, 14_000))  # over twice PIL's limit: its error
    with pytest.raises(media.MediaTooLarge, match=r"bomb.png.*limit of \d+ pixels"):
        media.load_image(tmp_path / "bomb.png", max_pixels=None)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's warning band: over 1000, under 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(media.MediaTooLarge, match=r"<bytes>.*limit of 1000 pixels"):
            media.load_image(bomb_png(50, 30), max_pixels=None)


def _silent_flac(path, seconds: float, rate: int = 16_000) -> None:
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=1, format="FLAC") as out:
        block = np.zeros(rate * 10, np.int16)
        for _ in range(int(seconds // 10)):
            out.write(block)


def test_audio_over_the_duration_limit_is_refused_from_the_header(tmp_path, no_decoding):
    _silent_flac(tmp_path / "hour.flac", 3600)  # a few KB of FLAC; 230 MB once decoded
    assert (tmp_path / "hour.flac").stat().st_size < 200_000
    with pytest.raises(media.MediaTooLarge, match=r"hour.flac.*3600.00 s.*at most 30.0 s"):
        media.load_audio(tmp_path / "hour.flac", max_seconds=30.0)
    with pytest.raises(media.MediaTooLarge, match=r"<bytes>.*3600.00 s.*at most 30.0 s"):
        media.load_audio((tmp_path / "hour.flac").read_bytes(), max_seconds=30.0)


def test_audio_headers_with_absurd_rates_or_channels_are_refused(tmp_path, no_decoding):
    soundfile.write(tmp_path / "wide.wav", np.zeros((10, 40), np.float32), 16_000)
    with pytest.raises(media.MediaTooLarge, match=r"wide.wav.*40 channels.*at most 32"):
        media.load_audio(tmp_path / "wide.wav")
    soundfile.write(tmp_path / "fast.wav", np.zeros(10, np.float32), 1_000_000)
    with pytest.raises(media.MediaTooLarge, match=r"fast.wav.*1000000 Hz.*at most 384000 Hz"):
        media.load_audio(tmp_path / "fast.wav")


def test_animations_over_the_frame_limit_are_refused_from_the_header(tmp_path):
    _gif(tmp_path / "clip.gif", 10)
    with pytest.raises(media.MediaTooLarge, match=r"clip.gif.*10 frames.*at most 4"):
        media.load_video(tmp_path / "clip.gif", num_frames=2, max_frames=4)
    with pytest.raises(media.MediaTooLarge, match=r"clip.gif.*10 frames of 8 x 6.*at most 100 pixels"):
        media.load_video(tmp_path / "clip.gif", num_frames=2, max_video_pixels=100)
    assert media.load_video(tmp_path / "clip.gif", num_frames=2, max_frames=10).shape == (2, 6, 8, 3)
