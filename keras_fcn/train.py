"""Training: one config dataclass → data → model → `fit` with checkpoints, resumable after a kill.

`train(...)` is the notebook entry point, `keras-fcn train` the shell one; both fill a `TrainConfig`
(saved as `config.json` beside the outputs). The output folder holds:

    config.json                      the full config of the run
    checkpoints/epoch_NNN.weights.h5 weights after each epoch; the newest `keep_checkpoints` (3) are kept
    backup/                          `BackupAndRestore` state: a killed run restarted with the same
                                     output folder continues from its last finished epoch
                                     (removed when the run finishes)
    classes.txt                      class names, one per line (read by `keras-fcn predict`)
    best.keras                       the model with the best validation mean IU (training mean IU
                                     without validation data)
    final.keras                      the model at the end of training
    history.csv, logs/               CSV and TensorBoard logs

A folder that holds a finished run (or files of anything else) is refused: a new run there would
overwrite its history and models. `overwrite=True` (`--overwrite`) deletes the old run's outputs and
starts afresh; `init_from=".../final.keras"` in a new folder continues from a finished model.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from keras_fcn import keras_internals, metrics
from keras_fcn.config import TrainConfig
from keras_fcn.data import data_errors, from_spec, make_dataset, without
from keras_fcn.optimizers import CaffeSGD
from keras_fcn.vgg16 import VGG16_FC_UNITS, VGG16_FILTERS


@dataclass
class TrainResult:
    """What `train` returns: the trained model, the per-epoch logs and where the files went."""

    model: keras.Model
    history: dict
    output_dir: str
    config: TrainConfig
    initial_epoch: int = 0  # > 0 when the run resumed from a backup


def make_strategy(config: TrainConfig) -> tf.distribute.Strategy:
    """The tf.distribute strategy named by `config.strategy` (create it before any other TF work)."""
    if config.strategy == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(config.devices) if config.devices else None)
    if config.strategy == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("strategy='multi-worker' reads the cluster from TF_CONFIG. Received: TF_CONFIG unset")
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _is_chief(strategy: tf.distribute.Strategy) -> tuple[bool, str]:
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True, ""
    task_id = resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return chief, f"{task_type}_{task_id}"


def _learning_rate(config: TrainConfig, steps_per_epoch: int):
    if config.lr_schedule == "poly":
        return keras.optimizers.schedules.PolynomialDecay(
            config.learning_rate, decay_steps=config.epochs * steps_per_epoch, end_learning_rate=0.0,
            power=config.poly_power,
        )  # fmt: skip
    if config.lr_schedule == "step":
        return keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate, decay_steps=config.step_epochs * steps_per_epoch, decay_rate=config.step_gamma,
            staircase=True,
        )  # fmt: skip
    return config.learning_rate


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD with momentum (the reference) or Adam, with the config's schedule and weight decay.

    `weight_decay_mode="caffe"` gives `CaffeSGD` (the reference's solver: L2 decay inside the momentum,
    biases at twice the rate without decay); "decoupled" gives Keras's optimizers with their decoupled
    `weight_decay`, biases excluded.
    """
    rate = _learning_rate(config, steps_per_epoch)
    if config.weight_decay_mode == "caffe":
        return CaffeSGD(rate, momentum=config.momentum, l2_weight_decay=config.weight_decay)
    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(rate, momentum=config.momentum, weight_decay=decay)
    else:
        optimizer = keras.optimizers.Adam(rate, weight_decay=decay)
    if decay:
        optimizer.exclude_from_weight_decay(var_names=["bias"])  # as the reference: no decay on biases
    return optimizer


def build_model(config: TrainConfig, num_classes: int, backbone_weights: str | None = None) -> keras.Model:
    """The FCN of `config.variant`, optionally initialised from `config.init_from` (copied by layer name).

    `backbone_weights` (a file) replaces `config.resolved_backbone_weights()` when given.
    """
    from keras_fcn.models import build_fcn

    kwargs = {
        "backbone_weights": backbone_weights or config.resolved_backbone_weights(),
        "geometry": config.geometry,
        "dropout": config.dropout,
        "learn_final_upsampling": config.learn_final_upsampling,
    }
    if config.backbone_filters is not None:
        kwargs["backbone_filters"] = tuple(config.backbone_filters)
    if config.fc_units is not None:
        kwargs["fc_units"] = config.fc_units
    if config.init_from:
        kwargs["init_from"] = keras.saving.load_model(config.init_from, compile=False)
    model = build_fcn(config.variant, num_classes, **kwargs)
    if config.fixed_upsampling:
        for layer in model.layers:
            if isinstance(layer, keras.layers.Conv2DTranspose):
                layer.trainable = False  # the reference's Deconvolution layers: lr_mult=0
    return model


def describe_backbone(config: TrainConfig) -> str:
    """One line on the backbone: VGG16 or a narrower net of its topology, and where its weights come from."""
    narrow = config.backbone_filters is not None or config.fc_units is not None
    shape = (
        f"a narrow VGG16-topology backbone (filters {tuple(config.backbone_filters or VGG16_FILTERS)}, "
        f"fc {config.fc_units or VGG16_FC_UNITS})"
        if narrow
        else "VGG16"
    )
    resolved = config.resolved_backbone_weights()
    weights = resolved or "random initialisation"
    if config.init_from:
        weights = f"{resolved or 'none'}, then every shared layer from {config.init_from}"
    elif config.backbone_weights == "auto":
        weights += " (auto" + (": there are no ImageNet weights for narrow widths)" if narrow else ")")
    return f"{config.variant} on {shape}, backbone weights: {weights}"


def _callbacks(
    output_dir: str, monitor: str, resuming: bool, best_so_far: float | None, keep: int | None, confusion: tuple
) -> list:
    # Order matters for a kill between two of them: a backup of epoch e implies its weights checkpoint,
    # and best.keras never holds an epoch missing from history.csv (whose best value a resumed run
    # must beat, see `_best_logged`).
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
        metric: a compiled `keras_fcn.metrics.ConfusionMatrixMetric` (e.g. the `MeanIU` of the run).
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
        fd, tmp = tempfile.mkstemp(prefix=".best-", suffix=".keras", dir=os.path.dirname(os.path.abspath(self.path)))
        os.close(fd)
        try:
            self.model.save(tmp)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def disk_use(model: keras.Model, config: TrainConfig, output_dir: str) -> str:
    """One line on the disk a run takes: the size of one epoch checkpoint and of all the run keeps.

    The model's weights are written once to measure them; a checkpoint also holds the optimizer's slots
    (SGD's momentum, Adam's two moments), added from the trainable weights' size when the optimizer is
    not built yet. The total counts `keep_checkpoints` checkpoints (every epoch for None), best.keras and
    final.keras, and the resume backup (two copies), each about one checkpoint.
    """
    fd, probe = tempfile.mkstemp(prefix=".size-", suffix=".weights.h5", dir=output_dir)
    os.close(fd)
    try:
        model.save_weights(probe)
        checkpoint = os.path.getsize(probe)
    finally:
        os.remove(probe)
    if not model.optimizer.built:
        trainable = sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.trainable_weights)
        checkpoint += (2 if config.optimizer == "adam" else (1 if config.momentum else 0)) * trainable
    kept = config.epochs if config.keep_checkpoints is None else min(config.keep_checkpoints, config.epochs)
    total = (kept + 4) * checkpoint
    free = shutil.disk_usage(output_dir).free
    line = (
        f"one epoch checkpoint (weights and optimizer state) is ~{_megabytes(checkpoint)}; {kept} kept, with "
        f"best.keras, final.keras and the resume backup (two copies) the run takes up to ~{_megabytes(total)}; "
        f"{_megabytes(free)} free on that disk"
    )
    if total > free:
        line += " -- NOT ENOUGH: lower --keep-checkpoints or free some space"
    return line


def _megabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _best_logged(output_dir: str, monitor: str, before_epoch: int) -> float | None:
    """The best (highest) `monitor` value history.csv holds for epochs before `before_epoch`, or None."""
    path = os.path.join(output_dir, "history.csv")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", newline="") as handle:
        values = [
            float(row[monitor])
            for row in csv.DictReader(handle)
            if row.get(monitor) not in (None, "") and int(row["epoch"]) < before_epoch
        ]
    values = [value for value in values if not math.isnan(value)]
    return max(values) if values else None


# Written before the first epoch ends: a folder holding only these has no run worth keeping
# (`workers/` holds the other workers' scratch copies in a multi-worker run).
_STARTUP_ENTRIES = {"config.json", "classes.txt", "logs", "workers"}
# What a run writes; `overwrite=True` deletes these (and nothing else).
_RUN_OUTPUTS = ("backup", "checkpoints", "logs", "best.keras", "final.keras", "history.csv", "classes.txt")


def _prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuses a folder holding a finished or foreign run unless `overwrite`; one with a backup resumes."""
    if not os.path.isdir(output_dir):
        return
    if overwrite:
        for name in _RUN_OUTPUTS:
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        return
    if os.path.isdir(os.path.join(output_dir, "backup")):
        return  # a killed run: BackupAndRestore continues it
    held = sorted(
        name
        for name in os.listdir(output_dir)
        if name not in _STARTUP_ENTRIES and not (name == "history.csv" and _only_header(os.path.join(output_dir, name)))
    )
    if held:
        raise ValueError(
            f"The output folder {output_dir} holds a finished run or other files ({', '.join(held[:6])}) and no "
            "backup to resume from; training there would overwrite them. Give a new `output_dir`, "
            "`overwrite=True` (--overwrite) to delete the old run's outputs and start afresh, or continue a "
            f"finished run in a new folder with `init_from` its final.keras. Received: output_dir={output_dir!r}"
        )


def _only_header(path: str) -> bool:
    with open(path, encoding="utf-8") as handle:
        return len(handle.read().splitlines()) <= 1


def _length(source) -> int | None:
    try:
        return len(source)
    except TypeError:
        return None


def _resume_epoch(output_dir: str) -> int:
    path = os.path.join(output_dir, "backup", "training_metadata.json")
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as handle:
        return int(json.load(handle).get("epoch", 0))


def train(config: TrainConfig | None = None, **overrides) -> TrainResult:
    """Trains an FCN as described by `config` (or `TrainConfig(**overrides)`).

    Args:
        config: a `TrainConfig`; keyword arguments override its fields.
        **overrides: fields of `TrainConfig`.

    Returns:
        A `TrainResult` with the trained model and the history (one list per logged metric).

    Raises:
        ValueError: bad settings. `DataError`: bad data (the message names the file).

    Example:
    >>> result = train(train_data="synthetic:64", val_data="synthetic:8", epochs=2,
    ...                batch_size=4, crop_size=64, backbone_filters=(8, 16, 32, 64, 64), fc_units=64,
    ...                optimizer="adam", learning_rate=1e-3, output_dir="runs/try")  # doctest: +SKIP
    >>> result.history["val_mean_iu"]  # doctest: +SKIP
    """
    config = dataclasses.replace(config, **overrides) if config else TrainConfig(**overrides)
    strategy = make_strategy(config)  # first: MultiWorkerMirroredStrategy must precede other TF ops
    chief, worker_name = _is_chief(strategy)
    # Non-chief workers write their own scratch copy so that files never collide.
    output_dir = config.output_dir if chief else os.path.join(config.output_dir, "workers", worker_name)
    _prepare_output_dir(output_dir, config.overwrite)
    os.makedirs(output_dir, exist_ok=True)
    # Saved with overwrite=False: rerunning from this config.json must not delete this run by itself.
    dataclasses.replace(config, overwrite=False).save(os.path.join(output_dir, "config.json"))
    keras.utils.set_random_seed(config.seed)

    train_source = from_spec(
        config.train_data, config.train_split, num_classes=config.num_classes, seed=config.seed, **config.data_options
    )
    if config.train_exclude:
        train_source = without(train_source, config.train_exclude)
    num_classes = config.num_classes or train_source.num_classes
    class_weights = config.class_weights
    if class_weights == "median-frequency":
        from keras_fcn.class_weights import median_frequency_weights

        if config.verbose:
            print(f"keras_fcn: median-frequency class weights from the masks of {train_source.name}")
        class_weights = tuple(
            float(w) for w in median_frequency_weights(train_source, num_classes, verbose=bool(config.verbose))
        )
        if config.verbose:
            print("keras_fcn: class weights " + ", ".join(f"{w:.3g}" for w in class_weights))
    if class_weights is not None and len(class_weights) != num_classes:
        raise ValueError(
            f"`class_weights` must have one weight per class ({num_classes}). "
            f"Received: class_weights={class_weights}"
        )
    with open(os.path.join(output_dir, "classes.txt"), "w", encoding="utf-8") as handle:
        handle.write("".join(f"{name}\n" for name in train_source.class_names[:num_classes]))
    val_source = None
    if config.val_data:
        val_source = from_spec(
            config.val_data, config.val_split, num_classes=num_classes, seed=config.seed, **config.data_options
        )
    weights_file = None
    if config.resolved_backbone_weights() == "imagenet":
        from keras_fcn.weights import imagenet_weights_path

        # After the data checks (cheap, and a wrong path should not wait for a 528 MB download), before
        # anything is built: offline, the run stops here with advice.
        weights_file = imagenet_weights_path()
    steps_per_epoch = config.steps_per_epoch
    if not steps_per_epoch:
        if _length(train_source) is None:
            raise ValueError(
                f"The size of {train_source.name} is not known: give `steps_per_epoch`. Received: steps_per_epoch=None"
            )
        steps_per_epoch = math.ceil(_length(train_source) / config.batch_size)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"`batch_size` must be a multiple of the {replicas} replicas. Received: batch_size={config.batch_size}"
        )
    train_ds = make_dataset(
        train_source, batch_size=config.batch_size, crop_size=config.crop_size, scale_range=config.scale_range,
        flip=config.flip, repeat=True, seed=config.seed,
    )  # fmt: skip
    val_ds = None
    if val_source is not None:
        # Full images; one per replica (padded to a common size with ignored pixels when there are several).
        val_ds = make_dataset(val_source, batch_size=replicas, augment_data=False, shuffle=False)

    previous_policy = keras.mixed_precision.global_policy()
    if config.mixed_precision:
        gpu = bool(tf.config.list_logical_devices("GPU"))
        keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "mixed_bfloat16")
    try:
        with strategy.scope():
            model = build_model(config, num_classes, backbone_weights=weights_file)
            scores = metrics.segmentation_metrics(num_classes)
            model.compile(
                optimizer=make_optimizer(config, steps_per_epoch),
                loss=metrics.SegmentationLoss(class_weights, normalize=config.normalize_loss),
                metrics=scores,
                jit_compile=config.jit_compile,
            )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        keras_internals.multi_worker_workarounds(model, strategy, train_ds.element_spec)
    initial_epoch = _resume_epoch(output_dir)
    monitor = "val_mean_iu" if val_ds is not None else "mean_iu"
    if config.verbose:
        print(f"keras_fcn: {describe_backbone(config)}")
        print(
            f"keras_fcn: {_length(train_source) or 'unknown number of'} training examples from {train_source.name}"
            + (
                f", {_length(val_source) or 'unknown number of'} validation examples from {val_source.name}"
                if val_source
                else ""
            )
            + f"; {replicas} replica(s); output in {output_dir}"
        )
        if initial_epoch:
            print(f"keras_fcn: resuming from the backup after epoch {initial_epoch}")
        print(f"keras_fcn: {disk_use(model, config, output_dir)}")
    # On resume the best model must beat the best epoch before the kill, not merely the first one after it.
    best_so_far = _best_logged(output_dir, monitor, initial_epoch) if initial_epoch else None
    with data_errors():
        history = model.fit(
            train_ds,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=val_ds,
            validation_steps=config.validation_steps,
            shuffle=False,  # the dataset shuffles itself
            callbacks=_callbacks(
                output_dir, monitor, resuming=initial_epoch > 0, best_so_far=best_so_far, keep=config.keep_checkpoints,
                confusion=(next(m for m in scores if isinstance(m, metrics.MeanIU)), train_source.class_names),
            ),  # fmt: skip
            verbose=config.verbose,
        )
    model.save(os.path.join(output_dir, "final.keras"))
    return TrainResult(
        model=model,
        history={key: [float(v) for v in values] for key, values in history.history.items()},
        output_dir=output_dir,
        config=config,
        initial_epoch=initial_epoch,
    )
