"""Short clips of simple shapes moving on a plain background, with questions only time answers.

Three kinds of clip, each fully described by a frozen parameter record (its `key` is what the
demo corpus hashes to keep train and test clips apart):

- `Motion`: one shape slides; "Which way does the red circle move?" -> left/right/up/down.
- `Order`: a second shape appears some frames after the first; "Which shape appears first?"
  (or "last?") -> circle/square/triangle.
- `Growth`: one shape drifts while it grows or shrinks; "Does the blue square get bigger or
  smaller?" -> bigger/smaller.

No single frame answers any of these. Every object moves at least one pixel per frame, so no
two consecutive frames are equal: a GIF writer merges equal neighbours into one longer frame,
which would silently drop frames.

Frames are drawn in palette mode from one fixed palette without anti-aliasing, so a GIF round
trip gives back exactly the colours drawn.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageSequence

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 230), "yellow": (240, 210, 40), "black": (30, 30, 30)}
# Light backgrounds, as easy-VQA's images have: what the vision encoder learns about shapes
# from images then carries over to video frames.
BACKGROUNDS = {"ivory": (250, 246, 236), "lavender": (236, 232, 250), "mint": (232, 248, 238)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

_PALETTE = list(BACKGROUNDS.values()) + list(COLOURS.values())
_INDEX = {name: i for i, name in enumerate(list(BACKGROUNDS) + list(COLOURS))}
FRAME_MS = 125


@dataclasses.dataclass(frozen=True)
class Motion:
    kind: ClassVar[str] = "direction"
    shape: str
    colour: str
    background: str
    direction: str
    x: int  # centre in the first frame, pixels
    y: int
    radius: int
    speed: int  # pixels per frame

    def question(self) -> str:
        return f"Which way does the {self.colour} {self.shape} move?"

    def answer(self) -> str:
        return self.direction


@dataclasses.dataclass(frozen=True)
class Order:
    kind: ClassVar[str] = "order"
    first: str
    first_colour: str
    second: str
    second_colour: str
    background: str
    ask_last: bool
    first_frame: int  # the first shape appears here (0 or 1: two blank frames would be equal)
    second_frame: int
    x1: int
    y1: int
    x2: int
    y2: int
    dx: int  # both shapes drift by (dx, dy) per frame
    dy: int
    radius: int

    def question(self) -> str:
        return f"Which shape appears {'last' if self.ask_last else 'first'}?"

    def answer(self) -> str:
        return self.second if self.ask_last else self.first


@dataclasses.dataclass(frozen=True)
class Growth:
    kind: ClassVar[str] = "size"
    shape: str
    colour: str
    background: str
    x: int
    y: int
    dx: int
    dy: int
    radius_start: int
    radius_end: int

    def question(self) -> str:
        return f"Does the {self.colour} {self.shape} get bigger or smaller?"

    def answer(self) -> str:
        return "bigger" if self.radius_end > self.radius_start else "smaller"


Clip = Motion | Order | Growth
CLIP_TYPES = (Motion, Order, Growth)


def question_kind(clip: Clip) -> str:
    """The kind of the clip's question: its clip kind, with order questions split into
    "order_first" and "order_last". The two take different skills (the first shape is the one
    every frame shows; the last one is new in the later frames), and a recipe can train them
    one after the other."""
    if isinstance(clip, Order):
        return "order_last" if clip.ask_last else "order_first"
    return clip.kind


def key(clip: Clip) -> str:
    """A stable text naming every parameter of the clip (what train/test splitting hashes)."""
    return type(clip).__name__ + repr(dataclasses.astuple(clip))


def sample(rng: np.random.Generator, *, kind: str, frames: int, size: int) -> Clip:
    """Random parameters for one clip of the given kind that stay inside a size x size frame."""
    def pick(options):
        return options[int(rng.integers(len(options)))]

    shapes, colours, backgrounds = list(SHAPES), list(COLOURS), list(BACKGROUNDS)
    # Shapes of a sixth to a quarter of the frame: at the 32-pixel default, a shape spans
    # a good part of a 16-pixel patch, so its kind and its position are both visible.
    low_r, high_r = max(2, size // 6), max(3, size // 4)
    steps = frames - 1
    if kind == "direction":
        direction = pick(list(DIRECTIONS))
        radius = int(rng.integers(low_r, high_r + 1))
        speed = int(rng.integers(2, 4))  # several pixels a frame: the motion crosses patches
        speed = min(speed, max(1, (size - 2 * radius - 2) // steps))
        (ux, uy), travel = DIRECTIONS[direction], speed * steps
        x = start_coordinate(rng, radius=radius, size=size, move=ux * travel)
        y = start_coordinate(rng, radius=radius, size=size, move=uy * travel)
        return Motion(pick(shapes), pick(colours), pick(backgrounds), direction, x, y, radius, speed)
    if kind == "order":
        first, second = rng.choice(len(SHAPES), size=2, replace=False)
        radius = int(rng.integers(max(2, size // 8), low_r + 1))  # two must fit side by side
        dx, dy = random_drift(rng)
        first_frame = int(rng.integers(0, 2))
        second_frame = int(rng.integers(first_frame + 2, frames))
        (x1, y1), (x2, y2) = apart_centres(rng, radius=radius, size=size, drift=(dx * steps, dy * steps))
        return Order(
            SHAPES[first], pick(colours), SHAPES[second], pick(colours), pick(backgrounds),
            bool(rng.integers(2)), first_frame, second_frame, x1, y1, x2, y2, dx, dy, radius,
        )
    if kind == "size":
        small, large = int(rng.integers(low_r - 1, low_r + 1)), int(rng.integers(high_r, high_r + 3))
        start, end = (small, large) if rng.integers(2) else (large, small)
        dx, dy = random_drift(rng)
        x = start_coordinate(rng, radius=large, size=size, move=dx * steps)
        y = start_coordinate(rng, radius=large, size=size, move=dy * steps)
        return Growth(pick(shapes), pick(colours), pick(backgrounds), x, y, dx, dy, start, end)
    raise ValueError(f"unknown clip kind {kind!r}; accepted: direction, order, size")


def render(clip: Clip, *, frames: int = 8, size: int = 32,
           background: tuple[int, int, int] | None = None) -> list[Image.Image]:
    """The clip as `frames` images of size x size pixels: in palette mode on the clip's own
    background, or in RGB on `background` (any colour, for clips outside the corpus's range)."""
    images = []
    for t in range(frames):
        if background is None:
            image = Image.new("P", (size, size), _INDEX[clip.background])
            image.putpalette([c for rgb in _PALETTE for c in rgb])
        else:
            image = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(image)
        for shape, colour, x, y, radius in _objects(clip, t=t, frames=frames):
            fill = _INDEX[colour] if background is None else COLOURS[colour]
            _draw(draw, shape=shape, colour=fill, x=x, y=y, radius=radius)
        images.append(image)
    for t in range(1, frames):
        if images[t].tobytes() == images[t - 1].tobytes():
            raise ValueError(f"{key(clip)}: frames {t - 1} and {t} are equal; a GIF would merge them")
    return images


def save_gif(path: str | os.PathLike, images: list[Image.Image]) -> None:
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=FRAME_MS, loop=0, optimize=False
    )


def load_gif(path: str | os.PathLike) -> np.ndarray:
    """uint8[F, H, W, 3]: every frame of an animated GIF, fully composed."""
    with Image.open(path) as image:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])


def to_array(images: list[Image.Image]) -> np.ndarray:
    """uint8[F, H, W, 3]"""
    return np.stack([np.asarray(image.convert("RGB")) for image in images])


def _objects(clip: Clip, *, t: int, frames: int) -> list[tuple[str, str, int, int, int]]:
    """(shape, colour, x, y, radius) of each object visible in frame t."""
    if isinstance(clip, Motion):
        ux, uy = DIRECTIONS[clip.direction]
        return [(clip.shape, clip.colour, clip.x + ux * clip.speed * t, clip.y + uy * clip.speed * t, clip.radius)]
    if isinstance(clip, Order):
        shown = []
        if t >= clip.first_frame:
            shown.append((clip.first, clip.first_colour, clip.x1 + clip.dx * t, clip.y1 + clip.dy * t, clip.radius))
        if t >= clip.second_frame:
            shown.append((clip.second, clip.second_colour, clip.x2 + clip.dx * t, clip.y2 + clip.dy * t, clip.radius))
        return shown
    radius = round(clip.radius_start + (clip.radius_end - clip.radius_start) * t / max(frames - 1, 1))
    return [(clip.shape, clip.colour, clip.x + clip.dx * t, clip.y + clip.dy * t, radius)]


def _draw(draw: ImageDraw.ImageDraw, *, shape: str, colour: int | tuple[int, int, int], x: int, y: int, radius: int) -> None:
    box = (x - radius, y - radius, x + radius, y + radius)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x, y - radius), (x + radius, y + radius), (x - radius, y + radius)], fill=colour)


def start_coordinate(rng: np.random.Generator, *, radius: int, size: int, move: int) -> int:
    """A start coordinate such that start and start + move both keep the shape inside the frame."""
    low, high = radius + max(0, -move), size - 1 - radius - max(0, move)
    if high < low:
        raise ValueError(f"a shape of radius {radius} moving {move} pixels does not fit in {size} pixels")
    return int(rng.integers(low, high + 1))


def random_drift(rng: np.random.Generator) -> tuple[int, int]:
    while True:
        dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
        if (dx, dy) != (0, 0):
            return dx, dy


def apart_centres(rng: np.random.Generator, *, radius: int, size: int, drift: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Two start centres whose shapes never overlap (they drift together)."""
    for _ in range(1000):
        a = (start_coordinate(rng, radius=radius, size=size, move=drift[0]), start_coordinate(rng, radius=radius, size=size, move=drift[1]))
        b = (start_coordinate(rng, radius=radius, size=size, move=drift[0]), start_coordinate(rng, radius=radius, size=size, move=drift[1]))
        if max(abs(a[0] - b[0]), abs(a[1] - b[1])) > 2 * radius + 1:
            return a, b
    raise ValueError(f"two shapes of radius {radius} do not fit apart in {size} pixels")
