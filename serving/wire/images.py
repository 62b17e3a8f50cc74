"""Small image helpers for clients: encoding and decoding images and class-map PNGs.

Colours, class-map PNGs and overlays come from `keras_fcn.visualize`, shared with `keras-fcn predict`.
"""

from __future__ import annotations

import io

import numpy as np


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
