"""`keras-fcn convert`: VGG16 ImageNet weights, or the reference's Caffe models, into Keras files."""

from __future__ import annotations

import argparse

from keras_fcn.cli.common import (
    CommandError,
)


def add_convert(verbs) -> None:
    parser = verbs.add_parser(
        "convert",
        help="convert Keras VGG16 weights (.h5) into FCN weights, or a reference .caffemodel into a .keras model",
        description="--input: reshape VGG16's fc1/fc2/predictions into fc6/fc7/fc8 convolutions, write the FCN "
        "weight file atomically, reload it and print its largest difference from the source classifier. "
        "--caffemodel: recognise one of the reference's Caffe nets (FCNs of VOC, PASCAL-Context, NYUDv2, SIFT "
        "Flow; VGG_ILSVRC_16_layers), write it as a .keras model (and NAME.classes.txt) atomically, and print "
        "what was recognised, the time, the peak memory and a reload self-check.",
    )
    add_convert_arguments(parser)
    parser.set_defaults(run=run_convert)


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="Keras VGG16 weights with top, legacy .h5 layout")
    source.add_argument("--caffemodel", help="one of the reference's Caffe weight files (.caffemodel)")
    parser.add_argument("--prototxt", help="with --caffemodel: its net definition, checked against the weights")
    parser.add_argument(
        "--output", required=True, help="file to write: NAME.weights.h5 (--input) or NAME.keras (--caffemodel)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or report")


def run_convert(args) -> int:
    from keras_fcn.convert import convert_vgg16_weights

    if getattr(args, "caffemodel", None):
        from keras_fcn.caffe import convert_caffemodel

        try:
            convert_caffemodel(
                args.caffemodel, args.output, prototxt=args.prototxt, force=args.force, verbose=not args.quiet
            )
        except (ValueError, OSError) as error:  # CaffeModelError is a ValueError
            raise CommandError(str(error)) from None
        return 0
    if getattr(args, "prototxt", None):
        raise CommandError("--prototxt goes with --caffemodel")
    try:
        convert_vgg16_weights(args.input, args.output, force=args.force, verbose=not args.quiet)
    except (ValueError, OSError) as error:  # WeightFileError is a ValueError, FileExistsError an OSError
        raise CommandError(str(error)) from None
