"""The callbacks of a training run: epoch checkpoints kept to the newest K, the best model by mean IU, and a
warning when a whole epoch predicted one class."""

from __future__ import annotations

import math
import os
import re
import warnings

import keras

from keras_fcn.atomic import replacing


def make_callbacks(
    output_dir: str, monitor: str, resuming: bool, best_so_far: float | None, keep: int | None, confusion: tuple
) -> list:
    """The callbacks of a run writing into `output_dir`, best model chosen by `monitor`."""
    # Order matters for a kill between two of them: a backup of epoch e implies its weights checkpoint,
    # and best.keras never holds an epoch missing from history.csv (whose best value a resumed run
    # must beat, see `best_logged`).
    checkpoints = []
    if keep != 0:
        checkpoints = [
            keras.callbacks.ModelCheckpoint(
                os.path.join(output_dir, "checkpoints", "epoch_{epoch:03d}.weights.h5"), save_weights_only=True
            ),
            KeepLastCheckpoints(os.path.join(output_dir, "checkpoints"), keep),
        ]
    return [
        *checkpoints,
        # double_checkpoint: the previous backup is kept, so a kill while writing the new one loses nothing.
        keras.callbacks.BackupAndRestore(os.path.join(output_dir, "backup"), double_checkpoint=True),
        keras.callbacks.CSVLogger(os.path.join(output_dir, "history.csv"), append=resuming),
        BestModelCheckpoint(os.path.join(output_dir, "best.keras"), monitor, initial_value_threshold=best_so_far),
        keras.callbacks.TensorBoard(os.path.join(output_dir, "logs")),
        WarnOnSingleClass(*confusion),
    ]


_CHECKPOINT_NAME = re.compile(r"epoch_(\d+)\.weights\.h5$")


class KeepLastCheckpoints(keras.callbacks.Callback):
    """Deletes all but the newest `keep` epoch checkpoints (`epoch_NNN.weights.h5`) after each epoch.

    Full FCN-8s weights are ~540 MB, so keeping every epoch of a 50-epoch run would take ~27 GB.
    Place it after the `ModelCheckpoint` that writes them.

    Args:
        directory: the checkpoint folder.
        keep: how many of the newest to keep; None keeps all.
    """

    def __init__(self, directory: str, keep: int | None):
        super().__init__()
        self.directory, self.keep = directory, keep

    def on_epoch_end(self, epoch, logs=None):
        if self.keep is None or not os.path.isdir(self.directory):
            return
        found = sorted(
            (int(match.group(1)), name)
            for name in os.listdir(self.directory)
            if (match := _CHECKPOINT_NAME.match(name))
        )
        for _, name in found[: max(len(found) - self.keep, 0)]:
            os.remove(os.path.join(self.directory, name))


class SingleClassWarning(UserWarning):
    """Issued when a model predicted one class for every labelled pixel of a whole training epoch."""


class WarnOnSingleClass(keras.callbacks.Callback):
    """Warns (`SingleClassWarning`) when the model predicted one class for every pixel of a training epoch.

    It reads the training confusion matrix of a `keras_fcn.metrics` confusion-matrix metric at the end of
    each training epoch (before validation resets it). A model stuck on one class is the first complaint
    of every FCN port: a randomly initialised backbone, a learning rate too low (or too high) for the loss,
    or masks that are all 255 (ignored) or all one class.

    Args:
        metric: a compiled `keras_fcn.metrics.ConfusionMatrixMetric` (e.g. the run's `SegmentationScores`).
        class_names: names for the message; None: class ids.
    """

    def __init__(self, metric, class_names=None):
        super().__init__()
        self.metric, self.class_names = metric, class_names
        self._pending = False

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._pending = epoch, True

    def on_test_begin(self, logs=None):
        if self._pending:  # validation within fit: the metric still holds the training epoch
            self._check()

    def on_epoch_end(self, epoch, logs=None):
        if self._pending:
            self._check()

    def _check(self):
        self._pending = False
        predicted = keras.ops.convert_to_numpy(self.metric.hist).sum(axis=0)  # (C,) pixels per predicted class
        classes = [int(c) for c in predicted.nonzero()[0]]
        if len(classes) > 1:
            return
        epoch = self._epoch + 1
        if not classes:
            what = "no labelled pixel in this epoch: are all masks 255 (ignored)?"
        else:
            name = self.class_names[classes[0]] if self.class_names else None
            what = f"the model predicted a single class, {classes[0]}" + (f" ({name})" if name else "") + (
                ", for every pixel of this epoch"
            )
        warnings.warn(
            f"Epoch {epoch}: {what}. Usual causes: a randomly initialised backbone (use "
            "backbone_weights='imagenet' or a converted VGG16 file, with VGG16's widths), a learning rate too low "
            "or too high for the loss (normalize_loss=False needs the reference's ~1e-10), or masks that are all "
            "255 or all one class.",
            SingleClassWarning,
            stacklevel=2,
        )


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the model whenever `monitor` (higher is better) beats the best value so far, atomically.

    Keras's `ModelCheckpoint` writes the file in place, so a kill mid-save leaves a truncated model; this
    one writes a temporary file beside it and renames it over the old one.

    Args:
        path: the `.keras` file.
        monitor: the logged metric, e.g. `"val_mean_iu"`.
        initial_value_threshold: the value to beat first (a resumed run's best so far); None: any value.
    """

    def __init__(self, path: str, monitor: str, initial_value_threshold: float | None = None):
        super().__init__()
        self.path, self.monitor, self.best = path, monitor, initial_value_threshold

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None or math.isnan(float(current)):
            return
        if self.best is not None and not float(current) > self.best:
            return
        self.best = float(current)
        with replacing(self.path) as tmp:
            self.model.save(tmp)
