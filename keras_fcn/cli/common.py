"""What the verbs share: the one-line error, loading a model, the precision flag, class names."""

from __future__ import annotations

import argparse
import os
import sys

# --model's help: every verb that loads a model takes a preset as well.
MODEL_HELP = "a .keras model or a preset: a folder, a built-in name (fcn8s_voc, ...), kaggle://..., hf://..."


class CommandError(Exception):
    """An error the user can fix; printed as one line and exit code 2, without a traceback."""


# The class names of the presets loaded by `load_model`, by the text given to --model.
_PRESET_CLASS_NAMES: dict[str, list[str] | None] = {}


def load_model(path: str):
    """A `.keras` file, or a preset (folder, built-in name, kaggle:// or hf:// handle) as its functional model."""
    import keras

    import keras_fcn
    from keras_fcn.presets import is_preset

    keras_fcn.register_keras_objects()  # stated, not left to the import hook: the model needs them
    if is_preset(path):
        return _load_preset(path)
    if not os.path.exists(path):
        raise CommandError(
            f"Model file not found: {path} (--model takes a .keras file, a preset folder, kaggle://, hf:// or a "
            "built-in preset name: keras_fcn.presets.BUILTIN_PRESETS)"
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError) as error:
        raise CommandError(f"Cannot load model {path}: {error}") from None


def _load_preset(preset: str):
    try:
        from keras_fcn.presets import load_functional

        model, names = load_functional(preset)
    except ImportError as error:
        raise CommandError(str(error)) from None
    except (ValueError, OSError) as error:
        raise CommandError(f"Cannot load preset {preset}: {error}") from None
    _PRESET_CLASS_NAMES[preset] = names
    return model


def add_precision_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "float16", "auto"),
        default="float32",
        help="compute precision (auto: bfloat16 on CPUs with AVX512_BF16 or AMX, float16 on GPUs, "
        "otherwise float32); inputs and outputs keep their dtypes (default: float32)",
    )


def with_precision(model, precision: str):
    from keras_fcn.precision import resolve_precision, with_precision

    resolved = resolve_precision(precision)
    if precision == "auto":
        print(f"keras-fcn: --precision auto: computing in {resolved}", file=sys.stderr)
    return with_precision(model, resolved)


def low_precision(model) -> bool:
    from keras_fcn.precision import model_precision

    return model_precision(model) != "float32"


def class_names_for(model_path: str, given: str | None, num_classes: int):
    if given:
        names = [name.strip() for name in given.split(",")]
    elif model_path in _PRESET_CLASS_NAMES:  # a preset carries its class names
        names = _PRESET_CLASS_NAMES[model_path]
        if names is None:
            return None
    else:
        from keras_fcn.presets import read_class_names_beside  # light: numpy only

        # NAME.classes.txt beside NAME.keras (written by `convert --caffemodel`), else the run's classes.txt.
        names = read_class_names_beside(model_path)
        if names is None:
            return None
    if len(names) != num_classes:
        raise CommandError(f"Expected {num_classes} class names, one per model output. Received: {names}")
    return names


def data_options(items) -> dict:
    import json

    options = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise CommandError(f"--data-option takes KEY=VALUE. Received: {item!r}")
        try:
            options[name] = json.loads(text)
        except json.JSONDecodeError:
            options[name] = text
    return options


def add_tiling_flags(parser: argparse.ArgumentParser) -> None:
    """--tile-size, --overlap, --blend, --batch-size, --tta, --scales and --max-image-pixels (predict, evaluate)."""
    tiles = parser.add_argument_group(
        "tiles and test-time augmentation", "predict each image in overlapping tiles, or averaged over flips and scales"
    )
    add_tile_flags(tiles)
    tiles.add_argument("--batch-size", type=int, default=4, help="tiles per model call (default: 4)")
    tiles.add_argument(
        "--tta", nargs="+", choices=("hflip", "vflip"), default=[],
        help="test-time flips whose probabilities are averaged with the image's own (with or without tiles)",
    )  # fmt: skip
    tiles.add_argument(
        "--scales", type=_scales, default=(1.0,),
        help="test-time scales whose probabilities are averaged, e.g. 0.75,1,1.25 (default: 1)",
    )  # fmt: skip
    tiles.add_argument(
        "--max-image-pixels", type=int,
        help="Pillow's guard against decompression bombs: refuse image files with more pixels than this "
        "(default: Pillow's, 89,478,485; 0: no limit, for files you trust)",
    )  # fmt: skip


def add_tile_flags(group) -> None:
    """--tile-size, --overlap and --blend (predict, evaluate, query)."""
    group.add_argument("--tile-size", type=int, help="side of the tiles in pixels, at least 32 (default: whole images)")
    group.add_argument(
        "--overlap", type=_overlap, default=0.25,
        help="overlap of the tiles: a fraction in [0, 1) or pixels (default: 0.25)",
    )  # fmt: skip
    group.add_argument(
        "--blend", choices=("gaussian", "mean"), default="gaussian",
        help="weights of each tile's probabilities: a Gaussian centred on the tile, or plain means (default: gaussian)",
    )  # fmt: skip


def tiling_from_args(args) -> dict | None:
    """`predict_tiled`'s arguments from the flags; None when neither tiles nor augmentation are asked for."""
    if args.max_image_pixels is not None:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = args.max_image_pixels or None
    if args.tile_size is None and not args.tta and args.scales == (1.0,):
        return None
    return {
        "tile_size": args.tile_size, "overlap": args.overlap, "blend": args.blend, "batch_size": args.batch_size,
        "tta": tuple(args.tta), "scales": args.scales,
    }  # fmt: skip


def _overlap(text: str) -> float | int:
    """`0.25` is a fraction of the tile, `64` is pixels."""
    return int(text) if text.isdecimal() else float(text)


def _scales(text: str) -> tuple[float, ...]:
    return tuple(float(value) for value in text.split(","))
