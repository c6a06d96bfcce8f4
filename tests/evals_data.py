"""The benchmark fixtures of tests/fixtures/evals, copied to a temporary folder with the media
files they name (tiny PNG/JPEG images, WAV clips, a GIF video) generated instead of stored."""

import shutil
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures" / "evals"
IMAGES = [
    "vqav2/val2014/COCO_val2014_000000000042.jpg", "vqav2/val2014/COCO_val2014_000000000007.jpg",
    "textvqa/train_images/abc123.jpg", "docvqa/documents/doc1.png", "infographicvqa/images/info1.png",
    "chartqa/png/chart1.png", "chartqa/png/chart2.png", "ai2d/images/0.png", "mmmu/images/art1.png",
    "mmmu/images/m1.png", "mmmu/images/m2.png", "mathvista/images/1.jpg", "mathvista/images/2.jpg",
    "mathvista/images/3.png",
]
AUDIO = ["asr_manifest/audio/one.wav", "asr_manifest/audio/two.wav", "covost2/clips/common_voice_fr_1.wav",
         "covost2/clips/common_voice_fr_3.wav"]
VIDEOS = ["videoqa/clips/moving.gif", "vatex/videos/Ab3xq_000010_000020.gif", "vatex/videos/Zz9_000001_000011.gif"]


def make_data_dir(root: Path) -> Path:
    data = root / "evals"
    shutil.copytree(FIXTURES, data)
    rng = np.random.default_rng(0)
    for i, name in enumerate(IMAGES):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12 + i, 16, 3), dtype=np.uint8)).save(data / name)
    for name in AUDIO:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(data / name, (0.1 * rng.standard_normal(4000)).astype(np.float32), 16000)
    for name in VIDEOS:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        frames = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]
        frames[0].save(data / name, save_all=True, append_images=frames[1:], duration=100)
    return data


def write_run(root: Path, model, *, config, texts) -> tuple[Path, object]:
    """A run directory (config, tokenizer trained on `texts`, step-0 checkpoint) of `model`."""
    from flax import nnx

    from gemini_jax import checkpoint
    from gemini_jax.data.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(texts, vocab_size=config.vocab_size, path=root / "tok.model")
    checkpoint.write_run_files(root / "run", config=config, tokenizer_path=root / "tok.model")
    saver = checkpoint.Checkpointer(root / "run", async_save=False)
    saver.save(0, state={"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}, meta={"step": 0})
    saver.wait()
    saver.close()
    return root / "run", tokenizer
