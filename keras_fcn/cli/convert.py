"""`keras-fcn convert`: VGG16 ImageNet weights, or the reference's Caffe models, into Keras files; a Caffe
model or a `.keras` FCN into a keras-hub preset (`--preset-dir`)."""

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
    source.add_argument(
        "--model", help="with --preset-dir: an FCN .keras file (its NAME.classes.txt or classes.txt beside it)"
    )
    parser.add_argument("--prototxt", help="with --caffemodel: its net definition, checked against the weights")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--output", help="file to write: NAME.weights.h5 (--input) or NAME.keras (--caffemodel)")
    target.add_argument(
        "--preset-dir",
        help="with --caffemodel or --model: a keras-hub preset folder to write (config.json, model.weights.h5, "
        "task.json, preprocessor.json, ...), loadable with keras_hub.models.ImageSegmenter.from_preset",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or report")


def run_convert(args) -> int:
    from keras_fcn.convert import convert_vgg16_weights

    if getattr(args, "preset_dir", None):
        return _convert_to_preset(args)
    if getattr(args, "model", None):
        raise CommandError("--model goes with --preset-dir (it converts a .keras model into a preset)")

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


def _convert_to_preset(args) -> int:
    if getattr(args, "input", None):
        raise CommandError("--preset-dir goes with --caffemodel or --model; --input writes a .weights.h5 (--output)")
    try:
        from keras_fcn import presets

        if args.caffemodel:
            presets.caffemodel_to_preset(
                args.caffemodel, args.preset_dir, prototxt=args.prototxt, force=args.force, verbose=not args.quiet
            )
            return 0
        if args.prototxt:
            raise CommandError("--prototxt goes with --caffemodel")
        segmenter = presets.keras_to_preset(args.model, args.preset_dir, force=args.force)
    except ImportError as error:  # keras-hub missing
        raise CommandError(str(error)) from None
    except (ValueError, OSError) as error:  # CaffeModelError is a ValueError, FileExistsError an OSError
        raise CommandError(str(error)) from None
    if not args.quiet:
        names = "no class names" if segmenter.class_names is None else f"{segmenter.num_classes} class names"
        print(f"wrote {segmenter.variant} preset {args.preset_dir} ({names}); the reloaded preset equals the model "
              "on a probe")  # fmt: skip
    return 0
