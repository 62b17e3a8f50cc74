"""The paper's segmentation metrics and the per-pixel loss that ignores label 255.

Everything is derived from one confusion matrix, as the reference's `score.py` does:
`hist[i, j]` counts pixels of true class `i` predicted as class `j`; pixels whose label is not in
`[0, num_classes)` (the "void" label 255 of PASCAL VOC) are left out.

- pixel accuracy   = sum(diag) / sum(hist)
- mean accuracy    = nanmean(diag / rowsum)                    (classes absent from the truth left out)
- IU per class     = diag / (rowsum + colsum - diag)
- mean IU          = nanmean(IU)                               (classes absent from both left out)
- frequency-weighted IU = sum(freq * IU) over classes with freq = rowsum / sum(hist) > 0

`scores()` computes them from a numpy matrix; `SegmentationScores` streams all four from one matrix for
`compile()` (`PixelAccuracy`, `MeanAccuracy`, `MeanIU`, `FrequencyWeightedIU` one each);
`SegmentationLoss` is the softmax cross-entropy over pixels with 255 ignored and optional class weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from keras_fcn.labels import IGNORE_LABEL

__all__ = [
    "IGNORE_LABEL",
    "ConfusionMatrixMetric",
    "FrequencyWeightedIU",
    "MeanAccuracy",
    "MeanIU",
    "PixelAccuracy",
    "SegmentationLoss",
    "SegmentationScores",
    "confusion_matrix",
    "scores",
    "segmentation_metrics",
]


# ----------------------------------------------------------------------------------------------------------
# numpy side
# ----------------------------------------------------------------------------------------------------------
def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts pixels per (true class, predicted class), leaving out labels outside `[0, num_classes)`.

    The reference's `fast_hist`: a bincount of `num_classes * label + prediction`.

    Args:
        labels: integer array of true class ids, any shape; 255 (or any value out of range) is ignored.
        predictions: integer array of predicted class ids, same shape as `labels`.
        num_classes: number of classes `n`.

    Returns:
        An `(n, n)` int64 array; rows are true classes, columns predicted classes.

    Raises:
        ValueError: if the shapes differ, `num_classes < 1`, or a prediction is outside `[0, num_classes)`
            (a model with more outputs than classes; counting it as another class would skew the scores).

    Example:
    >>> confusion_matrix(np.array([0, 1, 255]), np.array([0, 0, 1]), 2).tolist()
    [[1, 0], [1, 0]]
    """
    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(
            "`labels` and `predictions` must have the same shape. "
            f"Received: labels.shape={labels.shape}, predictions.shape={predictions.shape}"
        )
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be at least 1. Received: num_classes={num_classes}")
    labels = labels.astype(np.int64).ravel()
    predictions = predictions.astype(np.int64).ravel()
    outside = (predictions < 0) | (predictions >= num_classes)
    if outside.any():
        raise ValueError(
            f"`predictions` must be class ids in [0, {num_classes}). "
            f"Received: predictions with values {np.unique(predictions[outside]).tolist()}"
        )
    keep = (labels >= 0) & (labels < num_classes)
    return np.bincount(num_classes * labels[keep] + predictions[keep], minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def scores(hist: np.ndarray) -> dict:
    """The four metrics of the paper (and IU per class) from a confusion matrix, as `score.py` does.

    Args:
        hist: `(n, n)` confusion matrix, rows true classes, columns predictions.

    Returns:
        A dict with floats `pixel_accuracy`, `mean_accuracy`, `mean_iu`, `fw_iu` and a float64 array
        `per_class_iu` (NaN for classes absent from both truth and prediction).

    Example:
    >>> s = scores(np.array([[3, 1], [0, 4]]))
    >>> round(s["mean_iu"], 4)
    0.775
    """
    hist = np.asarray(hist, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"`hist` must be a square matrix. Received: hist.shape={hist.shape}")
    diag = np.diag(hist)
    rowsum = hist.sum(axis=1)
    colsum = hist.sum(axis=0)
    total = hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        pixel_accuracy = diag.sum() / total if total else np.nan
        class_accuracy = diag / rowsum
        iu = diag / (rowsum + colsum - diag)
        freq = rowsum / total if total else np.zeros_like(rowsum)
    present_acc = ~np.isnan(class_accuracy)
    present_iu = ~np.isnan(iu)
    return {
        "pixel_accuracy": float(pixel_accuracy),
        "mean_accuracy": float(class_accuracy[present_acc].mean()) if present_acc.any() else float("nan"),
        "mean_iu": float(iu[present_iu].mean()) if present_iu.any() else float("nan"),
        "fw_iu": float((freq[freq > 0] * iu[freq > 0]).sum()),
        "per_class_iu": iu,
    }


def format_scores(result: dict, class_names: Sequence[str] | None = None) -> str:
    """The four metrics on one line each, then a per-class IU table (classes never seen shown as `-`)."""
    lines = [
        f"pixel accuracy  {result['pixel_accuracy']:.4f}",
        f"mean accuracy   {result['mean_accuracy']:.4f}",
        f"mean IU         {result['mean_iu']:.4f}",
        f"fw IU           {result['fw_iu']:.4f}",
        "",
        f"{'class':<4} {'name':<20} {'IU':>7}",
    ]
    for index, value in enumerate(result["per_class_iu"]):
        name = class_names[index] if class_names and index < len(class_names) else str(index)
        shown = "      -" if np.isnan(value) else f"{value:7.4f}"
        lines.append(f"{index:<4} {name:<20} {shown}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Keras side
# ----------------------------------------------------------------------------------------------------------
def _labels_and_predictions(y_true, y_pred):
    """Flattens `(N, H, W[, 1])` labels and `(N, H, W, C)` logits to two int32 vectors."""
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(y_pred.shape):  # (N, H, W, 1) masks
        y_true = ops.squeeze(y_true, axis=-1)
    labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    predictions = ops.reshape(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), (-1,))
    return labels, predictions


class ConfusionMatrixMetric(keras.metrics.Metric):
    """A streaming `(num_classes, num_classes)` confusion matrix; subclasses reduce it to one number.

    `update_state(y_true, y_pred)` takes integer masks `(N, H, W)` (or `(N, H, W, 1)`) where 255 means
    "ignore" and logits or probabilities `(N, H, W, num_classes)`; the prediction is their argmax.
    Under a `tf.distribute` strategy the matrix is summed over replicas.

    Args:
        num_classes: number of classes.
        name: metric name (the key in `fit` logs).
        dtype: dtype of the result.

    Example:
    >>> m = MeanIU(num_classes=2)
    >>> m.update_state(np.array([[[0, 1]]]), np.array([[[[2.0, 0.0], [0.0, 3.0]]]]))
    >>> float(m.result())
    1.0
    """

    def __init__(self, num_classes: int, name: str = "confusion_matrix", dtype=None):
        if not isinstance(num_classes, int | np.integer) or num_classes < 1:
            raise ValueError(f"`num_classes` must be a positive integer. Received: num_classes={num_classes}")
        super().__init__(name=name, dtype=dtype)
        self.num_classes = int(num_classes)
        # float64 counts stay exact far beyond int32's 2**31 pixels (~8,000 VOC images).
        self.hist = self.add_variable(
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype="float64",
            name="hist",
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        n = self.num_classes
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != n:
            # An argmax beyond n - 1 would land in another class's bin of the flattened matrix.
            raise ValueError(
                f"`y_pred` must hold one score per class, shape (N, H, W, {n}). Received: y_pred.shape={y_pred.shape}"
            )
        labels, predictions = _labels_and_predictions(y_true, y_pred)
        keep = ops.logical_and(labels >= 0, labels < n)
        index = ops.where(keep, n * labels + predictions, n * n)  # ignored pixels go to a spare bin
        # segment_sum with a fixed number of bins (unlike bincount) also compiles under XLA.
        counts = ops.segment_sum(ops.ones_like(index), index, num_segments=n * n + 1)[: n * n]
        self.hist.assign_add(ops.cast(ops.reshape(counts, (n, n)), "float64"))

    def reset_state(self):
        self.hist.assign(ops.zeros((self.num_classes, self.num_classes), dtype="float64"))

    def _parts(self):
        hist = ops.convert_to_tensor(self.hist)
        diag = ops.diagonal(hist)
        return hist, diag, ops.sum(hist, axis=1), ops.sum(hist, axis=0)

    def result(self):
        return ops.convert_to_tensor(self.hist)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def _nanmean(values):
    """Mean over the finite entries; 0 when there are none (a fresh metric reports 0, not NaN)."""
    finite = ops.logical_not(ops.isnan(values))
    count = ops.sum(ops.cast(finite, values.dtype))
    return ops.sum(ops.where(finite, values, 0.0)) / ops.maximum(count, 1.0)


def _divide(numerator, denominator):
    """numerator / denominator with NaN where the denominator is 0 (numpy's 0/0 in `score.py`)."""
    safe = ops.where(denominator > 0, denominator, 1.0)
    return ops.where(denominator > 0, numerator / safe, float("nan"))


# The four reductions of a confusion matrix `hist` (a float64 tensor), shared by the single-number metrics
# below and by `SegmentationScores`, which reports all four from one matrix.
def _pixel_accuracy(hist, diag, rowsum, colsum):
    return ops.sum(diag) / ops.maximum(ops.sum(hist), 1.0)


def _mean_accuracy(hist, diag, rowsum, colsum):
    return _nanmean(_divide(diag, rowsum))


def _mean_iu(hist, diag, rowsum, colsum):
    return _nanmean(_divide(diag, rowsum + colsum - diag))


def _fw_iu(hist, diag, rowsum, colsum):
    freq = rowsum / ops.maximum(ops.sum(hist), 1.0)
    iu = ops.where(freq > 0, _divide(diag, rowsum + colsum - diag), 0.0)
    return ops.sum(freq * iu)


_REDUCTIONS = {
    "pixel_accuracy": _pixel_accuracy,
    "mean_accuracy": _mean_accuracy,
    "mean_iu": _mean_iu,
    "fw_iu": _fw_iu,
}


@keras.saving.register_keras_serializable(package="keras_fcn")
class PixelAccuracy(ConfusionMatrixMetric):
    """Fraction of non-ignored pixels classified correctly: `sum(diag) / sum(hist)`."""

    def __init__(self, num_classes: int, name: str = "pixel_accuracy", dtype=None):
        super().__init__(num_classes, name=name, dtype=dtype)

    def result(self):
        return ops.cast(_pixel_accuracy(*self._parts()), self.dtype)


@keras.saving.register_keras_serializable(package="keras_fcn")
class MeanAccuracy(ConfusionMatrixMetric):
    """Per-class accuracy `diag / rowsum` averaged over the classes present in the truth."""

    def __init__(self, num_classes: int, name: str = "mean_accuracy", dtype=None):
        super().__init__(num_classes, name=name, dtype=dtype)

    def result(self):
        return ops.cast(_mean_accuracy(*self._parts()), self.dtype)


@keras.saving.register_keras_serializable(package="keras_fcn")
class MeanIU(ConfusionMatrixMetric):
    """Intersection over union per class, averaged over classes present in truth or prediction."""

    def __init__(self, num_classes: int, name: str = "mean_iu", dtype=None):
        super().__init__(num_classes, name=name, dtype=dtype)

    def result(self):
        return ops.cast(_mean_iu(*self._parts()), self.dtype)


@keras.saving.register_keras_serializable(package="keras_fcn")
class FrequencyWeightedIU(ConfusionMatrixMetric):
    """IU per class weighted by the class's share of the true pixels."""

    def __init__(self, num_classes: int, name: str = "fw_iu", dtype=None):
        super().__init__(num_classes, name=name, dtype=dtype)

    def result(self):
        return ops.cast(_fw_iu(*self._parts()), self.dtype)


@keras.saving.register_keras_serializable(package="keras_fcn")
class SegmentationScores(ConfusionMatrixMetric):
    """The paper's four metrics from one streaming confusion matrix: one argmax and one count per batch.

    `result()` is a dict `{"pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"}`; Keras's `fit` and
    `evaluate` log each key on its own (`val_mean_iu` …), as the four single-number metrics would, at a
    quarter of their cost.

    Example:
    >>> m = SegmentationScores(num_classes=2)
    >>> m.update_state(np.array([[[0, 1]]]), np.array([[[[2.0, 0.0], [0.0, 3.0]]]]))
    >>> float(m.result()["mean_iu"])
    1.0
    """

    def __init__(self, num_classes: int, name: str = "segmentation_scores", dtype=None):
        super().__init__(num_classes, name=name, dtype=dtype)

    def result(self):
        parts = self._parts()
        return {key: ops.cast(reduce(*parts), self.dtype) for key, reduce in _REDUCTIONS.items()}


def segmentation_metrics(num_classes: int) -> list[keras.metrics.Metric]:
    """The paper's four metrics, ready for `model.compile(metrics=...)`: one `SegmentationScores`."""
    return [SegmentationScores(num_classes)]


@keras.saving.register_keras_serializable(package="keras_fcn")
class SegmentationLoss(keras.losses.Loss):
    """Per-pixel softmax cross-entropy on logits; pixels labelled `ignore_label` contribute nothing.

    With `normalize=True` (default) the loss is the weighted mean over the non-ignored pixels of the
    batch (under tf.distribute: of each replica's share, then averaged over replicas): the value does not
    grow with image size, so ordinary learning rates (~1e-4) work. With
    `normalize=False` it is the reference's Caffe loss, the sum over pixels (per image), which needs the
    paper's tiny rates (1e-10 … 1e-14).

    Args:
        class_weights: optional sequence of `num_classes` weights (e.g. inverse frequencies) multiplying
            each pixel's loss by the weight of its true class.
        normalize: mean over valid pixels (True) or sum over pixels per image (False).
        ignore_label: label value to leave out.
        name: loss name.

    Example:
    >>> loss = SegmentationLoss()
    >>> y_true = np.array([[[0, 255]]])
    >>> y_pred = np.array([[[[0.0, 0.0], [5.0, -5.0]]]])
    >>> round(float(loss(y_true, y_pred)), 4)  # only the first pixel counts: log(2)
    0.6931
    """

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        normalize: bool = True,
        ignore_label: int = IGNORE_LABEL,
        name: str = "segmentation_loss",
        reduction: str = "sum_over_batch_size",
        dtype=None,
    ):
        if class_weights is not None:
            class_weights = [float(w) for w in class_weights]
            if not class_weights or min(class_weights) < 0:
                raise ValueError(
                    "`class_weights` must be a non-empty sequence of non-negative numbers. "
                    f"Received: class_weights={class_weights}"
                )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.class_weights = class_weights
        self.normalize = bool(normalize)
        self.ignore_label = int(ignore_label)

    def call(self, y_true, y_pred):
        y_pred = ops.cast(y_pred, "float32")  # logits (N, H, W, C), float32 even under mixed precision
        y_true = ops.convert_to_tensor(y_true)
        if len(y_true.shape) == len(y_pred.shape):
            y_true = ops.squeeze(y_true, axis=-1)
        y_true = ops.cast(y_true, "int32")  # (N, H, W)
        valid = ops.not_equal(y_true, self.ignore_label)
        labels = ops.where(valid, y_true, 0)  # any in-range id; its loss is masked out below
        pixel_loss = ops.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)  # (N, H, W)
        weight = ops.cast(valid, "float32")
        if self.class_weights is not None:
            num_classes = y_pred.shape[-1]
            if num_classes is not None and len(self.class_weights) != num_classes:
                # ops.take would clip or fail on a short list, and silently ignore the tail of a long one.
                raise ValueError(
                    f"`class_weights` must have one weight per class ({num_classes}). "
                    f"Received: class_weights={self.class_weights}"
                )
            weight = weight * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), labels)
        # where(): an ignored pixel's loss can be inf/NaN for garbage logits; 0 * NaN would leak through.
        per_image = ops.sum(ops.where(weight > 0, pixel_loss * weight, 0.0), axis=(1, 2))  # (N,)
        if self.normalize:
            # Keras averages these N values, so scaling by N / total weight makes the result the weighted
            # mean over the batch's valid pixels. Under tf.distribute each replica does this on its own
            # share and the replicas' results are averaged: the mean of per-replica means, which equals
            # the mean over the global batch's valid pixels only when every replica holds as many.
            batch = ops.cast(ops.shape(y_true)[0], "float32")
            per_image = per_image * (batch / ops.maximum(ops.sum(weight), 1e-6))
        return per_image

    def get_config(self):
        return {
            **super().get_config(),
            "class_weights": self.class_weights,
            "normalize": self.normalize,
            "ignore_label": self.ignore_label,
        }
