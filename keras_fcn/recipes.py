"""The reference's PASCAL VOC training runs as data: `voc-fcn32s`, `voc-fcn16s`, `voc-fcn8s`, `voc-fcn8s-atonce`.

Each recipe is a set of `TrainConfig` values taken from shelhamer/fcn.berkeleyvision.org (`voc-fcn*/net.py`,
`solver.prototxt`, `solve.py`):

- solver: SGD, momentum 0.99, weight decay 5e-4 in Caffe's form (inside the momentum; biases at twice the
  rate without decay), a fixed learning rate of 1e-10 (FCN-32s, FCN-8s at-once), 1e-12 (FCN-16s) or 1e-14
  (FCN-8s) on the unnormalized loss (summed over pixels), batch 1 at full image size, no augmentation;
- length: 25 x 4,000 iterations (100,000; `solve.py` scores seg11valid every 4,000), 75 x 4,000 for at-once;
- net: the Caffe geometry (100-pixel padding, crops), dropout 0.5, every upsampling fixed bilinear;
- data: SBD train (8,498 images) without the seg11valid ids, and seg11valid (736 VOC2011 val images) to
  validate and score;
- initialisation: VGG16 ImageNet weights (FCN-32s, at-once); a trained FCN-32s (FCN-16s) or FCN-16s (FCN-8s).

`train_recipe(name, **overrides)` prints the recipe, trains, then scores the final model on seg11valid next
to the paper's mean IU (63.6 / 65.0 / 65.5, at-once 65.4). Keras's ImageNet VGG16 weights come with Keras's
mean pixel; the reference trained from Caffe's VGG16 with the mean (104.00699, 116.66877, 122.67892).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from keras_fcn.config import TrainConfig

# Where the recipes look for the data by default: the archives' own folder names, under data/.
SBD_ROOT = "data/benchmark_RELEASE/dataset"
VOC_ROOT = "data/VOCdevkit/VOC2012"
# The reference's solve.py: `for _ in range(25): solver.step(4000); score.seg_tests(...)`.
ITERATIONS_PER_SCORE = 4000

_REFERENCE = {
    "num_classes": 21,
    "geometry": "caffe",
    "dropout": 0.5,
    "fixed_upsampling": True,
    "train_data": f"sbd:{SBD_ROOT}",
    "train_split": "train",
    "train_exclude": "seg11valid",
    "val_data": f"voc:{VOC_ROOT}",
    "val_split": "seg11valid",
    "batch_size": 1,
    "crop_size": None,
    "scale_range": (1.0, 1.0),
    "flip": False,
    "optimizer": "sgd",
    "momentum": 0.99,
    "lr_schedule": "constant",
    "weight_decay": 5e-4,
    "weight_decay_mode": "caffe",
    "normalize_loss": False,
    "steps_per_epoch": ITERATIONS_PER_SCORE,
    "epochs": 25,
}


@dataclass(frozen=True)
class Recipe:
    """One of the reference's training runs: `TrainConfig` values and the paper's score of its model.

    Attributes:
        name: e.g. "voc-fcn8s".
        description: one line.
        paper_mean_iu: the reference's mean IU on seg11valid, in percent.
        settings: `TrainConfig` field values (every other field keeps its default).
        starts_from: the recipe whose trained model `init_from` names (staged training), or None.
    """

    name: str
    description: str
    paper_mean_iu: float
    settings: dict
    starts_from: str | None = None


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "voc-fcn32s",
            "FCN-32s from VGG16 ImageNet weights",
            63.6,
            {
                **_REFERENCE,
                "variant": "fcn32s",
                "learning_rate": 1e-10,
                "backbone_weights": "imagenet",
                "output_dir": "runs/voc-fcn32s",
            },
        ),
        Recipe(
            "voc-fcn16s",
            "FCN-16s from a trained FCN-32s",
            65.0,
            {
                **_REFERENCE,
                "variant": "fcn16s",
                "learning_rate": 1e-12,
                "backbone_weights": None,
                "init_from": "runs/voc-fcn32s/final.keras",
                "output_dir": "runs/voc-fcn16s",
            },
            starts_from="voc-fcn32s",
        ),
        Recipe(
            "voc-fcn8s",
            "FCN-8s from a trained FCN-16s",
            65.5,
            {
                **_REFERENCE,
                "variant": "fcn8s",
                "learning_rate": 1e-14,
                "backbone_weights": None,
                "init_from": "runs/voc-fcn16s/final.keras",
                "output_dir": "runs/voc-fcn8s",
            },
            starts_from="voc-fcn16s",
        ),
        Recipe(
            "voc-fcn8s-atonce",
            "FCN-8s in one stage (skips scaled by 0.01 and 0.0001) from VGG16 ImageNet weights",
            65.4,
            {
                **_REFERENCE,
                "variant": "fcn8s_at_once",
                "learning_rate": 1e-10,
                "backbone_weights": "imagenet",
                "epochs": 75,
                "output_dir": "runs/voc-fcn8s-atonce",
            },
        ),
    )
}


@dataclass
class RecipeResult:
    """What `train_recipe` returns: the training result and the final model's seg11valid scores."""

    recipe: Recipe
    train: object  # keras_fcn.training.TrainResult
    scores: dict | None  # keras_fcn.evaluation.evaluate's result; None without validation data


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`; raises ValueError naming the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe; expected one of {', '.join(RECIPES)}. Received: recipe={name!r}")
    return RECIPES[name]


def recipe_config(name: str, **overrides) -> TrainConfig:
    """The `TrainConfig` of a recipe, with `overrides` (fields of `TrainConfig`) applied on top.

    Raises:
        ValueError: an unknown recipe or field, or a bad value.

    Example:
    >>> recipe_config("voc-fcn8s", init_from="runs/my-fcn16s/final.keras").learning_rate
    1e-14
    """
    values = {**TrainConfig().to_dict(), **get_recipe(name).settings, **overrides}
    return TrainConfig.from_dict(values)


def describe(name: str, config: TrainConfig) -> str:
    """The recipe's settings, one per line, marking those `config` changes (e.g. from command-line flags)."""
    recipe = get_recipe(name)
    lines = [f"recipe {recipe.name}: {recipe.description} (paper: {recipe.paper_mean_iu} mean IU on seg11valid)"]
    values = config.to_dict()
    for key, planned in recipe.settings.items():
        value = values[key]
        if isinstance(planned, tuple):
            value = tuple(value) if value is not None else None
        changed = "" if value == planned else f"   (recipe: {planned!r})"
        lines.append(f"  {key:<18} {value!r}{changed}")
    defaults = TrainConfig().to_dict()
    others = {key: value for key, value in values.items() if key not in recipe.settings and value != defaults[key]}
    for key, value in others.items():
        lines.append(f"  {key:<18} {value!r}   (not part of the recipe)")
    return "\n".join(lines)


def format_comparison(recipe: Recipe, scores: dict) -> str:
    """Our four metrics on seg11valid next to the paper's (the reference publishes mean IU), in percent."""
    paper = {"mean_iu": recipe.paper_mean_iu}
    rows = [("pixel accuracy", "pixel_accuracy"), ("mean accuracy", "mean_accuracy"), ("mean IU", "mean_iu"),
            ("fw IU", "fw_iu")]  # fmt: skip
    lines = [f"{'':<16}{'ours':>8}{'paper':>8}"]
    for label, key in rows:
        reference = f"{paper[key]:8.1f}" if key in paper else f"{'-':>8}"
        lines.append(f"{label:<16}{100 * scores[key]:8.1f}{reference}")
    return "\n".join(lines)


def train_recipe(name: str, config: TrainConfig | None = None, **overrides) -> RecipeResult:
    """Trains as the reference did, then scores the final model on the validation split next to the paper.

    Args:
        name: a key of `RECIPES`.
        config: a complete `TrainConfig` to use instead of `recipe_config(name)` (the command line builds
            it from the recipe and its flags); `overrides` apply on top.
        **overrides: `TrainConfig` fields that replace the recipe's (data roots, output folder, ...).

    Returns:
        A `RecipeResult`.

    Raises:
        ValueError: an unknown recipe or field, or a staged recipe whose `init_from` does not exist.
        DataError: missing or bad data.

    Example:
    >>> train_recipe("voc-fcn32s", train_data="sbd:/data/sbd/dataset",
    ...              val_data="voc:/data/VOCdevkit/VOC2012")  # doctest: +SKIP
    """
    from keras_fcn.data import data_errors, from_spec
    from keras_fcn.evaluation import evaluate
    from keras_fcn.presets import is_preset
    from keras_fcn.training import train

    recipe = get_recipe(name)
    config = dataclasses.replace(config, **overrides) if config else recipe_config(name, **overrides)
    init_exists = config.init_from and (os.path.isfile(config.init_from) or is_preset(config.init_from))
    if recipe.starts_from and config.init_from and not init_exists:
        raise ValueError(
            f"Recipe {name} starts from a trained model of recipe {recipe.starts_from}: train it first "
            f"(keras-fcn train --recipe {recipe.starts_from}) or give its final.keras as init_from "
            f"(--init-from). Received: init_from={config.init_from!r}"
        )
    if config.verbose:
        print(describe(name, config), flush=True)
    result = train(config)
    if not config.val_data:
        return RecipeResult(recipe=recipe, train=result, scores=None)
    source = from_spec(
        config.val_data, config.val_split, num_classes=config.num_classes, seed=config.seed, **config.data_options
    )
    with data_errors(source):
        scores = evaluate(result.model, source, config.num_classes)
    if config.verbose:
        print(f"keras_fcn: {name}, final model on {source.name} ({scores['num_images']} images):")
        print(format_comparison(recipe, scores), flush=True)
    return RecipeResult(recipe=recipe, train=result, scores=scores)
