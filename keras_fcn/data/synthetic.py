"""A built-in synthetic dataset: seeded shapes of several classes on textured backgrounds.

Nothing is downloaded: example `i` of `synthetic(seed=s)` is drawn from `numpy.random.default_rng([s, i])`,
so it is the same on every machine and every call, and it is generated when it is read.

Each image has a textured background (a colour gradient, stripes at a random angle and pixel noise) and
one to `max_objects` shapes; later shapes occlude earlier ones, and the mask says which class is on top.
A class is told apart by its outline (disc, square, triangle, cross, ...) and by a colour family, both
jittered, so a network has to look at more than one pixel.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from keras_fcn.data.sources import IndexedSource, _check_num_classes

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "hexagon", "bar")
# A hue per shape, spread around the colour wheel (degrees).
_HUES = (0.0, 120.0, 225.0, 50.0, 290.0, 175.0, 25.0, 320.0)


class SyntheticShapes(IndexedSource):
    """Seeded shapes on textured backgrounds; class 0 is the background, class k the k-th shape.

    Args:
        num_examples: number of examples.
        image_size: `(height, width)` of every image.
        num_classes: background + up to 8 shape classes (`disc`, `square`, `triangle`, `cross`, `ring`,
            `diamond`, `hexagon`, `bar`), so 2..9.
        max_objects: shapes per image are drawn from 1..max_objects.
        size_range: object radius as a fraction of the shorter image side.
        seed: seed of the whole dataset; use different seeds for training and held-out sets.

    Example:
    >>> source = SyntheticShapes(num_examples=8, image_size=(64, 64), seed=1)
    >>> image, mask = source.load(0)
    >>> image.shape, mask.shape, mask.dtype
    ((64, 64, 3), (64, 64), dtype('uint8'))
    """

    def __init__(
        self,
        num_examples: int = 1000,
        image_size: tuple[int, int] = (128, 128),
        num_classes: int = 5,
        max_objects: int = 3,
        size_range: tuple[float, float] = (0.12, 0.3),
        seed: int = 0,
    ):
        if num_examples < 1:
            raise ValueError(f"`num_examples` must be at least 1. Received: num_examples={num_examples}")
        height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if min(height, width) < 16:
            raise ValueError(f"`image_size` must be at least 16 x 16. Received: image_size={image_size}")
        num_classes = _check_num_classes(num_classes)
        if not 2 <= num_classes <= len(SHAPES) + 1:
            raise ValueError(
                f"`num_classes` must be in [2, {len(SHAPES) + 1}] (background + shapes). "
                f"Received: num_classes={num_classes}"
            )
        low, high = size_range
        if not 0 < low <= high <= 0.5:
            raise ValueError(
                f"`size_range` must satisfy 0 < low <= high <= 0.5. Received: size_range={size_range}"
            )
        if max_objects < 1:
            raise ValueError(f"`max_objects` must be at least 1. Received: max_objects={max_objects}")
        self.num_examples = int(num_examples)
        self.image_size = (int(height), int(width))
        self.num_classes = num_classes
        self.class_names = ("background",) + SHAPES[: num_classes - 1]
        self.max_objects = int(max_objects)
        self.size_range = (float(low), float(high))
        self.seed = int(seed)
        self.name = f"synthetic(seed={self.seed})"

    def __len__(self) -> int:
        return self.num_examples

    def decoded_bytes(self) -> int:
        return self.num_examples * self.image_size[0] * self.image_size[1] * 4

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"Index out of range [0, {self.num_examples}). Received: index={index}")
        rng = np.random.default_rng([self.seed, index])
        height, width = self.image_size
        image = _background(rng, height, width)  # (H, W, 3) float32
        mask = np.zeros((height, width), dtype=np.uint8)
        side = min(height, width)
        for _ in range(rng.integers(1, self.max_objects + 1)):
            label = int(rng.integers(1, self.num_classes))
            radius = rng.uniform(*self.size_range) * side
            center = (
                rng.uniform(radius * 0.6, width - radius * 0.6),
                rng.uniform(radius * 0.6, height - radius * 0.6),
            )
            angle = rng.uniform(0, 2 * np.pi)
            region = _draw(SHAPES[label - 1], (height, width), center, radius, angle)
            image[region] = _fill(rng, label, int(region.sum()))
            mask[region] = label
        return np.clip(image, 0, 255).astype(np.uint8), mask


def synthetic(**kwargs) -> SyntheticShapes:
    """Shorthand for `SyntheticShapes(**kwargs)`."""
    return SyntheticShapes(**kwargs)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted colour gradient with stripes and noise: texture the network must learn to ignore."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = (rng.uniform(70, 180) + rng.uniform(-25, 25, size=3)).astype(np.float32)  # grayish, tinted
    tilt = rng.uniform(-0.4, 0.4, size=(2, 3)).astype(np.float32)
    image = base + yy[..., None] * tilt[0] + xx[..., None] * tilt[1]
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(6, 24)
    stripes = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)
    image += (rng.uniform(10, 35) * stripes)[..., None]
    image += rng.normal(0, 12, size=image.shape).astype(np.float32)
    return image


def _fill(rng: np.random.Generator, label: int, count: int) -> np.ndarray:
    """Pixel colours for an object of class `label`: its hue family, jittered, with some noise."""
    hue = (_HUES[label - 1] + rng.uniform(-20, 20)) % 360
    saturation = rng.uniform(0.55, 1.0)
    value = rng.uniform(150, 255)
    colour = _hsv_to_rgb(hue, saturation, value)
    return colour + rng.normal(0, 10, size=(count, 3)).astype(np.float32)


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> np.ndarray:
    c = value * saturation
    x = c * (1 - abs((hue / 60) % 2 - 1))
    sector = int(hue // 60) % 6
    rgb = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][sector]
    return np.asarray(rgb, dtype=np.float32) + (value - c)


def _polygon(center, radius, angle, corners, scale=1.0):
    angles = angle + np.arange(corners) * 2 * np.pi / corners
    return [(center[0] + scale * radius * np.cos(a), center[1] + scale * radius * np.sin(a)) for a in angles]


def _draw(shape: str, size: tuple[int, int], center, radius: float, angle: float) -> np.ndarray:
    """A boolean `(H, W)` region for one shape, rasterised with Pillow."""
    height, width = size
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = center
    if shape == "disc":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    elif shape == "ring":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
        inner = radius * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif shape == "square":
        draw.polygon(_polygon(center, radius, angle, 4), fill=1)
    elif shape == "diamond":
        points = _polygon(center, radius, angle, 4)
        squash = [(cx + (x - cx) * (1.0 if i % 2 == 0 else 0.5), cy + (y - cy) * (1.0 if i % 2 == 0 else 0.5))
                  for i, (x, y) in enumerate(points)]  # fmt: skip
        draw.polygon(squash, fill=1)
    elif shape == "triangle":
        draw.polygon(_polygon(center, radius, angle, 3), fill=1)
    elif shape == "hexagon":
        draw.polygon(_polygon(center, radius, angle, 6), fill=1)
    elif shape in ("cross", "bar"):
        arms = (0.0, np.pi / 2) if shape == "cross" else (0.0,)
        half_width = radius * (0.3 if shape == "cross" else 0.25)
        for arm in arms:
            a = angle + arm
            dx, dy = np.cos(a), np.sin(a)
            px, py = -dy * half_width, dx * half_width
            corners = [
                (cx + dx * radius + px, cy + dy * radius + py),
                (cx + dx * radius - px, cy + dy * radius - py),
                (cx - dx * radius - px, cy - dy * radius - py),
                (cx - dx * radius + px, cy - dy * radius + py),
            ]
            draw.polygon(corners, fill=1)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(f"Unknown shape. Received: shape={shape!r}")
    return np.asarray(canvas, dtype=bool)
