"""Records (record_codec), shards and the prepared-directory reader."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import soundfile
from PIL import Image

from gemini_jax.data import media
from gemini_jax.data.examples import Audio, Content, Example, Part, text_document
from gemini_jax.data.prepare.record_codec import RecordError, decode_record, encode_record
from gemini_jax.data.prepare.shards import ShardWriter, read_spool, spool_writer
from gemini_jax.data.prepared import PreparedDataError, open_prepared
from gemini_jax.data.records import DataError


def _png(color: tuple[int, int, int], size: tuple[int, int] = (5, 3)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _gif(frames: int = 3) -> bytes:
    out = io.BytesIO()
    images = [Image.new("RGB", (4, 4), (40 * i, 0, 0)) for i in range(frames)]
    images[0].save(out, format="GIF", save_all=True, append_images=images[1:])
    return out.getvalue()


def _wav(seconds: float = 0.1, rate: int = 16_000) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, np.sin(np.arange(int(seconds * rate)) / 5).astype(np.float32), rate, format="WAV")
    return out.getvalue()


def _multimodal(tmp_path) -> Example:
    (tmp_path / "cat.png").write_bytes(_png((200, 10, 10)))
    return Example(contents=(
        Content("user", (Part(image=str(tmp_path / "cat.png")), Part(text="What is this? é 漢字"),
                         Part(audio=_wav()), Part(video=_gif()))),
        Content("model", (Part(text="A red square."),)),
    ), task="vqa")


def test_round_trip_embeds_media_bytes(tmp_path):
    example = _multimodal(tmp_path)
    data = encode_record(example)
    assert data[:4] == b"GJR1"
    back = decode_record(data)
    assert back.task == "vqa" and back.train_on == "model" and not back.raw_text
    user, model = back.contents
    assert [p.kind for p in user.parts] == ["image", "text", "audio", "video"]
    assert user.parts[0].image == (tmp_path / "cat.png").read_bytes()  # the file's bytes, not its path
    assert user.parts[1].text == "What is this? é 漢字"
    assert user.parts[2].audio == _wav() and user.parts[3].video == _gif()
    assert model.parts[0].text == "A red square."
    # The record is self-contained: the media decode without the original file.
    (tmp_path / "cat.png").unlink()
    assert media.load_image(user.parts[0].image).shape == (3, 5, 3)
    assert media.load_video(user.parts[3].video, num_frames=8).shape == (3, 4, 4, 3)
    assert media.load_audio(user.parts[2].audio).shape == (1600,)
    assert encode_record(back) == data  # canonical: decoding and encoding again gives the same bytes


def test_decoded_arrays_are_stored_losslessly():
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    clip = np.stack([pixels, 255 - pixels])
    samples = np.linspace(-1, 1, 50, dtype=np.float32)
    example = Example(contents=(Content("user", (
        Part(image=pixels), Part(video=clip), Part(audio=Audio(samples, 8000)))),))
    parts = decode_record(encode_record(example)).contents[0].parts
    np.testing.assert_array_equal(media.load_image(parts[0].image), pixels)
    np.testing.assert_array_equal(media.load_video(parts[1].video, num_frames=2), clip)
    np.testing.assert_array_equal(media.load_audio(parts[2].audio, sample_rate=8000), samples)


def test_raw_text_document_round_trips():
    doc = text_document("line one\nline two\n")
    assert decode_record(encode_record(doc)) == doc


@pytest.mark.parametrize("data, message", [
    (b"GJ", "shorter than its header"),
    (b"NOPE" + b"\0" * 8, "not a gemini-jax record"),
    (b"GJR1" + (5).to_bytes(4, "little") + b"{oops", "unreadable"),
    (b"GJR1" + (2).to_bytes(4, "little") + b"{}", "does not hold an example"),
])
def test_bad_records_are_refused(data, message):
    with pytest.raises(RecordError, match=message):
        decode_record(data)


def test_truncated_blob_is_refused(tmp_path):
    data = encode_record(_multimodal(tmp_path))
    with pytest.raises(RecordError, match="runs past the record's end"):
        decode_record(data[:-10])
    with pytest.raises(RecordError, match="after its last blob"):
        decode_record(data + b"x")


def _write_prepared(path, splits: dict[str, list[Example]], *, per_shard: int = 2) -> None:
    path.mkdir()
    manifest = {"format": 1, "splits": {}, "modalities": ["text"], "text_only": True, "tokenizer": None,
                "tokenizer_sha256": None, "sources": [], "options": {}}
    for name, examples in splits.items():
        writer = ShardWriter(path, name, records_per_shard=per_shard)
        for example in examples:
            writer.write(encode_record(example))
        manifest["splits"][name] = {"files": writer.close(), "records": writer.records}
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_shards_roll_and_are_named_with_their_count(tmp_path):
    docs = [text_document(f"document {i}") for i in range(5)]
    _write_prepared(tmp_path / "d", {"train": docs, "validation": docs[:1], "test": []})
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["files"] == [f"train-{i:05d}-of-00003.array_record" for i in range(3)]
    assert manifest["splits"]["validation"]["files"] == ["validation-00000-of-00001.array_record"]
    assert manifest["splits"]["test"] == {"files": [], "records": 0}
    assert not list((tmp_path / "d").glob("*.tmp"))
    data = open_prepared(tmp_path / "d")
    train = data.split("train")
    assert len(train) == 5 and train[3] == docs[3] and train[-1] == docs[4] and train[1:3] == docs[1:3]
    assert len(data.split("test")) == 0 and data.text_only and data.tokenizer_path is None
    with pytest.raises(IndexError):
        train[5]
    with pytest.raises(PreparedDataError, match="no split 'dev'"):
        data.split("dev")
    clone = pickle.loads(pickle.dumps(train))  # grain worker processes get a copy
    assert clone[0] == docs[0]


def test_spool_reads_back_in_order(tmp_path):
    writer = spool_writer(tmp_path / "spool.array_record")
    for i in range(600):
        writer.write(f"r{i}".encode())
    writer.close()
    assert list(read_spool(tmp_path / "spool.array_record", batch=256)) == [f"r{i}".encode() for i in range(600)]


def test_unfinished_or_missing_directories_are_refused(tmp_path):
    assert issubclass(PreparedDataError, DataError)
    with pytest.raises(PreparedDataError, match="does not exist"):
        open_prepared(tmp_path / "nothing")
    (tmp_path / "out.partial").mkdir()
    with pytest.raises(PreparedDataError, match="unfinished .*partial"):
        open_prepared(tmp_path / "out.partial")
    with pytest.raises(PreparedDataError, match="did not finish, rerun it"):
        open_prepared(tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreparedDataError, match="no manifest.json: `data prepare` did not finish; rerun it"):
        open_prepared(tmp_path / "empty")


def test_damaged_manifests_are_refused(tmp_path):
    _write_prepared(tmp_path / "d", {"train": [text_document("a")]})
    manifest_path = tmp_path / "d" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "format": 2}))
    with pytest.raises(PreparedDataError, match="format 2"):
        open_prepared(tmp_path / "d")
    (tmp_path / "d" / manifest["splits"]["train"]["files"][0]).unlink()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(PreparedDataError, match="is missing"):
        open_prepared(tmp_path / "d")
    manifest_path.write_text("{not json")
    with pytest.raises(PreparedDataError, match="unreadable"):
        open_prepared(tmp_path / "d")
