"""Small image helpers for clients: PNG bytes, the VOC colour palette, class-map overlays."""

from __future__ import annotations

import io

import numpy as np


def palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map, `(num_colors, 3)` uint8: class 0 black, 1 maroon, 2 green, ...

    Each class id's bits are spread over the high bits of R, G and B, as in the VOC devkit.
    """
    colors = np.zeros((num_colors, 3), np.uint8)
    for index in range(num_colors):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        colors[index] = (r, g, b)
    return colors


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an `(H, W, 3)` or `(H, W)` uint8 image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_image(data: bytes) -> np.ndarray:
    """`(H, W, 3)` uint8 RGB pixels of encoded image bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_class_map(data: bytes) -> np.ndarray:
    """`(H, W)` int32 class ids from a class-map PNG (8 or 16 bits a pixel)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image).astype(np.int32)


def class_map_png(class_ids: np.ndarray) -> bytes:
    """A class-id PNG whose pixel values are the ids: palette PNG (VOC colours) up to 256 classes,
    16-bit greyscale beyond, as VOC's `SegmentationClass` files are stored."""
    from PIL import Image

    class_ids = np.asarray(class_ids)
    if class_ids.min(initial=0) < 0 or class_ids.max(initial=0) > 65535:
        raise ValueError(f"class ids must lie in 0..65535. Received: range=({class_ids.min()}, {class_ids.max()})")
    buffer = io.BytesIO()
    if class_ids.max(initial=0) < 256:
        height, width = class_ids.shape
        image = Image.frombytes("P", (width, height), class_ids.astype(np.uint8).tobytes())
        image.putpalette(palette(256).ravel().tolist())
    else:
        image = Image.fromarray(class_ids.astype(np.uint16))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def overlay(image: np.ndarray, class_ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """`image` blended with the palette colours of `class_ids` (background, id 0, left as is)."""
    image = np.asarray(image, np.float32)
    colors = palette(int(class_ids.max(initial=0)) + 1)[class_ids].astype(np.float32)
    mixed = np.where((class_ids > 0)[..., None], (1 - alpha) * image + alpha * colors, image)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
