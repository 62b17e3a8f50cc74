"""What the verbs share: the one-line error, loading a model, the precision flag, class names."""

from __future__ import annotations

import argparse
import os
import sys


class CommandError(Exception):
    """An error the user can fix; printed as one line and exit code 2, without a traceback."""


def load_model(path: str):
    import keras

    import keras_fcn

    keras_fcn.register_keras_objects()  # stated, not left to the import hook: the model needs them
    if not os.path.exists(path):
        raise CommandError(f"Model file not found: {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError) as error:
        raise CommandError(f"Cannot load model {path}: {error}") from None


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
    else:
        # NAME.classes.txt beside NAME.keras (written by `convert --caffemodel`), else the run's classes.txt.
        listed = os.path.splitext(os.path.abspath(model_path))[0] + ".classes.txt"
        if not os.path.isfile(listed):
            listed = os.path.join(os.path.dirname(os.path.abspath(model_path)), "classes.txt")
        if not os.path.isfile(listed):
            return None
        with open(listed, encoding="utf-8") as handle:
            names = [line.strip() for line in handle if line.strip()]
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
