"""scikit-learn's 1,797 handwritten digits as a contents-format JSONL dataset and a mixture file.

    python examples/digits.py data/digits
    gemini-jax data prepare data/digits/train.jsonl --out data/digits/prepared --vocab-size 1024
    gemini-jax train --data data/digits/mixture.yaml --run-dir runs/digits --steps 6000
    gemini-jax eval --checkpoint runs/digits --tasks prepared --data-dir data/digits/test.jsonl

Each 8x8 image (values 0..16) becomes a 32x32 RGB PNG (nearest upscaling, 0..255), asked
"What digit is this?" and answered with the digit. A fifth of the images, chosen by a hash of
their PNG bytes, is held out in test.jsonl; docs/your-data.md walks through the commands.
Each training image also comes shifted by one pixel in each of 8 directions, all 9 copies in
one `group`, so that `data prepare` puts them in one split and validation never sees a shifted
copy of a training image.
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


def shifted(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The image moved by (dy, dx) pixels, blank (0) where it moved away from."""
    out = np.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h + min(-dy, 0),
                                                                        max(-dx, 0):w + min(-dx, 0)]
    return out


def example(image_path: str, label: int, group: int | None = None) -> str:
    row = {"contents": [{"role": "user", "parts": [{"image": image_path}, {"text": "What digit is this?"}]},
                        {"role": "model", "parts": [{"text": str(label)}]}]}
    return json.dumps(row if group is None else row | {"group": group})


def write(out: Path, limit: int | None = None) -> None:
    digits = load_digits()
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = {"train": [], "test": []}
    for i, (image, label) in enumerate(list(zip(digits.images, digits.target))[:limit]):
        data = png(image)
        (out / "images" / f"{i:04d}.png").write_bytes(data)
        if hashlib.sha256(data).digest()[0] % 5 == 0:
            lines["test"].append(example(f"images/{i:04d}.png", label))
            continue
        for dy, dx in [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]:
            name = f"images/{i:04d}.png" if (dy, dx) == (0, 0) else f"images/{i:04d}_{dy:+d}{dx:+d}.png"
            if (dy, dx) != (0, 0):
                (out / name).write_bytes(png(shifted(image, dy, dx)))
            lines["train"].append(example(name, label, group=i))
    for split, rows in lines.items():
        (out / f"{split}.jsonl").write_text("".join(row + "\n" for row in rows))
    (out / "mixture.yaml").write_text(MIXTURE)
    print(f"{out}: {len(lines['train'])} train, {len(lines['test'])} test examples")


if __name__ == "__main__":
    write(Path(sys.argv[1]))
