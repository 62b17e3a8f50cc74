"""`TrainConfig`: every knob of a training run with its default, saved as `config.json` beside the outputs.

Kept apart from `keras_fcn.training` (and free of TensorFlow) so that the command line can list the knobs as
flags without loading the training loop.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

# VGG16's widths: the only ones ImageNet weights exist for.
from keras_fcn.variants import VARIANTS
from keras_fcn.vgg16 import VGG16_FC_UNITS, VGG16_FILTERS

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "poly", "step")
STRATEGIES = ("default", "mirrored", "multi-worker")
WEIGHT_DECAY_MODES = ("decoupled", "caffe")
AUTO_WEIGHTS = "auto"
CLASS_WEIGHTINGS = ("median-frequency",)


def knob(default, help: str):  # noqa: A002 - the flag's help, as argparse names it
    """A config field: its default, and the help text `keras-fcn train --help` shows for its flag."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every knob of a training run, with its default. Overridable from `keras-fcn train --key value`."""

    # --- model -------------------------------------------------------------------------------------
    variant: str = knob("fcn8s", "fcn32s | fcn16s | fcn8s | fcn8s_at_once")
    num_classes: int | None = knob(None, "None: from the training data (21 for VOC/SBD)")
    # "auto": "imagenet" with VGG16's widths; narrower widths have no ImageNet weights and start random.
    backbone_weights: str | None = knob(
        "auto",
        '"auto" | "imagenet" | None (random) | a VGG16 .h5 or converted file. auto: with VGG16\'s widths (the '
        "default backbone_filters and fc_units) the ImageNet weights, from Keras's download and cache; narrower "
        "widths have no ImageNet weights and start from random ones. Offline, pass the .h5 file or a "
        "`keras-fcn convert` output; none starts from random weights",
    )
    backbone_filters: tuple[int, ...] | None = knob(None, "None: VGG16's (64, 128, 256, 512, 512)")
    fc_units: int | None = knob(None, "None: VGG16's 4096")
    geometry: str = knob("aligned", '"aligned" | "caffe" (the reference\'s 100-pixel padding and crops)')
    dropout: float = knob(0.5, "rate of the Dropout after fc6 and fc7")
    learn_final_upsampling: bool = knob(
        False, "make the final upsampling trainable (fixed bilinear by default, as the reference)"
    )
    fixed_upsampling: bool = knob(False, "every upsampling fixed bilinear, as the reference's nets (lr_mult=0)")
    init_from: str | None = knob(None, "a .keras model or a preset whose layers are copied by name (32s → 16s → 8s)")
    # --- data (see keras_fcn.data.from_spec) --------------------------------------------------------
    train_data: str = knob("synthetic", 'e.g. "sbd:/data/benchmark_RELEASE/dataset"')
    train_split: str = knob("train", "the training split of train_data")
    train_exclude: str | None = knob(None, 'ids left out of the training data: "seg11valid" or a list file')
    val_data: str | None = knob(None, 'e.g. "voc:/data/VOCdevkit/VOC2012"; None: no validation')
    val_split: str = knob("val", '"seg11valid" for the reference\'s validation set')
    data_options: dict = field(
        default_factory=dict, metadata={"help": 'extra source arguments, e.g. {"image_size": [96, 96]}'}
    )
    batch_size: int = knob(1, "global batch, split over replicas; the reference uses 1")
    crop_size: int | None = knob(None, "None: whole images (batch 1, or padded to the largest in a batch)")
    scale_range: tuple[float, float] = knob((0.5, 2.0), "random scale range of the augmentation")
    flip: bool = knob(True, "random horizontal flips")
    class_weights: tuple[float, ...] | str | None = knob(
        None,
        'one loss weight per class, or "median-frequency": weight_c = median(freq) / freq_c, computed from the '
        "training data",
    )
    # --- optimisation ------------------------------------------------------------------------------
    optimizer: str = knob("sgd", '"sgd" (momentum, as the reference) | "adam"')
    learning_rate: float = knob(1e-4, "for the normalized loss; the reference's summed loss used 1e-10..1e-14")
    momentum: float = knob(0.99, "the reference's; SGD only")
    lr_schedule: str = knob("constant", '"constant" | "poly" (x (1 - t/T)^power) | "step" (x gamma every step_epochs)')
    poly_power: float = knob(0.9, "power of the poly schedule")
    step_epochs: int = knob(10, "epochs between two steps of the step schedule")
    step_gamma: float = knob(0.1, "factor of each step of the step schedule")
    weight_decay: float = knob(5e-4, "see weight_decay_mode; biases excluded")
    weight_decay_mode: str = knob("decoupled", '"decoupled" (Keras) | "caffe" (L2 in the momentum; biases 2x lr)')
    normalize_loss: bool = knob(True, "mean over valid pixels; False: the reference's sum over pixels")
    epochs: int = knob(50, "number of epochs")
    steps_per_epoch: int | None = knob(None, "None: one pass over the training data")
    validation_steps: int | None = knob(None, "None: the whole validation set")
    # --- performance -------------------------------------------------------------------------------
    mixed_precision: bool = knob(False, "float16 on GPU, bfloat16 on CPU; outputs and loss stay float32")
    jit_compile: bool = knob(False, "XLA")
    strategy: str = knob("default", '"default" | "mirrored" (all local GPUs) | "multi-worker" (from TF_CONFIG)')
    devices: tuple[str, ...] | None = knob(None, 'devices for "mirrored" (default: all GPUs, else the CPU)')
    # --- output ------------------------------------------------------------------------------------
    output_dir: str = knob("runs/fcn", "the run's folder (checkpoints, best.keras, final.keras, logs)")
    overwrite: bool = knob(False, "start afresh in an output_dir holding a finished run, deleting its outputs")
    keep_checkpoints: int | None = knob(
        3,
        "newest epoch checkpoints kept (besides best, final, backup); None: all. `train` prints the size of one "
        "and the disk the run will use",
    )
    seed: int = knob(0, "seed of weights, data order and augmentation")
    verbose: int | str = knob("auto", "Keras's progress bar")

    def __post_init__(self):
        checks = [
            ("variant", self.variant, VARIANTS),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("lr_schedule", self.lr_schedule, LR_SCHEDULES),
            ("strategy", self.strategy, STRATEGIES),
            ("weight_decay_mode", self.weight_decay_mode, WEIGHT_DECAY_MODES),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"`{key}` must be one of {allowed}. Received: {key}={value!r}")
        for key in ("epochs", "batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"`{key}` must be at least 1. Received: {key}={getattr(self, key)}")
        if self.weight_decay_mode == "caffe" and self.optimizer != "sgd":
            raise ValueError(
                "weight_decay_mode='caffe' is Caffe's SGD solver: it needs optimizer='sgd'. "
                f"Received: optimizer={self.optimizer!r}"
            )
        if self.fixed_upsampling and self.learn_final_upsampling:
            raise ValueError(
                "`fixed_upsampling` fixes every upsampling, the final one too: it contradicts "
                "`learn_final_upsampling`. Received: fixed_upsampling=True, learn_final_upsampling=True"
            )
        if self.learning_rate <= 0:
            raise ValueError(f"`learning_rate` must be positive. Received: learning_rate={self.learning_rate}")
        if isinstance(self.class_weights, list | tuple) and len(self.class_weights) == 1:
            if isinstance(self.class_weights[0], str):  # `--class-weights median-frequency`
                self.class_weights = self.class_weights[0]
        bad_list = isinstance(self.class_weights, list | tuple) and any(isinstance(w, str) for w in self.class_weights)
        if bad_list or (isinstance(self.class_weights, str) and self.class_weights not in CLASS_WEIGHTINGS):
            raise ValueError(
                f"`class_weights` must be numbers (one per class) or one of {CLASS_WEIGHTINGS}. "
                f"Received: class_weights={self.class_weights!r}"
            )
        if self.keep_checkpoints is not None and int(self.keep_checkpoints) < 0:
            raise ValueError(
                f"`keep_checkpoints` must be 0 or more (None: all). Received: keep_checkpoints={self.keep_checkpoints}"
            )
        for key in ("backbone_filters", "class_weights", "devices", "scale_range"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, tuple | str):
                setattr(self, key, tuple(value))

    def resolved_backbone_weights(self) -> str | None:
        """`backbone_weights` with "auto" resolved: "imagenet" for VGG16's widths, None (random) otherwise.

        With `init_from`, "auto" is None too: the model it names overwrites the backbone anyway.
        """
        if self.backbone_weights != AUTO_WEIGHTS:
            return self.backbone_weights
        if self.init_from:
            return None
        vgg16 = self.backbone_filters in (None, VGG16_FILTERS) and self.fc_units in (None, VGG16_FC_UNITS)
        return "imagenet" if vgg16 else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown TrainConfig keys {unknown}. Received: {sorted(values)}")
        return cls(**values)

    def save(self, path: str) -> None:
        """Writes the config as JSON, atomically (a temporary file beside `path`, then a rename)."""
        from keras_fcn.atomic import write_text

        write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str) -> TrainConfig:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))
