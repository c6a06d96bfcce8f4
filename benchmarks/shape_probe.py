"""How much easy-VQA shape (or colour) information a run's vision encoder keeps (a linear
probe; prints JSON).

    python benchmarks/shape_probe.py --run runs/demo     # a trained run
    python benchmarks/shape_probe.py --preset demo       # the same encoder at initialisation
    python benchmarks/shape_probe.py --run runs/demo --attribute colour

Each easy-VQA image with a shape question gets its answer (circle, rectangle or triangle)
as a label (with `--attribute colour`, the answer of its colour question: one of eight).
The encoder's soft tokens for the image, concatenated and standardised, feed a logistic
regression fitted on the train images; the JSON gives its accuracy on the held-out test
images (chance is about 1/3 for shapes, 1/8 for colours). A trained encoder that scores below
its own initialisation has thrown that attribute away; one that scores well where the model's
answers do not leaves the failure to the decoder.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from gemini_jax import checkpoint
from gemini_jax.config import get_preset
from gemini_jax.data.corpora.robustness import VQA_COLOURS, VQA_SHAPES
from gemini_jax.data.media import image_patches, load_image
from gemini_jax.model import Gemini

ATTRIBUTES = {"shape": VQA_SHAPES, "colour": tuple(VQA_COLOURS)}  # what a probe may name: its classes


def attribute_labels(split: str, classes: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """(image paths, int labels) of the easy-VQA images that have a question answered by one of
    `classes` (one of ATTRIBUTES)."""
    import easy_vqa

    questions = easy_vqa.get_train_questions() if split == "train" else easy_vqa.get_test_questions()
    paths = easy_vqa.get_train_image_paths() if split == "train" else easy_vqa.get_test_image_paths()
    labels = {image: classes.index(answer) for _, answer, image in zip(*questions) if answer in classes}
    images = sorted(labels)
    return [paths[i] for i in images], np.array([labels[i] for i in images])


def soft_token_features(model: Gemini, paths: list[str], *, chunk: int = 500) -> np.ndarray:
    """[images, soft tokens * width]: each image's soft tokens, flattened."""
    vision = model.config.vision
    encode = nnx.jit(lambda m, p, c, k: m.vision.encode_images(p, c, k).tokens)
    features = []
    for start in range(0, len(paths), chunk):
        grids = [image_patches(load_image(p), patch_size=vision.patch_size, max_patches=vision.max_patches,
                               max_grid=vision.max_grid) for p in paths[start:start + chunk]]
        if len({g.patches.shape for g in grids}) != 1:
            raise ValueError("the probe needs one patch grid for every image (easy-VQA images are all 64x64)")
        patches = np.stack([g.patches for g in grids])[:, None]  # [B, 1, P, C]
        coords = np.stack([g.coords for g in grids])[:, None]
        mask = np.ones(patches.shape[:3], bool)
        features.append(np.asarray(encode(model, patches, coords, mask)).reshape(len(grids), -1))
    return np.concatenate(features)


def probe_accuracy(train_x, train_y, test_x, test_y, *, steps: int, l2: float = 1e-3,
                   classes: int) -> tuple[float, float]:
    """Train and test accuracy of a full-batch, L2-regularised logistic regression."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    params = (jnp.zeros((train_x.shape[1], classes)), jnp.zeros(classes))
    optimizer = optax.adam(1e-2)
    state = optimizer.init(params)

    def loss(p):
        logits = train_x @ p[0] + p[1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, train_y).mean() + l2 * jnp.sum(p[0] ** 2)

    @jax.jit
    def update(p, s):
        grads = jax.grad(loss)(p)
        updates, s = optimizer.update(grads, s)
        return optax.apply_updates(p, updates), s

    for _ in range(steps):
        params, state = update(params, state)
    accuracy = lambda x, y: float(np.mean(np.asarray(jnp.argmax(x @ params[0] + params[1], -1)) == y))
    return accuracy(train_x, train_y), accuracy(test_x, test_y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a run directory: its config and latest checkpoint")
    source.add_argument("--preset", help="a preset with a vision encoder, at initialisation (seed 0)")
    parser.add_argument("--steps", type=int, default=1000, help="full-batch Adam steps of the probe")
    parser.add_argument("--attribute", choices=tuple(ATTRIBUTES), default="shape",
                        help="what the probe names: the image's shape (3 classes) or its shape's colour (8)")
    args = parser.parse_args()

    config = checkpoint.read_config(args.run) if args.run else get_preset(args.preset)
    if config.vision is None:
        parser.error("the model has no vision encoder")
    model = Gemini(config, rngs=nnx.Rngs(0))
    step = checkpoint.load_params(args.run, model) if args.run else 0
    classes = ATTRIBUTES[args.attribute]
    (train_paths, train_y), (test_paths, test_y) = attribute_labels("train", classes), attribute_labels("test", classes)
    train_acc, test_acc = probe_accuracy(soft_token_features(model, train_paths), train_y,
                                         soft_token_features(model, test_paths), test_y, steps=args.steps,
                                         classes=len(classes))
    print(json.dumps({"source": args.run or f"preset {args.preset} at init", "step": step, "attribute": args.attribute,
                      "train_images": len(train_y), "test_images": len(test_y),
                      "probe_train_accuracy": round(train_acc, 4), "probe_test_accuracy": round(test_acc, 4)}))


if __name__ == "__main__":
    main()
