"""What the values of a mask mean, in one place: the ignore label, PASCAL VOC's classes and colours.

Free of TensorFlow, so that drawing and serving clients can use it without loading a framework.
"""

from __future__ import annotations

import numpy as np

# Pixels labelled 255 ("void" in PASCAL VOC: object outlines, ambiguous regions) count in no metric and
# no loss, as in the reference's `score.py` and its SoftmaxWithLoss `ignore_label: 255`.
IGNORE_LABEL = 255

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: class k's colour interleaves the bits of k (far colours for near ids).

    Returns:
        `(num_colors, 3)` uint8 RGB; entry 0 is black, 1 `(128, 0, 0)`, 15 (person) `(192, 128, 128)`.
    """
    ids = np.arange(num_colors)
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for bit in range(8):
        for channel in range(3):
            palette[:, channel] |= (((ids >> (3 * bit + channel)) & 1) << (7 - bit)).astype(np.uint8)
    return palette
