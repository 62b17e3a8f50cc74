"""Prediction on image files: a palette PNG of class ids and an overlay with a legend per image."""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_fcn.data import read_image
from keras_fcn.tiling import predict_tiled, probabilities_fn
from keras_fcn.visualize import overlay, save_class_png, save_image


def predict_fn(model) -> tf.types.experimental.GenericFunction:
    """A graph function `images (N, H, W, 3) float32 -> class ids (N, H, W) int32` traced once for any size."""

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)], reduce_retracing=True)
    def predict(images):
        return tf.argmax(model(images, training=False), axis=-1, output_type=tf.int32)

    return predict


def predict_masks(model, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Class ids `(H, W)` int32 for each RGB image `(H, W, 3)`, each at its own size."""
    predict = predict_fn(model)
    return [_class_ids(predict, image) for image in images]


def _class_ids(predict, image: np.ndarray) -> np.ndarray:
    """`(H, W)` int32 class ids of one image: not uint8, which would wrap the ids of a model with 256+ classes."""
    return np.asarray(predict(tf.convert_to_tensor(np.asarray(image, np.float32)[None]))[0], np.int32)


def predict_files(
    model,
    paths: Sequence[str],
    output_dir: str,
    class_names: Sequence[str] | None = None,
    verbose: bool = False,
    tiling: dict | None = None,
) -> list[tuple[str, str]]:
    """For each image file writes `<stem>_classes.png` (palette PNG of class ids) and `<stem>_overlay.png`.

    Args:
        model: a Keras FCN.
        paths: image files.
        output_dir: folder for the outputs (created).
        class_names: names for the overlay legends.
        verbose: show a progress bar over the files (over each image's tiles when tiling).
        tiling: arguments of `keras_fcn.tiling.predict_tiled` (`tile_size`, `overlap`, `blend`, ...) to
            predict each image in tiles; None predicts each image whole.

    Returns:
        `[(classes_png, overlay_png), ...]` in the order of `paths`.

    Raises:
        ValueError: two paths with the same stem (`a/x.jpg`, `b/x.png`), whose outputs would overwrite
            each other (both named).
        DataError: an image that cannot be read (named).
    """
    stems = {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise ValueError(
                f"{stems[stem]} and {path} would both be written to {stem}_classes.png and {stem}_overlay.png; "
                f"rename one or predict them into different folders. Received: paths={list(paths)}"
            )
        stems[stem] = path
    os.makedirs(output_dir, exist_ok=True)
    predict = predict_fn(model)
    probabilities = probabilities_fn(model) if tiling else None  # traced once, for every image
    written = []
    progress = keras.utils.Progbar(len(stems), unit_name="image", verbose=int(verbose and not tiling))
    for path, stem in zip(paths, stems, strict=True):
        image = read_image(path)
        if tiling:
            mask = predict_tiled(probabilities, image, verbose=verbose, **tiling)
        else:
            mask = _class_ids(predict, image)
        classes_png = os.path.join(output_dir, f"{stem}_classes.png")
        overlay_png = os.path.join(output_dir, f"{stem}_overlay.png")
        save_class_png(mask, classes_png)
        save_image(overlay(image, mask, class_names), overlay_png)
        written.append((classes_png, overlay_png))
        progress.add(1)
    return written
