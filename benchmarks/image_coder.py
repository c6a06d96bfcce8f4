"""What it costs to turn one training picture into its codes (prints JSON).

    python benchmarks/image_coder.py [--images 200] [--repeats 3]

Training data writes each model-turn picture as codes one picture at a time, as the pipeline
reads it (data/image_codes.py). This times `ImageCoder` on `--images` random 64 x 64 pictures
against the same encoder called through `nnx.jit` on the module (what the coder did before), both
in this process, the best of `--repeats`; the image tokenizer has the recipe's default shape with
freshly initialised weights, which cost what trained ones do.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from flax import nnx

from gemini_jax.data.image_codes import ImageCoder
from gemini_jax.model.image_tokenizer import ImageTokenizer, ImageTokenizerConfig


def best_ms_per_image(encode, images: np.ndarray, repeats: int) -> float:
    encode(images[0])  # compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for image in images:
            encode(image)
        times.append(time.perf_counter() - start)
    return 1000.0 * min(times) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="pictures encoded one at a time per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    args = parser.parse_args()

    config = ImageTokenizerConfig()
    tokenizer = ImageTokenizer(config, rngs=nnx.Rngs(0))
    images = np.random.default_rng(0).integers(0, 256, (args.images, config.image_size, config.image_size, 3),
                                               dtype=np.uint8)
    coder = ImageCoder(tokenizer, key="benchmark")
    module_jit = nnx.jit(lambda model, pictures: model.encode(pictures))

    def before(image):
        return np.asarray(module_jit(tokenizer, image[None]), np.int32).reshape(-1)

    same = all((coder(image) == before(image)).all() for image in images[:8])
    now_ms = best_ms_per_image(coder, images, args.repeats)
    before_ms = best_ms_per_image(before, images, args.repeats)
    print(json.dumps({"images": args.images, "ms_per_image": round(now_ms, 3),
                      "ms_per_image_nnx_jit": round(before_ms, 3), "speedup": round(before_ms / now_ms, 2),
                      "same_codes": bool(same)}))


if __name__ == "__main__":
    main()
