"""Latency and throughput of an FCN served over gRPC, against the in-process call of the same SavedModel.

    python tools/benchmark_serving.py --variant fcn8s --size 256 --requests 64

Exports a model (random weights, or `--model M.keras`), starts `keras-fcn serve` in a separate process
with batching off, then on, and drives it with 1 and 8 concurrent gRPC clients (TF Serving's own
stubs, `serve_encoded` with one PNG per request, replies filtered to `class_map_png_bytes` as
`FCNClient` asks by default). The in-process baseline calls the same signature of the same
SavedModel on the same bytes. Prints p50/p99 latency, throughput and the ratios against the goals
(batch-1 gRPC round trip <= 1.15x the in-process call; batching >= 1.5x throughput at 8 clients).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np


def measure(call, clients: int, requests: int) -> dict:
    """Runs `call()` `requests` times from `clients` threads; latency percentiles and throughput."""
    latencies = []

    def one(_):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    elapsed = time.perf_counter() - started
    return {
        "p50_ms": 1000 * float(np.percentile(latencies, 50)),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "per_s": requests / elapsed,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base_path: str, batching_file: str | None):
    import grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    port = free_port()
    command = [sys.executable, "-m", "keras_fcn.cli", "serve", "--model-base-path", base_path]
    command += ["--model-name", "fcn", "--port", str(port), "--rest-port", "0"]
    if batching_file:
        command += ["--enable-batching", "--batching-parameters-file", batching_file]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 1 << 30)])
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "fcn"
    deadline = time.monotonic() + 180
    while True:
        try:
            model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
            return process, channel
        except grpc.RpcError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the server did not start") from None
            time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .keras model (default: a random FCN of --variant)")
    parser.add_argument("--variant", default="fcn8s")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--narrow", action="store_true", help="a narrow backbone (fast, for smoke runs)")
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--requests", type=int, default=64, help="requests per measurement")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import grpc  # noqa: F401
    import keras
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    import keras_fcn
    from keras_fcn.export import export_saved_model
    from keras_fcn.serving.wire.images import encode_png

    if args.model:
        keras_fcn.register_keras_objects()
        model = keras.saving.load_model(args.model, compile=False)
    else:
        narrow = {"backbone_filters": (8, 16, 32, 64, 64), "fc_units": 128} if args.narrow else {}
        model = keras_fcn.build_fcn(args.variant, args.classes, **narrow)
    work = tempfile.mkdtemp(prefix="fcn-benchmark-")
    result = export_saved_model(model, os.path.join(work, "fcn"), verbose=False)
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    data = encode_png(image)
    print(
        f"model {args.model or args.variant}, {args.size}x{args.size} PNG of {len(data)} bytes, "
        f"{args.requests} requests per run, {os.cpu_count()} CPUs"
    )

    signature = tf.saved_model.load(result.path).signatures["serve_encoded"]
    batch = tf.constant([data])
    in_process = lambda signature=signature: {k: v.numpy() for k, v in signature(image_bytes=batch).items()}
    for _ in range(3):
        in_process()
    rows = {("in-process", 1): measure(in_process, 1, args.requests)}
    rows[("in-process", 8)] = measure(in_process, 8, args.requests)

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fcn"
    request.model_spec.signature_name = "serve_encoded"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([data]))
    request.output_filter.append("class_map_png_bytes")
    batching_file = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving", "batching_parameters.txt"
    )
    for label, batching in (("gRPC", None), ("gRPC+batching", batching_file)):
        process, channel = start_server(os.path.dirname(result.path), batching)
        try:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            call = lambda stub=stub: stub.Predict(request, timeout=120)
            for _ in range(3):
                call()
            for clients in (1, 8):
                rows[(label, clients)] = measure(call, clients, args.requests)
        finally:
            channel.close()
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)

    print(f"{'path':<16}{'clients':>8}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}")
    for (label, clients), row in rows.items():
        print(f"{label:<16}{clients:>8}{row['p50_ms']:>10.1f}{row['p99_ms']:>10.1f}{row['per_s']:>10.1f}")
    latency_ratio = rows[("gRPC", 1)]["p50_ms"] / rows[("in-process", 1)]["p50_ms"]
    batching_ratio = rows[("gRPC+batching", 8)]["per_s"] / rows[("gRPC", 8)]["per_s"]
    print(f"batch-1 gRPC round trip / in-process call (p50): {latency_ratio:.2f}x (goal <= 1.15x)")
    print(f"throughput at 8 clients, batching on / off: {batching_ratio:.2f}x (goal >= 1.5x)")


if __name__ == "__main__":
    main()
