"""`keras-fcn export`, `serve` and `query`: SavedModels (and ONNX/LiteRT files), the local TF-Serving-API
server, and a gRPC client."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from keras_fcn.cli.common import (
    MODEL_HELP,
    CommandError,
    add_precision_flag,
    add_tile_flags,
    class_names_for,
    data_options,
    load_model,
    low_precision,
    with_precision,
)

# With --check-data, a low-precision export whose class ids differ from the float32 model's on more
# pixels than this is refused (bfloat16 keeps 8 mantissa bits; a trained FCN's argmax rarely moves).
DEFAULT_MIN_CLASS_AGREEMENT = 0.995


def add_export(verbs) -> None:
    parser = verbs.add_parser(
        "export",
        help="write a .keras model as a TF Serving SavedModel version, an ONNX or a LiteRT file",
        description="Every format takes uint8 RGB images (N, H, W, 3) of any size and answers class_ids "
        "(N, H, W) and probabilities (N, H, W, C); each is checked against the model before it is put in place.",
    )
    parser.add_argument("--model", required=True, help=MODEL_HELP)
    parser.add_argument(
        "--output", required=True, metavar="PATH",
        help="saved_model: the model base path (PATH/<version>/); onnx: a .onnx file; litert: a .tflite file",
    )  # fmt: skip
    parser.add_argument(
        "--format", default="saved_model", choices=("saved_model", "onnx", "litert"),
        help="saved_model (TF Serving, default), onnx (opset 17, written from the layers; checked with "
        "onnxruntime) or litert (TFLite built-in ops; checked with the LiteRT interpreter)",
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
    add_precision_flag(parser)
    parser.add_argument(
        "--check-data", metavar="SPEC",
        help="with --precision bfloat16/float16 (saved_model): labelled images (a data spec, e.g. "
        "voc:VOCdevkit/VOC2012 or synthetic:16) on which the check compares the exported model with the float32 "
        "model: class-id agreement and mean IU of both (default: one random probe image, no labels)",
    )  # fmt: skip
    parser.add_argument("--check-split", default="val", help="split of --check-data (default: val)")
    parser.add_argument("--check-limit", type=int, default=16, help="images of --check-data used (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of synthetic --check-data")
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the --check-data source, e.g. image_size=[96,96]")  # fmt: skip
    parser.add_argument(
        "--min-class-agreement", type=float, default=None, metavar="FRACTION",
        help="with --check-data or --quantize: the smallest fraction of pixels whose class id must equal the "
        f"float32 model's; below it nothing is exported (default: {DEFAULT_MIN_CLASS_AGREEMENT}; int8: 0.99)",
    )  # fmt: skip
    parser.add_argument(
        "--quantize", choices=("int8",),
        help="onnx: static int8 quantization with onnxruntime (QDQ, per-channel weights); litert: TFLite's "
        "post-training integer quantization; calibrated on --calibration-data and checked against the float32 "
        "model on --check-data",
    )  # fmt: skip
    parser.add_argument(
        "--calibration-data", metavar="SPEC",
        help="with --quantize: images whose activations set the int8 ranges (a data spec, e.g. "
        "voc:VOCdevkit/VOC2012 or synthetic:64); the check uses its --check-split unless --check-data is given",
    )  # fmt: skip
    parser.add_argument("--calibration-split", default="train", help="split of --calibration-data (default: train)")
    parser.add_argument("--calibration-limit", type=int, default=64,
                        help="images of --calibration-data used (default: 64)")  # fmt: skip
    parser.set_defaults(run=_run_export)


def _run_export(args) -> int:
    from keras_fcn.export import export_saved_model
    from keras_fcn.export_formats import export_litert, export_onnx

    if args.quantize:
        return _run_quantized_export(args)
    if args.calibration_data:
        raise CommandError("--calibration-data goes with --quantize int8")
    if args.format != "saved_model":
        _refuse_saved_model_flags(args, check_data=True)
    if args.min_class_agreement is not None and not args.check_data:
        raise CommandError("--min-class-agreement needs --check-data")
    reference = load_model(args.model)
    model = with_precision(reference, args.precision)
    # The check measures a low-precision export against the float32 model it came from.
    compare = {"reference": reference} if low_precision(model) else {}
    if args.check_data:
        if not compare:
            raise CommandError(
                "--check-data compares a --precision bfloat16/float16 export with the float32 model; this export "
                f"computes in float32. Received: --precision {args.precision}"
            )
        compare["probe_data"] = _check_data(args, int(model.output_shape[-1]))
        compare["min_class_agreement"] = (
            DEFAULT_MIN_CLASS_AGREEMENT if args.min_class_agreement is None else args.min_class_agreement
        )
    class_names = _export_class_names(args, int(model.output_shape[-1]))
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


def _run_quantized_export(args) -> int:
    """`export --quantize int8`: calibrated on --calibration-data, checked on --check-data (or its --check-split)."""
    from keras_fcn.export_formats import export_litert, export_onnx

    if args.format not in ("onnx", "litert"):
        raise CommandError(f"--quantize int8 writes --format onnx or litert. Received: --format {args.format}")
    _refuse_saved_model_flags(args, check_data=False)  # an int8 file is checked on --check-data
    if not args.calibration_data:
        raise CommandError("--quantize int8 needs --calibration-data SPEC: images that set the int8 ranges")
    if args.precision != "float32":
        raise CommandError(f"--quantize int8 starts from the float32 model. Received: --precision {args.precision}")
    model = load_model(args.model)
    num_classes = int(model.output_shape[-1])
    calibration, _ = _pairs(args, "calibration", args.calibration_data, args.calibration_split,
                            args.calibration_limit, num_classes)  # fmt: skip
    probe_data = _pairs(args, "check", args.check_data or args.calibration_data, args.check_split, args.check_limit,
                        num_classes)  # fmt: skip
    int8 = {"quantize": "int8", "calibration_images": calibration, "probe_data": probe_data,
            "min_class_agreement": args.min_class_agreement}  # fmt: skip
    try:
        if args.format == "onnx":
            export_onnx(model, args.output, class_names=_export_class_names(args, num_classes),
                        tolerance=args.tolerance, force=args.force, verbose=not args.quiet, **int8)  # fmt: skip
        else:
            export_litert(model, args.output, tolerance=args.tolerance, force=args.force, verbose=not args.quiet,
                          **int8)  # fmt: skip
    except (ValueError, OSError, ImportError) as error:
        raise CommandError(str(error)) from error
    return 0


def _refuse_saved_model_flags(args, check_data: bool) -> None:
    """The flags an ONNX or LiteRT file has no use for (LiteRT holds no class names), refused by name."""
    flags = [("--version", args.version), ("--max-decoded-pixels", args.max_decoded_pixels)]
    if check_data:
        flags.append(("--check-data", args.check_data))
    given = [flag for flag, value in flags if value is not None]
    if args.format == "litert" and args.class_names:
        given.append("--class-names")
    if given:
        raise CommandError(f"{', '.join(given)} cannot be used with --format {args.format}")


def _export_class_names(args, num_classes: int) -> list[str] | None:
    """--class-names FILE (one a line), else the names beside the model (see `class_names_for`)."""
    if not args.class_names:
        return class_names_for(args.model, None, num_classes)
    try:
        with open(args.class_names, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except OSError as error:
        raise CommandError(f"Cannot read class names {args.class_names}: {error}") from None


def _check_data(args, num_classes: int) -> tuple[list, list]:
    """The first `--check-limit` (image, mask) pairs of `--check-data`, as numpy arrays."""
    return _pairs(args, "check", args.check_data, args.check_split, args.check_limit, num_classes)


def _pairs(args, flag: str, spec: str, split: str, limit: int, num_classes: int) -> tuple[list, list]:
    """The first `limit` (image, mask) pairs of the data `spec`'s `split`, as numpy arrays (`--{flag}-*` flags)."""
    from keras_fcn.data import DataError, data_errors, from_spec

    if limit < 1:
        raise CommandError(f"--{flag}-limit must be positive. Received: --{flag}-limit {limit}")
    try:
        source = from_spec(spec, split, num_classes=num_classes, seed=args.seed, **data_options(args.data_option))
        with data_errors(source):
            pairs = [(image.numpy(), mask.numpy()) for image, mask in source.dataset().take(limit)]
    except (DataError, ValueError) as error:
        raise CommandError(f"--{flag}-data {spec}: {error}") from None
    if not pairs:
        raise CommandError(f"--{flag}-data holds no images. Received: --{flag}-data {spec}")
    images, masks = zip(*pairs, strict=True)
    return list(images), list(masks)


def add_serve(verbs) -> None:
    # Flags also accept tensorflow_model_server's spelling (--model_base_path, --rest_api_port, ...).
    parser = verbs.add_parser("serve", help="serve SavedModels over TF Serving's gRPC and REST APIs")
    parser.add_argument("--model-base-path", "--model_base_path", dest="model_base_path")
    parser.add_argument(
        "--model",
        help="instead of --model-base-path: " + MODEL_HELP + ", exported with its class names as version 1 into a "
        "temporary base path and served from there",
    )
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
        ("--max-request-elements", "--max_request_elements", 3 << 25, "values one Predict request may hold"),
        ("--grpc-max-threads", "--grpc_max_threads", 16, "gRPC worker threads"),
        ("--rest-api-num-threads", "--rest_api_num_threads", 16, "REST worker threads"),
        ("--max-queued-requests", "--max_queued_requests", 64, "requests waiting for a worker; then 429"),
        ("--rest-api-timeout-in-ms", "--rest_api_timeout_in_ms", 30000, "REST request timeout; then 504"),
        ("--rest-api-max-body-bytes", "--rest_api_max_body_bytes", 1 << 30, "largest REST body; then 413"),
        ("--rest-api-max-connections", "--rest_api_max_connections", 1024, "open REST connections; then 503"),
    )
    for flag, alias, default, text in limits:
        parser.add_argument(flag, alias, type=int, default=default, help=f"{text} (default: {default})")
    parser.add_argument(
        "--enable-model-management",
        "--enable_model_management",
        dest="model_management",
        type=_flag_bool,
        default=True,
        metavar="true|false",
        help="answer ModelService/HandleReloadConfigRequest, which loads any path a client names (default: true; "
        "false answers it UNIMPLEMENTED)",
    )
    parser.add_argument(
        "--shutdown-grace-seconds",
        type=float,
        default=10.0,
        help="on SIGTERM, how long requests in flight may finish (default: 10)",
    )
    parser.set_defaults(run=_run_serve)


def _flag_bool(text: str) -> bool:
    """A boolean flag's value as TF Serving's flags take it: true/false (also 1/0)."""
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"expected true or false. Received: {text!r}")
    return value in ("true", "1")


def _run_serve(args) -> int:
    import logging
    import signal
    import threading

    if getattr(args, "model", None) and (args.model_base_path or args.model_config_file):
        raise CommandError("--model serves one model: give it instead of --model-base-path or --model-config-file")
    if not args.model_config_file and not args.model_base_path and not getattr(args, "model", None):
        raise CommandError("give --model-base-path (with --model-name), --model or --model-config-file")
    if args.batching_parameters_file and not args.enable_batching:
        raise CommandError("--batching-parameters-file needs --enable-batching")
    if args.config_poll_seconds and not args.model_config_file:
        raise CommandError("--model-config-file-poll-wait-seconds needs --model-config-file")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if getattr(args, "model", None):  # after the logging set-up: loading the model imports TensorFlow
        args.model_base_path = _export_to_temporary_base_path(args.model)
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
            rest_max_connections=args.rest_api_max_connections,
            enable_model_management=args.model_management,
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


def _export_to_temporary_base_path(model_path: str) -> str:
    """`keras-fcn export` of a .keras file or a preset into a temporary base path, removed when the server exits."""
    import atexit
    import shutil
    import tempfile

    from keras_fcn.export import export_saved_model

    model = load_model(model_path)
    names = class_names_for(model_path, None, int(model.output_shape[-1]))
    base_path = tempfile.mkdtemp(prefix="keras-fcn-serve-")
    atexit.register(shutil.rmtree, base_path, ignore_errors=True)
    try:
        export_saved_model(model, base_path, version=1, class_names=names, verbose=False)
    except (ValueError, OSError) as error:
        raise CommandError(f"Cannot export {model_path}: {error}") from None
    return base_path


def add_query(verbs) -> None:
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
    tiles = parser.add_argument_group(
        "tiles", "an image past the server's pixel cap, sent in overlapping tiles whose probabilities are blended here"
    )
    add_tile_flags(tiles)
    tiles.add_argument("--max-in-flight", type=int, default=4, help="tiles sent at once (default: 4)")
    parser.set_defaults(run=_run_query)


class _Progress:
    """`done/total images, seconds` on one line rewritten in place (a line per image when not a terminal).

    Keras's Progbar would import TensorFlow, which the query verb does not otherwise need.
    """

    def __init__(self, total: int, verbose: bool, unit: str = "image"):
        self.total, self.verbose, self.done, self.unit = total, verbose, 0, unit
        self.started = time.monotonic()
        self.in_place = sys.stdout.isatty()

    def add(self, count: int) -> None:
        self.done += count
        if not self.verbose:
            return
        seconds = time.monotonic() - self.started
        line = (
            f"{self.done}/{self.total} {self.unit}s, {seconds:.1f} s ({1000 * seconds / self.done:.0f} ms/{self.unit})"
        )
        end = "\n" if not self.in_place or self.done == self.total else ""
        print(f"\r{line}" if self.in_place else line, end=end, flush=True)


def _tile_hint(details: str) -> str:
    """For a refusal over the served model's pixel limit: the largest tile (a multiple of 32) under it."""
    import re

    found = re.search(r"images too large: .* the limit is (\d+)", details)
    if not found:
        return ""
    side = 32 * (math.isqrt(int(found.group(1))) // 32)
    return f" (send it in tiles: --tile-size {side})" if side >= 32 else ""


def _run_query(args) -> int:
    # Only light modules: the client speaks TF Serving's protocol without loading TensorFlow.
    import grpc
    import numpy as np

    from keras_fcn.serving.client import FCNClient, tls_credentials
    from keras_fcn.serving.wire.images import decode_image
    from keras_fcn.visualize import overlay, save_class_png, save_image

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
    if args.max_in_flight < 1:
        raise CommandError(f"--max-in-flight must be at least 1. Received: {args.max_in_flight}")
    if args.tile_size is not None:
        from PIL import Image

        from keras_fcn.tiling import tile_count

        try:
            shapes = []
            for path in args.images:
                with Image.open(path) as image:  # the header only: the size
                    shapes.append((image.height, image.width))
            total = sum(tile_count(shape, args.tile_size, args.overlap) for shape in shapes)
        except (OSError, ValueError) as error:
            raise CommandError(str(error)) from error
        progress = _Progress(total, verbose=not args.quiet, unit="tile")
    else:
        progress = _Progress(len(args.images), verbose=not args.quiet)
    os.makedirs(args.output, exist_ok=True)
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
            with open(path, "rb") as f:
                data = f.read()  # read once: sent as it is, or decoded once for the tiles and the overlay
            pixels = None
            try:
                if args.tile_size is None:
                    class_ids = client.predict([data]).class_ids[0]
                    progress.add(1)
                else:
                    pixels = decode_image(data)
                    class_ids = client.predict_tiled(
                        pixels, tile_size=args.tile_size, overlap=args.overlap, blend=args.blend,
                        max_in_flight=args.max_in_flight, on_tiles=progress.add,
                    ).class_ids[0]  # fmt: skip
            except grpc.RpcError as error:
                hint = _tile_hint(error.details() or "") if args.tile_size is None else ""
                raise CommandError(f"{path}: {error.code().name}: {error.details()}{hint}") from error
            except ValueError as error:
                raise CommandError(f"{path}: {error}") from error
            stem = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0])
            save_class_png(class_ids, stem + "_class_ids.png")
            pixels = decode_image(data) if pixels is None else pixels
            save_image(overlay(pixels, class_ids), stem + "_overlay.png")  # with a legend of the class ids
            present = ", ".join(
                f"{c}: {n}" for c, n in zip(*np.unique(class_ids, return_counts=True), strict=True)
            )
            report.append(f"{path}: {stem}_class_ids.png, {stem}_overlay.png (pixels per class id: {present})")
    if not args.quiet:
        print("\n".join(report))
    return 0
