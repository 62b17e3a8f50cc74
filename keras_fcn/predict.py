"""Prediction on image files: a palette PNG of class ids and an overlay with a legend per image."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from keras_fcn.data import read_image
from keras_fcn.evaluate import predict_fn
from keras_fcn.visualize import overlay, save_class_png


def predict_masks(model, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Class ids `(H, W)` uint8 for each RGB image `(H, W, 3)`, each at its own size."""
    predict = predict_fn(model)
    return [predict(tf.convert_to_tensor(np.asarray(image, np.float32)[None]))[0].numpy().astype(np.uint8)
            for image in images]  # fmt: skip


def predict_files(
    model,
    paths: Sequence[str],
    output_dir: str,
    class_names: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """For each image file writes `<stem>_classes.png` (palette PNG of class ids) and `<stem>_overlay.png`.

    Args:
        model: a Keras FCN.
        paths: image files.
        output_dir: folder for the outputs (created).
        class_names: names for the overlay legends.

    Returns:
        `[(classes_png, overlay_png), ...]` in the order of `paths`.

    Raises:
        DataError: an image that cannot be read (named).
    """
    os.makedirs(output_dir, exist_ok=True)
    predict = predict_fn(model)
    written = []
    for path in paths:
        image = read_image(path)
        mask = predict(tf.convert_to_tensor(image.astype(np.float32)[None]))[0].numpy().astype(np.uint8)
        stem = os.path.splitext(os.path.basename(path))[0]
        classes_png = os.path.join(output_dir, f"{stem}_classes.png")
        overlay_png = os.path.join(output_dir, f"{stem}_overlay.png")
        save_class_png(mask, classes_png)
        overlay(image, mask, class_names).save(overlay_png)
        written.append((classes_png, overlay_png))
    return written
