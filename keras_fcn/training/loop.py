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

import dataclasses
import math
import os
from dataclasses import dataclass

import keras
import tensorflow as tf

from keras_fcn import keras_internals, metrics
from keras_fcn.atomic import replacing, write_text
from keras_fcn.config import TrainConfig
from keras_fcn.data import data_errors, from_spec, make_dataset, without
from keras_fcn.optimizers import CaffeSGD
from keras_fcn.training.callbacks import make_callbacks
from keras_fcn.training.outputs import best_logged, disk_use, is_chief, prepare_output_dir, resume_epoch
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
        kwargs["init_from"] = load_init_from(config.init_from)
    model = build_fcn(config.variant, num_classes, **kwargs)
    if config.fixed_upsampling:
        for layer in model.layers:
            if isinstance(layer, keras.layers.Conv2DTranspose):
                layer.trainable = False  # the reference's Deconvolution layers: lr_mult=0
    return model


def load_init_from(path: str) -> keras.Model:
    """The model `init_from` names: a `.keras` file, or a preset (folder, built-in name, kaggle:// or hf://)."""
    from keras_fcn.presets import is_preset

    if is_preset(path):
        from keras_fcn.presets import load_layers

        return load_layers(path)
    return keras.saving.load_model(path, compile=False)


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


def _length(source) -> int | None:
    try:
        return len(source)
    except TypeError:
        return None


def _training_dataset(config: TrainConfig, source, strategy: tf.distribute.Strategy):
    """The training batches for `fit`, and the element spec of one replica's batch.

    Under `MultiWorkerMirroredStrategy` each worker builds its own pipeline over its share of the examples
    (`make_dataset(shard=...)`), so it decodes only those; one replica's batch is the global batch divided
    by the number of replicas. Elsewhere one pipeline yields global batches that tf.distribute splits.
    """
    settings = dict(
        crop_size=config.crop_size, scale_range=config.scale_range, flip=config.flip, repeat=True, seed=config.seed
    )
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        dataset = make_dataset(source, batch_size=config.batch_size, **settings)
        return dataset, dataset.element_spec
    specs = []

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        shard = (context.input_pipeline_id, context.num_input_pipelines)
        batch_size = context.get_per_replica_batch_size(config.batch_size)
        dataset = make_dataset(source, batch_size=batch_size, shard=shard, **settings)
        specs.append(dataset.element_spec)
        return dataset

    return strategy.distribute_datasets_from_function(dataset_fn), specs[0]


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
    chief, worker_name = is_chief(strategy)
    # Non-chief workers write their own scratch copy so that files never collide.
    output_dir = config.output_dir if chief else os.path.join(config.output_dir, "workers", worker_name)
    prepare_output_dir(output_dir, config.overwrite)
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
    names = train_source.class_names[:num_classes]
    write_text(os.path.join(output_dir, "classes.txt"), "".join(f"{name}\n" for name in names))
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
    train_ds, train_spec = _training_dataset(config, train_source, strategy)
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
        keras_internals.multi_worker_workarounds(model, strategy, train_spec)
    initial_epoch = resume_epoch(output_dir)
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
    best_so_far = best_logged(output_dir, monitor, initial_epoch) if initial_epoch else None
    with data_errors(train_source, *([val_source] if val_source is not None else [])):
        history = model.fit(
            train_ds,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            validation_data=val_ds,
            validation_steps=config.validation_steps,
            shuffle=False,  # the dataset shuffles itself
            callbacks=make_callbacks(
                output_dir, monitor, resuming=initial_epoch > 0, best_so_far=best_so_far, keep=config.keep_checkpoints,
                confusion=(scores[0], train_source.class_names),  # the SegmentationScores matrix
            ),  # fmt: skip
            verbose=config.verbose,
        )
    with replacing(os.path.join(output_dir, "final.keras")) as tmp:
        model.save(tmp)
    return TrainResult(
        model=model,
        history={key: [float(v) for v in values] for key, values in history.history.items()},
        output_dir=output_dir,
        config=config,
        initial_epoch=initial_epoch,
    )
