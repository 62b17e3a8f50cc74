"""Class weights for imbalanced data: median-frequency balancing (Eigen & Fergus; SegNet) from a source.

`freq_c` is the number of pixels of class c divided by the number of labelled pixels of the images in
which c appears; `weight_c = median(freq) / freq_c`, the median taken over the classes that appear. Pixels
labelled 255 are left out of every count. The weights go to `SegmentationLoss(class_weights=...)` or
`train(class_weights=...)`; `train(class_weights="median-frequency")` computes them from its training data.
(Keras's own `fit(class_weight=...)` refuses 3-D targets, hence a weighted loss.)
"""

from __future__ import annotations

import keras
import numpy as np

from keras_fcn.metrics import IGNORE_LABEL


def class_pixel_counts(
    source, num_classes: int | None = None, limit: int | None = None, verbose: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Counts, for each class, its pixels and the labelled pixels of the images where it appears.

    Args:
        source: a `keras_fcn.data` source (its masks are read; 255 is ignored).
        num_classes: defaults to `source.num_classes`.
        limit: read only the first `limit` examples.
        verbose: show a progress bar over the images.

    Returns:
        `(class_pixels, image_pixels)`, two int64 arrays of `num_classes` counts.

    Raises:
        ValueError: a mask value other than 255 outside [0, num_classes) (the value is named).
    """
    num_classes = int(num_classes or source.num_classes)
    class_pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    dataset = source.dataset()
    if limit is not None:
        dataset = dataset.take(limit)
    try:
        total = len(source) if limit is None else min(len(source), limit)
    except TypeError:  # a stream of unknown size
        total = None
    progress = keras.utils.Progbar(total, unit_name="image", verbose=int(verbose))
    for count, (_, mask) in enumerate(dataset, start=1):
        labels = np.asarray(mask).reshape(-1)
        labels = labels[labels != IGNORE_LABEL]
        counts = np.bincount(labels, minlength=num_classes)
        if counts.size > num_classes:
            raise ValueError(
                f"A mask of {source.name} holds class ids beyond {num_classes - 1} (other than {IGNORE_LABEL}). "
                f"Received: values={sorted(set(np.unique(labels[labels >= num_classes]).tolist()))}"
            )
        class_pixels += counts
        image_pixels[counts > 0] += labels.size
        if verbose:
            progress.update(count)
    return class_pixels, image_pixels


def median_frequency_weights(
    source, num_classes: int | None = None, limit: int | None = None, verbose: bool = False
) -> np.ndarray:
    """Median-frequency class weights from the masks of `source`.

    Args:
        source: a `keras_fcn.data` source.
        num_classes: defaults to `source.num_classes`.
        limit: read only the first `limit` examples.
        verbose: show a progress bar over the images.

    Returns:
        float64 `(num_classes,)`: `median(freq) / freq_c` for the classes that appear, 0 for those that
        never do (no pixel carries them, so their weight never counts).

    Raises:
        ValueError: no labelled pixel at all, or a mask value out of range.

    Example:
    >>> weights = median_frequency_weights(keras_fcn.data.voc(root, "train"))  # doctest: +SKIP
    >>> train(..., class_weights=tuple(weights))  # doctest: +SKIP
    """
    class_pixels, image_pixels = class_pixel_counts(source, num_classes, limit, verbose)
    present = class_pixels > 0
    if not present.any():
        raise ValueError(
            f"The masks of {source.name} hold no labelled pixel (all {IGNORE_LABEL}?): no class weights can be "
            f"computed. Received: source={source.name!r}"
        )
    freq = np.zeros(class_pixels.shape, np.float64)
    freq[present] = class_pixels[present] / image_pixels[present]
    weights = np.zeros_like(freq)
    weights[present] = np.median(freq[present]) / freq[present]
    return weights
