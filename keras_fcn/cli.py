"""The `keras-fcn` command line: each verb parses its flags, calls the library and reports.

Importing the package loads Keras, TensorFlow and the library (a few seconds, even for `--help`); the
serving verbs import gRPC and the TF Serving protos only when they run.
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


def _add_export(verbs) -> None:
    parser = verbs.add_parser(
        "export",
        help="write a .keras model as a TF Serving SavedModel version, an ONNX or a LiteRT file",
        description="Every format takes uint8 RGB images (N, H, W, 3) of any size and answers class_ids "
        "(N, H, W) and probabilities (N, H, W, C); each is checked against the model before it is put in place.",
    )
    parser.add_argument("--model", required=True, help="the trained model, a .keras file")
    parser.add_argument(
        "--output", required=True, metavar="PATH",
        help="saved_model: the model base path (PATH/<version>/); onnx: a .onnx file; litert: a .tflite file",
    )  # fmt: skip
    parser.add_argument(
        "--format", default="saved_model", choices=("saved_model", "onnx", "litert"),
        help="saved_model (TF Serving, default), onnx (tf2onnx, opset 17; checked with onnxruntime) or litert "
        "(TFLite built-in ops; checked with the LiteRT interpreter)",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="onnx/litert: overwrite an existing file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or report")
    parser.add_argument("--version", type=int, default=None, help="version number (default: the next one)")
    parser.add_argument(
        "--class-names", default=None,
        help="a file with one class name a line (default: NAME.classes.txt or classes.txt beside the model; "
        "saved_model: assets.extra/class_names.txt; onnx: metadata)",
    )  # fmt: skip
    parser.add_argument(
        "--max-decoded-pixels",
        type=int,
        default=None,
        help="most pixels one request computes, in either signature (default: 33554432)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest probability difference allowed between the exported model and the Keras model "
        "(default: 1e-4, 5e-2 for float16/bfloat16 models)",
    )
    _add_precision_flag(parser)
    parser.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from keras_fcn.export import export_saved_model
    from keras_fcn.export_formats import export_litert, export_onnx

    if args.format != "saved_model":
        given = [flag for flag, value in (("--version", args.version), ("--max-decoded-pixels",
                 args.max_decoded_pixels)) if value is not None]  # fmt: skip
        if args.format == "litert" and args.class_names:
            given.append("--class-names")
        if given:
            raise CommandError(f"{', '.join(given)} cannot be used with --format {args.format}")
    reference = _load_model(args.model)
    model = _with_precision(reference, args.precision)
    # The check measures a low-precision export against the float32 model it came from.
    compare = {"reference": reference} if _low_precision(model) else {}
    class_names = None
    if args.class_names:
        try:
            with open(args.class_names, encoding="utf-8") as f:
                class_names = [line.strip() for line in f if line.strip()]
        except OSError as error:
            raise CommandError(f"Cannot read class names {args.class_names}: {error}") from None
    else:
        class_names = _class_names_for(args.model, None, int(model.output_shape[-1]))
    limit = {} if args.max_decoded_pixels is None else {"max_decoded_pixels": args.max_decoded_pixels}
    try:
        if args.format == "onnx":
            export_onnx(model, args.output, class_names=class_names, tolerance=args.tolerance, force=args.force,
                        verbose=not args.quiet)  # fmt: skip
        elif args.format == "litert":
            export_litert(model, args.output, tolerance=args.tolerance, force=args.force, verbose=not args.quiet)
        else:
            export_saved_model(
                model, args.output, version=args.version, class_names=class_names, tolerance=args.tolerance,
                verbose=not args.quiet, **limit, **compare,
            )  # fmt: skip
    except (ValueError, OSError, ImportError) as error:
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
        "--enable-signature-method-name-check",
        "--enable_signature_method_name_check",
        dest="method_name_check",
        action="store_true",
        help="refuse signatures whose method name does not match the request kind (off, as in TF Serving)",
    )
    parser.add_argument(
        "--file-system-poll-wait-seconds",
        "--file_system_poll_wait_seconds",
        dest="poll_seconds",
        type=float,
        default=1.0,
    )
    parser.add_argument(
        "--model-config-file-poll-wait-seconds",
        "--model_config_file_poll_wait_seconds",
        dest="config_poll_seconds",
        type=float,
        default=0.0,
        help="re-read --model-config-file this often and switch to the models it lists (0: read once)",
    )
    parser.add_argument(
        "--grpc-channel-arguments",
        "--grpc_channel_arguments",
        dest="grpc_channel_arguments",
        default="",
        help="gRPC server options, e.g. grpc.max_connection_age_ms=2000,grpc.max_receive_message_length=4194304",
    )
    parser.add_argument(
        "--grpc-socket-path", "--grpc_socket_path", dest="grpc_socket_path", help="also serve gRPC on this Unix socket"
    )
    parser.add_argument(
        "--monitoring-config-file",
        "--monitoring_config_file",
        dest="monitoring_config_file",
        help="a MonitoringConfig text file: prometheus_config { enable: true } serves metrics on the REST port",
    )
    parser.add_argument(
        "--ssl-config-file",
        "--ssl_config_file",
        dest="ssl_config_file",
        help="an SSLConfig text file (server_key, server_cert, custom_ca, client_verify): TLS on gRPC",
    )
    # Bounds on what requests may cost (TF Serving's flag names where it has one).
    limits = (
        ("--max-request-elements", "--max_request_elements", 3 << 25, "values one gRPC Predict request may declare"),
        ("--grpc-max-threads", "--grpc_max_threads", 16, "gRPC worker threads"),
        ("--rest-api-num-threads", "--rest_api_num_threads", 16, "REST worker threads"),
        ("--max-queued-requests", "--max_queued_requests", 64, "requests waiting for a worker; then 429"),
        ("--rest-api-timeout-in-ms", "--rest_api_timeout_in_ms", 30000, "REST request timeout; then 504"),
        ("--rest-api-max-body-bytes", "--rest_api_max_body_bytes", 1 << 30, "largest REST body; then 429"),
    )
    for flag, alias, default, text in limits:
        parser.add_argument(flag, alias, type=int, default=default, help=f"{text} (default: {default})")
    parser.add_argument(
        "--shutdown-grace-seconds",
        type=float,
        default=10.0,
        help="on SIGTERM, how long requests in flight may finish (default: 10)",
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
    if args.config_poll_seconds and not args.model_config_file:
        raise CommandError("--model-config-file-poll-wait-seconds needs --model-config-file")
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
            model_config_file_poll_wait_seconds=args.config_poll_seconds,
            grpc_channel_arguments=args.grpc_channel_arguments,
            grpc_socket_path=args.grpc_socket_path,
            monitoring_config_file=args.monitoring_config_file,
            ssl_config_file=args.ssl_config_file,
            enable_signature_method_name_check=args.method_name_check,
            grpc_threads=args.grpc_max_threads,
            rest_threads=args.rest_api_num_threads,
            max_queued_requests=args.max_queued_requests,
            max_request_elements=args.max_request_elements,
            rest_timeout_ms=args.rest_api_timeout_in_ms,
            rest_max_body_bytes=args.rest_api_max_body_bytes,
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
    server.stop(args.shutdown_grace_seconds)
    return 0


def _add_query(verbs) -> None:
    parser = verbs.add_parser("query", help="segment images with a served model over gRPC")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    parser.add_argument("--address", default="localhost:8500", help="host:port of the gRPC API")
    parser.add_argument("--model", required=True, metavar="NAME", help="the served model's name")
    parser.add_argument("--version", type=int, default=None, help="a version (default: the latest)")
    parser.add_argument("--output", required=True, metavar="DIR", help="where the PNGs go")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a request may take")
    parser.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs (see --tls-ca)")
    parser.add_argument("--tls-ca", metavar="PEM", help="TLS, trusting the CA in this file")
    parser.add_argument("--tls-cert", metavar="PEM", help="client certificate (server with client_verify)")
    parser.add_argument("--tls-key", metavar="PEM", help="the client certificate's private key")
    parser.add_argument("--tls-server-name", metavar="NAME", help="the name the server certificate must carry")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or report")
    parser.set_defaults(run=_run_query)


def _run_query(args) -> int:
    import os

    import grpc
    import keras
    import numpy as np

    from keras_fcn.serving.client import FCNClient, tls_credentials
    from keras_fcn.serving.images import decode_image
    from keras_fcn.visualize import class_map_png, overlay

    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        raise CommandError(f"no such image file: {', '.join(missing)}")
    credentials = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        try:
            credentials = tls_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        except (ValueError, OSError) as error:
            raise CommandError(f"TLS files: {error}") from error
    elif args.tls_server_name:
        raise CommandError("--tls-server-name needs --tls or --tls-ca")
    os.makedirs(args.output, exist_ok=True)
    progress = keras.utils.Progbar(len(args.images), unit_name="image", verbose=int(not args.quiet))
    report = []  # printed after the progress bar, which would break the lines up
    with FCNClient(
        args.address,
        args.model,
        version=args.version,
        timeout=args.timeout,
        credentials=credentials,
        tls_server_name=args.tls_server_name,
    ) as client:
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
            overlay(pixels, class_ids).save(stem + "_overlay.png")  # with a legend of the class ids
            present = ", ".join(
                f"{c}: {n}" for c, n in zip(*np.unique(class_ids, return_counts=True), strict=True)
            )
            report.append(f"{path}: {stem}_class_ids.png, {stem}_overlay.png (pixels per class id: {present})")
            progress.add(1)
    if not args.quiet:
        print("\n".join(report))
    return 0


# --- train / evaluate / predict / demo ------------------------------------------------------------------
def _add_train(verbs) -> None:
    parser = verbs.add_parser(
        "train",
        help="train an FCN (checkpoints every epoch; rerun the same command to resume a killed run)",
        description="Train an FCN. Every TrainConfig field is a flag; --config loads a saved config.json "
        "first. Data specs: synthetic[:N], voc:ROOT, sbd:ROOT, folder:IMAGES,MASKS, folder:ROOT, tfds:NAME.",
    )
    parser.add_argument("--config", help="a config.json to start from (flags override it)")
    parser.add_argument(
        "--recipe", choices=_recipe_names(),
        help="train as the reference did on PASCAL VOC (solver, data, length, initialisation; flags override "
        "it), then score the final model on seg11valid next to the paper",
    )  # fmt: skip
    _add_config_flags(parser)
    parser.set_defaults(run=run_train)


def _recipe_names() -> list[str]:
    from keras_fcn.recipes import RECIPES

    return list(RECIPES)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    import dataclasses
    import typing

    from keras_fcn.config import TrainConfig

    kinds = typing.get_type_hints(TrainConfig)  # the fields' real types (the module postpones annotations)
    for item in dataclasses.fields(TrainConfig):
        value = item.default_factory() if item.default is dataclasses.MISSING else item.default
        text = f"{item.metadata.get('help', '')} (default: {value})".replace("%", "%%")
        if item.name == "data_options":
            parser.add_argument(
                "--data-option", dest="data_options", action="append", metavar="KEY=VALUE", default=argparse.SUPPRESS,
                help="extra source argument (JSON value), e.g. image_size=[96,96]; repeatable",
            )  # fmt: skip
            continue
        # Unset flags keep the config's value (a --config file's, or the field's default).
        parser.add_argument(
            "--" + item.name.replace("_", "-"), default=argparse.SUPPRESS, help=text, **_flag_kind(kinds[item.name])
        )


def _flag_kind(kind) -> dict:
    """argparse's arguments for a config field of type `kind`: a switch, a list or one value."""
    import types
    import typing

    union = isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union
    options = list(typing.get_args(kind)) if union else [kind]
    optional = type(None) in options
    options = [option for option in options if option is not type(None)]
    if options == [bool]:
        return {"action": argparse.BooleanOptionalAction}
    sequences = [option for option in options if typing.get_origin(option) is tuple]
    if sequences:  # tuple[int, ...], tuple[float, float]: values after the flag (or one name, when str is allowed)
        element = typing.get_args(sequences[0])[0]
        others = [option for option in options if option not in sequences]
        return {"nargs": "+", "metavar": "V", "type": _converter([element, *others], optional)}
    return {"type": _converter(options, optional)}


def _converter(types: list, optional: bool):
    """Reads a flag's text as the first of `types` it fits (str last); `none` is None for optional fields."""
    ordered = sorted(types, key=lambda t: t is str)
    names = " or ".join(t.__name__ for t in ordered) + (" or none" if optional else "")

    def convert(text: str):
        if optional and text.lower() == "none":
            return None
        for cast in ordered:
            try:
                return cast(text)
            except ValueError:
                continue
        raise argparse.ArgumentTypeError(f"expected {names}, received {text!r}")

    convert.__name__ = names  # argparse names the type in its error messages
    return convert


def _config_from_args(args):
    from keras_fcn.config import TrainConfig

    recipe = getattr(args, "recipe", None)
    if recipe and getattr(args, "config", None):
        raise CommandError("--recipe and --config each give a whole run: give one of them")
    values = TrainConfig.load(args.config).to_dict() if getattr(args, "config", None) else {}
    if recipe:
        from keras_fcn.recipes import recipe_config

        values = recipe_config(recipe).to_dict()
    for key, value in vars(args).items():
        if key in ("config", "recipe", "verb", "run"):
            continue
        if key == "data_options":
            value = {**values.get("data_options", {}), **_data_options(value)}
        values[key] = value
    try:
        return TrainConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise CommandError(str(error)) from None


def run_train(args) -> int:
    from keras_fcn.data import DataError
    from keras_fcn.training import train

    config = _config_from_args(args)
    try:
        if args.recipe:
            from keras_fcn.recipes import train_recipe

            result = train_recipe(args.recipe, config).train
        else:
            result = train(config)
    except (DataError, ValueError) as error:
        raise CommandError(str(error)) from None
    last = {key: values[-1] for key, values in result.history.items() if values}
    shown = ", ".join(f"{key} {value:.4f}" for key, value in sorted(last.items()))
    print(f"keras_fcn: done after epoch {config.epochs}: {shown}")
    print(f"keras_fcn: best model {result.output_dir}/best.keras, final model {result.output_dir}/final.keras")
    return 0


def _load_model(path: str):
    import keras

    import keras_fcn  # noqa: F401  (registers the custom layers)

    if not os.path.exists(path):
        raise CommandError(f"Model file not found: {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError) as error:
        raise CommandError(f"Cannot load model {path}: {error}") from None


def _add_precision_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "float16", "auto"),
        default="float32",
        help="compute precision (auto: bfloat16 on CPUs with AVX512_BF16 or AMX, float16 on GPUs, "
        "otherwise float32); inputs and outputs keep their dtypes (default: float32)",
    )


def _with_precision(model, precision: str):
    from keras_fcn.precision import resolve_precision, with_precision

    resolved = resolve_precision(precision)
    if precision == "auto":
        print(f"keras-fcn: --precision auto: computing in {resolved}", file=sys.stderr)
    return with_precision(model, resolved)


def _low_precision(model) -> bool:
    from keras_fcn.precision import model_precision

    return model_precision(model) != "float32"


def _class_names_for(model_path: str, given: str | None, num_classes: int):
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


def _add_evaluate(verbs) -> None:
    parser = verbs.add_parser(
        "evaluate",
        help="pixel accuracy, mean accuracy, mean IU, frequency-weighted IU and per-class IU",
        description="Evaluate a model at each image's full resolution and print the paper's four metrics "
        "and a per-class IU table.",
    )
    parser.add_argument("--model", required=True, help="a .keras model")
    parser.add_argument("--data", required=True, help="data spec, e.g. voc:VOCdevkit/VOC2012 or synthetic:100")
    parser.add_argument("--split", default="val", help="split (voc: also seg11valid); default: val")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    parser.add_argument("--seed", type=int, default=0, help="base seed of synthetic data")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the metrics to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (the scores are still printed)")
    _add_precision_flag(parser)
    parser.set_defaults(run=run_evaluate)


def _data_options(items) -> dict:
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


def run_evaluate(args) -> int:
    import json

    from keras_fcn.data import DataError, data_errors, from_spec
    from keras_fcn.evaluation import evaluate
    from keras_fcn.metrics import format_scores

    model = _with_precision(_load_model(args.model), args.precision)
    num_classes = int(model.output_shape[-1])
    try:
        source = from_spec(
            args.data, args.split, num_classes=num_classes, seed=args.seed, **_data_options(args.data_option)
        )
        with data_errors():
            result = evaluate(model, source, num_classes, limit=args.limit, verbose=not args.quiet)
    except (DataError, ValueError) as error:
        raise CommandError(str(error)) from None
    print(f"{args.model} on {source.name}: {result['num_images']} images at full resolution")
    print(format_scores(result, result["class_names"]))
    if args.json:
        keys = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu", "num_images")
        payload = {key: result[key] for key in keys}
        payload["per_class_iu"] = [None if v != v else float(v) for v in result["per_class_iu"]]
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
    return 0


def _add_predict(verbs) -> None:
    parser = verbs.add_parser(
        "predict",
        help="segment images: a palette PNG of class ids and an overlay PNG with a legend for each",
        description="Segment images at full resolution. Class names come from --class-names or from a "
        "NAME.classes.txt beside NAME.keras (written by `keras-fcn convert --caffemodel`) or classes.txt beside "
        "the model (written by `keras-fcn train`).",
    )
    parser.add_argument("--model", required=True, help="a .keras model")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--class-names", help="comma-separated class names for the legend")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or list of written files")
    _add_precision_flag(parser)
    parser.set_defaults(run=run_predict)


def run_predict(args) -> int:
    from keras_fcn.data import DataError
    from keras_fcn.predict import predict_files

    model = _with_precision(_load_model(args.model), args.precision)
    names = _class_names_for(args.model, args.class_names, int(model.output_shape[-1]))
    try:
        written = predict_files(model, args.images, args.output, names, verbose=not args.quiet)
    except (DataError, ValueError) as error:
        raise CommandError(str(error)) from None
    for classes_png, overlay_png in [] if args.quiet else written:
        print(f"{classes_png}  {overlay_png}")
    return 0


def _add_demo(verbs) -> None:
    parser = verbs.add_parser(
        "demo",
        help="the whole chain on synthetic data: train an FCN-8s, evaluate, write overlays and curves",
        description="Synthetic shapes -> train an FCN-8s on a narrow VGG16-topology backbone -> evaluate on "
        "held-out images -> overlay PNGs and a training-curve plot. Nothing is downloaded; about 2.5 "
        "minutes on 2 CPU cores.",
    )
    parser.add_argument("--output", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the demo's)")
    parser.add_argument("--steps-per-epoch", type=int, help="steps per epoch (default: the demo's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-serve", dest="serve", action="store_false",
        help="skip the last step: export, serve locally, query over gRPC and compare with the in-process model",
    )
    parser.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from keras_fcn.demo import run_demo

    sizes = {k: v for k, v in (("epochs", args.epochs), ("steps_per_epoch", args.steps_per_epoch)) if v}
    run_demo(args.output, seed=args.seed, serve=args.serve, **sizes)
    return 0


# Each verb is one `_add_<verb>(verbs)` function that registers its parser and sets `run`.
_VERBS: list = [_add_convert, _add_export, _add_serve, _add_query]
_VERBS += [_add_train, _add_evaluate, _add_predict, _add_demo]


if __name__ == "__main__":
    sys.exit(main())
