"""Pictures of results: the PASCAL VOC palette, palette PNGs of class ids, overlays with a legend, and
the training curves.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from keras_fcn.atomic import replacing, write_bytes
from keras_fcn.labels import IGNORE_LABEL, voc_palette


def class_map_png(class_ids: np.ndarray) -> bytes:
    """A class-id PNG whose pixel values are the ids: palette PNG (VOC colours) up to 256 classes,
    16-bit greyscale beyond, as VOC's `SegmentationClass` files are stored."""
    class_ids = np.asarray(class_ids)
    if class_ids.min(initial=0) < 0 or class_ids.max(initial=0) > 65535:
        raise ValueError(f"class ids must lie in 0..65535. Received: range=({class_ids.min()}, {class_ids.max()})")
    buffer = io.BytesIO()
    if class_ids.max(initial=0) < 256:
        height, width = class_ids.shape
        image = Image.frombytes("P", (width, height), class_ids.astype(np.uint8).tobytes())
        image.putpalette(voc_palette(256).ravel().tolist())
    else:
        image = Image.fromarray(class_ids.astype(np.uint16))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_class_png(mask: np.ndarray, path: str) -> None:
    """Writes class ids `(H, W)` as a PNG whose pixel values are the ids (see `class_map_png`), whole."""
    write_bytes(path, class_map_png(mask))


def save_image(image: Image.Image, path: str) -> None:
    """Writes a Pillow image (an overlay, a side-by-side) whole, in the format its extension names."""
    with replacing(path) as tmp:
        image.save(tmp)


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class ids `(H, W)` → RGB `(H, W, 3)` with the VOC palette (255 is drawn white; ids past 255 reuse
    the colours of `id % 256`)."""
    mask = np.asarray(mask, dtype=np.int64)
    colours = voc_palette()[mask % 256]
    colours[mask == IGNORE_LABEL] = (255, 255, 255)
    return colours


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.5,
    legend: bool = True,
) -> Image.Image:
    """The image with class colours blended in (background left clear) and a legend of the classes shown.

    Args:
        image: `(H, W, 3)` RGB, 0..255.
        mask: `(H, W)` class ids.
        class_names: names for the legend (default: the ids).
        alpha: opacity of the colours.
        legend: add a legend strip on the right listing the classes present.

    Returns:
        A PIL RGB image (wider than the input when there is a legend).
    """
    image = np.asarray(image, dtype=np.float32)[..., :3]
    mask = np.asarray(mask)
    if image.shape[:2] != mask.shape:
        raise ValueError(
            f"`image` and `mask` must have the same height and width. Received: image.shape={image.shape}, "
            f"mask.shape={mask.shape}"
        )
    colours = colorize(mask).astype(np.float32)
    painted = (mask > 0) & (mask != IGNORE_LABEL)
    blended = np.where(painted[..., None], (1 - alpha) * image + alpha * colours, image)
    picture = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
    if not legend:
        return picture
    present = [int(c) for c in np.unique(mask) if c != IGNORE_LABEL]
    return _with_legend(picture, present, class_names)


def _with_legend(picture: Image.Image, classes: list[int], class_names: Sequence[str] | None) -> Image.Image:
    font = ImageFont.load_default()
    names = [class_names[c] if class_names and c < len(class_names) else str(c) for c in classes]
    row = 14
    width = 24 + max((int(ImageDraw.Draw(picture).textlength(n, font=font)) for n in names), default=0) + 8
    height = max(picture.height, row * len(classes) + 8)
    canvas = Image.new("RGB", (picture.width + width, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    palette = voc_palette()
    for i, (label, name) in enumerate(zip(classes, names, strict=True)):
        top = 4 + i * row
        left = picture.width + 4
        colour = tuple(int(v) for v in palette[label % 256])
        draw.rectangle([left, top, left + 12, top + 10], fill=colour, outline=(0, 0, 0))
        draw.text((left + 18, top - 1), name, fill=(0, 0, 0), font=font)
    return canvas


def read_history(path: str) -> dict[str, list[float]]:
    """Reads Keras's `CSVLogger` file into `{column: [values]}`."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows if row[key] not in ("", None)] for key in (rows[0] if rows else {})}


def plot_history(history: dict | str, path: str) -> None:
    """Plots the training curves (loss; mean IU and pixel accuracy, training and validation) to `path`.

    Args:
        history: `{metric: [per-epoch values]}` (e.g. `TrainResult.history`) or a `history.csv` path.
        path: output image file (PNG).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(history, str):
        history = read_history(history)
    panels = [("loss", "loss"), ("mean IU", "mean_iu"), ("pixel accuracy", "pixel_accuracy")]
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for axis, (title, key) in zip(axes, panels, strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                epochs = np.arange(1, len(values) + 1)
                axis.plot(epochs, values, style, marker="o", markersize=3, label="validation" if prefix else "training")
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    figure.tight_layout()
    with replacing(path) as tmp:  # a notebook showing the file never reads half of it
        figure.savefig(tmp, dpi=100)
    plt.close(figure)
