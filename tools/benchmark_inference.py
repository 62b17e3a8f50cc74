"""FCN inference speed against the machine's own matrix-multiply speed (a roofline), on CPU or GPU.

    python tools/benchmark_inference.py                          # everything below (long on a CPU)
    python tools/benchmark_inference.py --variants fcn8s --geometries aligned --sizes 512x512 --batches 1
    python tools/benchmark_inference.py --quick --narrow --json out.json   # a smoke run in seconds

In one process: the FLOP/s of an n x n matmul in float32 and bfloat16 (the GEMM); then for each FCN
variant, geometry, image size (WIDTHxHEIGHT), batch size and precision: milliseconds per image,
GFLOP/s counted from the layers' shapes (`keras_fcn.flops`), the ratio to a GEMM in the same precision
measured just before (the load of a shared machine drifts during a run), and the time of each stage
(VGG blocks, fc6, fc7, the rest: the head; and fc6 through Conv2D's direct convolution, to compare),
for the Keras model (a traced `tf.function`), the exported `serving_default` signature (uint8 in) and
the same signature over gRPC to the local server (`keras_fcn.serving`, in this process, replies
filtered to `class_ids`). Times are the best of `--repeats` calls after one warm-up call. Weights are
random: speed does not depend on them. Prints a table; `--json PATH` writes every figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from keras_fcn import atomic  # noqa: E402

PATHS = ("keras", "saved_model", "grpc", "onnx", "onnx_int8", "litert", "litert_int8")
FILE_PATHS = ("onnx", "onnx_int8", "litert", "litert_int8")  # files computing in float32 or int8: float32 rows
FULL_RUN = {"variants": ["fcn8s", "fcn32s"], "geometries": ["aligned", "caffe"], "sizes": [(512, 512), (375, 500)],
            "batches": [1, 8], "repeats": 4, "gemm_size": 4096}  # fmt: skip
NARROW = {"backbone_filters": (8, 16, 32, 64, 64), "fc_units": 128}


def best_seconds(call, repeats: int) -> float:
    """The shortest of `repeats` timed calls of `call()` after one untimed warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def gemm_flops(dtype: str, n: int, repeats: int) -> float:
    """FLOP/s of an (n, n) x (n, n) matmul in `dtype` (2 n^3 FLOPs a call)."""
    import tensorflow as tf

    a = tf.cast(tf.random.stateless_normal((n, n), seed=(0, 1)), dtype)
    b = tf.cast(tf.random.stateless_normal((n, n), seed=(0, 2)), dtype)
    matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)[:1]))  # the sync costs nothing
    return 2 * n**3 / best_seconds(lambda: matmul().numpy(), repeats)


def machine() -> dict:
    import tensorflow as tf

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpus": [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus],
        "tensorflow": tf.__version__,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def stage_seconds(model, images, repeats: int) -> dict:
    """Seconds of the VGG blocks (preprocessing included), fc6, fc7, and fc6 computed by Conv2D's call."""
    import keras
    import tensorflow as tf

    pool5 = model.get_layer("block5_pool").output
    backbone = keras.Model(model.input, pool5)
    fc6, fc7 = model.get_layer("fc6"), model.get_layer("fc7")
    times = {}
    run_backbone = tf.function(lambda x: backbone(x, training=False))
    times["vgg"] = best_seconds(lambda: run_backbone(images).numpy(), repeats)
    features = run_backbone(images)
    run_fc6 = tf.function(lambda x: fc6(x))
    times["fc6"] = best_seconds(lambda: run_fc6(features).numpy(), repeats)
    # The same layer and weights through Conv2D's own call (the direct convolution), for comparison.
    run_conv = tf.function(lambda x: fc6(x) if type(fc6) is keras.layers.Conv2D else keras.layers.Conv2D.call(fc6, x))
    times["fc6_as_conv2d"] = best_seconds(lambda: run_conv(features).numpy(), repeats)
    features = run_fc6(features)
    run_fc7 = tf.function(lambda x: fc7(x))
    times["fc7"] = best_seconds(lambda: run_fc7(features).numpy(), repeats)
    return times


def stage_flops(flops: dict) -> dict:
    stages = {"vgg": 0, "fc6": flops.get("fc6", 0), "fc7": flops.get("fc7", 0), "head": 0}
    for name, value in flops.items():
        if name.startswith("block"):
            stages["vgg"] += value
        elif name not in ("fc6", "fc7"):
            stages["head"] += value
    return stages


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' -> (height, width)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 500x375. Received: {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes. Received: {text!r}")
    return height, width


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", help="default: fcn8s fcn32s")
    parser.add_argument("--geometries", nargs="+", choices=["aligned", "caffe"], help="default: both")
    parser.add_argument("--sizes", nargs="+", type=parse_size, metavar="WxH",
                        help="image sizes, WIDTHxHEIGHT (default: 512x512 500x375)")
    parser.add_argument("--batches", nargs="+", type=int, help="default: 1 8")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS,
                        help="keras: the model in a tf.function; saved_model: the exported serving_default; "
                        "grpc: that signature over gRPC to the local server; onnx, onnx_int8, litert, litert_int8: "
                        "the ONNX file in onnxruntime and the LiteRT file in its interpreter, float32 or int8 "
                        "(calibrated on 4 generated images), in the float32 rows")
    parser.add_argument("--no-stages", dest="stages", action="store_false", help="skip the per-stage times")
    parser.add_argument("--repeats", type=int, help="timed calls per figure; the best is kept (default: 4)")
    parser.add_argument("--gemm-size", type=int, help="n of the n x n GEMM (default: 4096)")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--narrow", action="store_true", help=f"a narrow VGG16-topology backbone {NARROW}")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: fcn8s, aligned, 64x64, batch 1, 1 repeat, 256x256 GEMM (unless given)")
    parser.add_argument("--json", help="write every figure to this JSON file")
    args = parser.parse_args(argv)  # fmt: skip
    # Flags left out take the full run's defaults, or with --quick the smoke run's.
    quick = {"variants": ["fcn8s"], "geometries": ["aligned"], "sizes": [(64, 64)], "batches": [1],
             "repeats": 1, "gemm_size": 256}  # fmt: skip
    for name, value in (quick if args.quick else FULL_RUN).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repeats < 1 or args.gemm_size < 1 or min(args.batches) < 1:
        parser.error("--repeats, --gemm-size and --batches must be positive")
    return args


def run(args) -> dict:
    import keras
    import tensorflow as tf

    import keras_fcn
    from keras_fcn.export import export_saved_model
    from keras_fcn.flops import forward_flops
    from keras_fcn.precision import with_precision

    report = {"machine": machine(), "gemm_flops": {}, "rows": [], "grpc_vs_in_process": []}
    for precision in args.precisions:
        report["gemm_flops"][precision] = gemm_flops(precision, args.gemm_size, max(args.repeats, 2))
        print(f"GEMM {args.gemm_size}^2 {precision}: {report['gemm_flops'][precision] / 1e9:.0f} GFLOP/s")
    work = tempfile.mkdtemp(prefix="fcn-benchmark-")
    rng = np.random.default_rng(0)
    for variant in args.variants:
        for geometry in args.geometries:
            keras.utils.set_random_seed(0)
            base = keras_fcn.build_fcn(variant, args.classes, geometry=geometry, **(NARROW if args.narrow else {}))
            for precision in args.precisions:
                model = with_precision(base, precision)
                # On a shared machine the load drifts: the ratios use a GEMM measured just before.
                gemm = gemm_flops(precision, args.gemm_size, max(args.repeats, 2))
                report["gemm_flops"][precision] = max(report["gemm_flops"][precision], gemm)
                call_keras = tf.function(lambda x, model=model: model(x, training=False))
                signature = server = None
                if "saved_model" in args.paths or "grpc" in args.paths:
                    name = f"{variant}-{geometry}-{precision}"
                    exported = export_saved_model(model, os.path.join(work, name), verbose=False)
                    signature = tf.saved_model.load(exported.path).signatures["serving_default"]
                if "grpc" in args.paths:
                    server = _GRPCClient(name, os.path.dirname(exported.path))
                sessions = {}
                if precision == "float32":  # an ONNX file computes in float32 whatever the model's precision
                    for path in FILE_PATHS:
                        if path in args.paths:
                            sessions[path] = _file_runner(model, work, f"{variant}-{geometry}-{path}", path)
                try:
                    for height, width in args.sizes:
                        for batch in args.batches:
                            pixels = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
                            flops = forward_flops(model, pixels.shape)
                            total = sum(flops.values())
                            floats = tf.constant(pixels.astype(np.float32))
                            calls = {
                                "keras": lambda f=call_keras, x=floats: f(x).numpy(),
                                "saved_model": lambda f=signature, p=pixels: _class_ids(f, p),
                                "grpc": lambda f=server, p=pixels: f.predict(p),
                                **{path: lambda f=run, p=pixels: f(p) for path, run in sessions.items()},
                            }  # fmt: skip
                            seconds = {}
                            for path in [p for p in args.paths if p not in FILE_PATHS or p in sessions]:
                                seconds[path] = best_seconds(calls[path], args.repeats)
                                row = {
                                    "variant": variant, "geometry": geometry, "precision": precision,
                                    "height": height, "width": width, "batch": batch, "path": path,
                                    "gflop": total / 1e9, "ms_per_image": 1000 * seconds[path] / batch,
                                    "gflops": total / seconds[path] / 1e9,
                                    "gemm_gflops": gemm / 1e9, "ratio_to_gemm": total / seconds[path] / gemm,
                                }  # fmt: skip
                                if path == "keras" and args.stages:
                                    stages = stage_seconds(model, floats, args.repeats)
                                    conv = stages.pop("fc6_as_conv2d")
                                    stages["head"] = max(seconds[path] - sum(stages.values()), 0.0)
                                    row["fc6_as_conv2d_ms"] = 1000 * conv
                                    row["stage_ms"] = {k: 1000 * v for k, v in stages.items()}
                                    row["stage_gflops"] = {
                                        k: v / stages[k] / 1e9 if stages[k] else None
                                        for k, v in stage_flops(flops).items()
                                    }
                                report["rows"].append(row)
                                _print_row(row)
                            if "grpc" in seconds and "saved_model" in seconds and batch == 1:
                                ratio = seconds["grpc"] / seconds["saved_model"]
                                report["grpc_vs_in_process"].append(
                                    {"variant": variant, "geometry": geometry, "precision": precision,
                                     "height": height, "width": width, "batch": batch, "ratio": ratio}
                                )  # fmt: skip
                                print(f"    gRPC round trip / in-process signature call, batch 1: {ratio:.2f}x")
                finally:
                    if server is not None:
                        server.close()
    return report


def _file_runner(model, work: str, name: str, path: str):
    """`images -> class_ids` of `model`'s ONNX (onnxruntime) or LiteRT file, float32 or int8."""
    from keras_fcn.data import synthetic
    from keras_fcn.export_formats import export_litert, export_onnx, litert_runner, onnx_runner

    int8 = {}
    if path.endswith("_int8"):
        source = synthetic(num_examples=4, image_size=(128, 128), num_classes=5, seed=0)
        # Random weights: the class ids are not what is measured here, so no agreement is asked.
        int8 = {"quantize": "int8", "calibration_images": [source.load(i)[0] for i in range(4)],
                "min_class_agreement": 0.0}  # fmt: skip
    if path.startswith("onnx"):
        result = export_onnx(model, os.path.join(work, f"{name}.onnx"), verbose=False, **int8)
        run = onnx_runner(result.path, outputs=["class_ids"])
    else:
        result = export_litert(model, os.path.join(work, f"{name}.tflite"), verbose=False, **int8)
        run = litert_runner(result.path, num_threads=os.cpu_count())  # all cores, as TF and onnxruntime use
    return lambda images: run(images)["class_ids"]


def _class_ids(signature, pixels: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    return signature(images=tf.constant(pixels))["class_ids"].numpy()


class _GRPCClient:
    """The local model server on free ports and a stub asking `serving_default` for `class_ids`."""

    def __init__(self, name: str, base_path: str):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        from keras_fcn.serving.server import ModelServer

        self.name = name
        self.server = ModelServer(name, base_path, port=0, rest_port=None).start()
        options = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]
        self.channel = grpc.insecure_channel(self.server.grpc_address, options=options)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def predict(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.name
        request.model_spec.signature_name = "serving_default"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
        request.output_filter.append("class_ids")
        return tf.make_ndarray(self.stub.Predict(request, timeout=600).outputs["class_ids"])

    def close(self) -> None:
        self.channel.close()
        self.server.stop()


def _print_row(row: dict) -> None:
    head = (
        f"{row['variant']:<7}{row['geometry']:<8}{row['width']:>4}x{row['height']:<4} b{row['batch']:<3}"
        f"{row['precision']:<9}{row['path']:<12}{row['ms_per_image']:>9.1f} ms/img {row['gflops']:>7.1f} GFLOP/s "
        f"{row['ratio_to_gemm']:>5.2f}x GEMM ({row['gemm_gflops']:.0f})"
    )
    if "stage_ms" in row:
        head += "  stages ms: " + " ".join(f"{k} {v:.0f}" for k, v in row["stage_ms"].items())
        head += f" (fc6 as Conv2D: {row['fc6_as_conv2d_ms']:.0f})"
    print(head, flush=True)


def finish(report: dict, args: argparse.Namespace) -> dict:
    """`report` with the arguments added, written whole to `args.json` when given."""
    report["arguments"] = {k: v for k, v in vars(args).items() if k != "json"}
    if args.json:
        atomic.write_text(args.json, json.dumps(report, indent=1))
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    return finish(run(args), args)


if __name__ == "__main__":
    main()
