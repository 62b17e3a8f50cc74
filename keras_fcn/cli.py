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


def _add_export(verbs) -> None:
    parser = verbs.add_parser("export", help="write a .keras model as a TF Serving SavedModel version")
    parser.add_argument("--model", required=True, help="the trained model, a .keras file")
    parser.add_argument(
        "--output", required=True, metavar="BASE", help="the model base path (BASE/<version>/)"
    )
    parser.add_argument("--version", type=int, default=None, help="version number (default: the next one)")
    parser.add_argument("--class-names", default=None, help="a file with one class name a line")
    parser.add_argument(
        "--max-decoded-pixels",
        type=int,
        default=None,
        help="most pixels serve_encoded decodes in one request (default: 33554432)",
    )
    parser.set_defaults(run=_run_export)


def _run_export(args) -> int:
    import os

    if not os.path.exists(args.model):
        raise CommandError(f"no model file at {args.model}")
    class_names = None
    if args.class_names:
        with open(args.class_names, encoding="utf-8") as f:
            class_names = [line.strip() for line in f if line.strip()]
    import keras

    import keras_fcn  # noqa: F401 - registers the custom layers for loading
    from keras_fcn.export import export_saved_model

    model = keras.saving.load_model(args.model, compile=False)
    limit = {} if args.max_decoded_pixels is None else {"max_decoded_pixels": args.max_decoded_pixels}
    try:
        export_saved_model(model, args.output, version=args.version, class_names=class_names, **limit)
    except ValueError as error:
        raise CommandError(str(error)) from error
    return 0


def _add_serve(verbs) -> None:
    # Flags also accept tensorflow_model_server's spelling (--model_base_path, --rest_api_port, ...).
    parser = verbs.add_parser("serve", help="serve SavedModels over TF Serving's gRPC and REST APIs")
    parser.add_argument("--model-base-path", "--model_base_path", dest="model_base_path")
    parser.add_argument("--model-name", "--model_name", dest="model_name", default="default")
    parser.add_argument("--model-config-file", "--model_config_file", dest="model_config_file")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    parser.add_argument(
        "--rest-port",
        "--rest_api_port",
        dest="rest_port",
        type=int,
        default=8501,
        help="REST port (0: no REST API, as in TF Serving)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0: all interfaces)")
    parser.add_argument("--enable-batching", "--enable_batching", dest="enable_batching", action="store_true")
    parser.add_argument(
        "--batching-parameters-file", "--batching_parameters_file", dest="batching_parameters_file"
    )
    parser.add_argument(
        "--file-system-poll-wait-seconds",
        "--file_system_poll_wait_seconds",
        dest="poll_seconds",
        type=float,
        default=1.0,
    )
    parser.set_defaults(run=_run_serve)


def _run_serve(args) -> int:
    import logging
    import signal
    import threading

    if not args.model_config_file and not args.model_base_path:
        raise CommandError("give --model-base-path (with --model-name) or --model-config-file")
    if args.batching_parameters_file and not args.enable_batching:
        raise CommandError("--batching-parameters-file needs --enable-batching")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from keras_fcn.serving.server import ModelServer

    try:
        server = ModelServer(
            args.model_name,
            args.model_base_path,
            model_config_file=args.model_config_file,
            port=args.port,
            rest_port=args.rest_port or None,
            host=args.host,
            enable_batching=args.enable_batching,
            batching_parameters=args.batching_parameters_file,
            poll_seconds=args.poll_seconds,
        )
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        server.start()
    except (ValueError, OSError, RuntimeError) as error:
        raise CommandError(str(error)) from error
    while not stop.wait(0.5):
        pass
    logging.getLogger("keras_fcn.serving").info("Shutting down")
    server.stop()
    return 0


def _add_query(verbs) -> None:
    parser = verbs.add_parser("query", help="segment images with a served model over gRPC")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    parser.add_argument("--address", default="localhost:8500", help="host:port of the gRPC API")
    parser.add_argument("--model", required=True, metavar="NAME", help="the served model's name")
    parser.add_argument("--version", type=int, default=None, help="a version (default: the latest)")
    parser.add_argument("--output", required=True, metavar="DIR", help="where the PNGs go")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take")
    parser.set_defaults(run=_run_query)


def _run_query(args) -> int:
    import os

    import grpc
    import numpy as np

    from keras_fcn.serving.client import FCNClient
    from keras_fcn.serving.images import class_map_png, decode_image, encode_png, overlay

    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        raise CommandError(f"no such image file: {', '.join(missing)}")
    os.makedirs(args.output, exist_ok=True)
    with FCNClient(args.address, args.model, version=args.version, timeout=args.timeout) as client:
        for path in args.images:  # one request each: images of different sizes cannot share one
            try:
                class_ids = client.predict([path]).class_ids[0]
            except grpc.RpcError as error:
                raise CommandError(f"{path}: {error.code().name}: {error.details()}") from error
            stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
            with open(stem + "_class_ids.png", "wb") as f:
                f.write(class_map_png(class_ids))
            with open(path, "rb") as f:
                pixels = decode_image(f.read())
            with open(stem + "_overlay.png", "wb") as f:
                f.write(encode_png(overlay(pixels, class_ids)))
            present = ", ".join(
                f"{c}: {n}" for c, n in zip(*np.unique(class_ids, return_counts=True), strict=True)
            )
            print(f"{path}: {stem}_class_ids.png, {stem}_overlay.png (pixels per class id: {present})")
    return 0


# Each verb is one `_add_<verb>(verbs)` function that registers its parser and sets `run`.
_VERBS: list = [_add_convert, _add_export, _add_serve, _add_query]


if __name__ == "__main__":
    sys.exit(main())
