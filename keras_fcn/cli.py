"""The `keras-fcn` command line: each verb parses its flags, calls the library and reports.

Verbs import TensorFlow lazily so that `keras-fcn --help` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys

# TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) would bury the verbs' own messages.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class CommandError(Exception):
    """An error the user can fix; printed as one line and exit code 2, without a traceback."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keras-fcn", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add_verb in _VERBS:
        add_verb(verbs)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CommandError as error:
        print(f"keras-fcn {args.verb}: error: {error}", file=sys.stderr)
        return 2


def _add_convert(verbs) -> None:
    parser = verbs.add_parser(
        "convert",
        help="convert Keras VGG16 ImageNet weights (.h5) into FCN weights (.weights.h5)",
        description="Reshape VGG16's fc1/fc2/predictions into fc6/fc7/fc8 convolutions, write the FCN weight "
        "file atomically, reload it and print its largest difference from the source classifier.",
    )
    add_convert_arguments(parser)
    parser.set_defaults(run=run_convert)


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="Keras VGG16 weights with top, legacy .h5 layout")
    parser.add_argument("--output", required=True, help="FCN weight file to write, ending in .weights.h5")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or report")


def run_convert(args) -> int:
    from keras_fcn.convert import convert_vgg16_weights  # imports TensorFlow

    try:
        convert_vgg16_weights(args.input, args.output, force=args.force, verbose=not args.quiet)
    except (ValueError, OSError) as error:  # WeightFileError is a ValueError, FileExistsError an OSError
        raise CommandError(str(error)) from None
    return 0


# Each verb is one `_add_<verb>(verbs)` function that registers its parser and sets `run`.
_VERBS: list = [_add_convert]


if __name__ == "__main__":
    sys.exit(main())
