"""scikit-learn's 1,797 handwritten digits as a contents-format JSONL dataset and a mixture file.

    python examples/digits.py data/digits
    gemini-jax data prepare data/digits/train.jsonl --out data/digits/prepared --vocab-size 1024
    gemini-jax train --data data/digits/mixture.yaml --run-dir runs/digits --steps 1500
    gemini-jax eval --checkpoint runs/digits --tasks prepared --data-dir data/digits/test.jsonl

Each 8x8 image (values 0..16) becomes a 32x32 RGB PNG (nearest upscaling, 0..255), asked
"What digit is this?" and answered with the digit. A fifth of the images, chosen by a hash of
their PNG bytes, is held out in test.jsonl; docs/your-data.md walks through the commands.
"""

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

MIXTURE = "sources:\n  digits: {path: prepared}\nmetrics: [exact_match]\neval:\n  digits_test: test.jsonl\n"


def png(image: np.ndarray) -> bytes:
    grey = np.round(image * 255 / 16).astype(np.uint8).repeat(4, axis=0).repeat(4, axis=1)  # [32, 32]
    out = io.BytesIO()
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(out, format="PNG")
    return out.getvalue()


def write(out: Path, limit: int | None = None) -> None:
    digits = load_digits()
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = {"train": [], "test": []}
    for i, (image, label) in enumerate(list(zip(digits.images, digits.target))[:limit]):
        data = png(image)
        (out / "images" / f"{i:04d}.png").write_bytes(data)
        split = "test" if hashlib.sha256(data).digest()[0] % 5 == 0 else "train"
        lines[split].append(json.dumps({"contents": [
            {"role": "user", "parts": [{"image": f"images/{i:04d}.png"}, {"text": "What digit is this?"}]},
            {"role": "model", "parts": [{"text": str(label)}]}]}))
    for split, rows in lines.items():
        (out / f"{split}.jsonl").write_text("".join(row + "\n" for row in rows))
    (out / "mixture.yaml").write_text(MIXTURE)
    print(f"{out}: {len(lines['train'])} train, {len(lines['test'])} test examples")


if __name__ == "__main__":
    write(Path(sys.argv[1]))
