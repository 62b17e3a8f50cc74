"""Evaluation at each image's full resolution: one confusion matrix over a source, the paper's metrics."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_fcn.data import Source
from keras_fcn.metrics import confusion_matrix, scores
from keras_fcn.predict import predict_fn
from keras_fcn.tiling import predict_tiled, probabilities_fn


def evaluate(
    model,
    source: Source,
    num_classes: int | None = None,
    limit: int | None = None,
    verbose: bool = False,
    tiling: dict | None = None,
) -> dict:
    """Runs `model` on every example of `source` at full size and scores the predictions.

    Args:
        model: a Keras FCN (input RGB 0..255, output logits).
        source: a `keras_fcn.data` source.
        num_classes: defaults to `source.num_classes`.
        limit: evaluate only the first `limit` examples.
        verbose: show a progress bar with the running mean IU.
        tiling: arguments of `keras_fcn.tiling.predict_tiled` (tiles, flips, scales) to predict each image
            with; None predicts each image whole.

    Returns:
        `keras_fcn.metrics.scores` of the summed confusion matrix, plus `confusion_matrix`,
        `num_images` and `class_names`.

    Raises:
        ValueError: if the model's number of outputs differs from `num_classes`.

    Example:
    >>> result = evaluate(model, keras_fcn.data.voc(root, "seg11valid"))  # doctest: +SKIP
    >>> print(keras_fcn.metrics.format_scores(result, result["class_names"]))  # doctest: +SKIP
    """
    num_classes = num_classes or source.num_classes
    outputs = model.output_shape[-1]
    if outputs is not None and outputs != num_classes:
        raise ValueError(
            f"The model scores {outputs} classes but the evaluation counts {num_classes} ({source.name}). "
            f"Received: num_classes={num_classes}"
        )
    predict = predict_fn(model)
    probabilities = probabilities_fn(model) if tiling else None  # traced once, for every image
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    dataset = source.dataset().prefetch(tf.data.AUTOTUNE)
    if limit is not None:
        dataset = dataset.take(limit)
    total = _length(source)
    if total is not None and limit is not None:
        total = min(total, limit)
    progress = keras.utils.Progbar(total, unit_name="image", stateful_metrics=["mean_iu"], verbose=int(verbose))
    count = 0
    for image, mask in dataset:
        if tiling:
            prediction = predict_tiled(probabilities, image.numpy(), **tiling)
        else:
            prediction = predict(tf.cast(image, tf.float32)[None])[0].numpy()
        hist += confusion_matrix(mask.numpy(), prediction, num_classes)
        count += 1
        if verbose:
            progress.update(count, values=[("mean_iu", scores(hist)["mean_iu"])])
    if verbose:
        progress.update(count, finalize=True)
    result = scores(hist)
    result.update(confusion_matrix=hist, num_images=count, class_names=tuple(source.class_names))
    return result


def _length(source) -> int | None:
    try:
        return len(source)
    except TypeError:  # a stream of unknown size (e.g. some TFDS splits)
        return None
