"""Load and version churn against `keras-fcn serve`: many clients, gRPC and REST mixed, every answer checked.

    python tools/stress_serving.py --clients 16 --requests 5000
    python tools/stress_serving.py --clients 16 --requests 2000 --churn

Exports two narrow FCNs with different weights (versions 1 and 2), starts `keras-fcn serve` in its
own process on loopback ports, and runs `--clients` threads: even ones over gRPC (TF Serving's
stubs), odd ones over REST (one keep-alive connection each), each sending `serving_default` one
image and comparing the probabilities with the in-process Keras model of the version that answered
(REST does not say which: either version's answer is accepted). Any RPC error, HTTP error or wrong
answer counts as an error. The server's RSS is read after a warm-up (a tenth of the requests) and
at the end. Prints p50/p99 latency per protocol and the RSS growth; exits 1 on any error or on RSS
growth above `--max-rss-growth`.

With `--churn`, while clients run: version 2 appears (served once loaded), version 2 is deleted
(rolled back to 1), then a corrupt version 3 appears (its load fails, reported by GetModelStatus,
and version 1 keeps serving). The run fails unless every request succeeded and the status says so.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

NARROW = {"backbone_filters": (4, 8, 16, 32, 32), "fc_units": 32}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base_path: str, grpc_port: int, rest_port: int) -> subprocess.Popen:
    """`keras-fcn serve` on loopback ports, polling the base path every half second."""
    command = [sys.executable, "-m", "keras_fcn.cli", "serve", "--model-base-path", base_path, "--model-name", "fcn"]
    command += ["--port", str(grpc_port), "--rest-port", str(rest_port), "--file-system-poll-wait-seconds", "0.5"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def model_status(channel) -> dict[int, tuple[str, str]]:
    """{version: (state name, error message)} from GetModelStatus."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "fcn"
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    name = get_model_status_pb2.ModelVersionStatus.State.Name
    return {s.version: (name(s.state), s.status.error_message) for s in response.model_version_status}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # the server may still be starting
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


class Load:
    """`requests` requests from `clients` threads; latencies per protocol, errors with their first messages."""

    def __init__(self, grpc_address: str, rest_port: int, image: np.ndarray, expected: dict, requests: int):
        self.grpc_address, self.rest_port, self.image, self.expected = grpc_address, rest_port, image, expected
        self.requests = requests
        self.until = None  # a thread that must end before the clients stop (the churn)
        self._next = itertools.count()
        self._lock = threading.Lock()
        self.done = 0
        self.errors: list[str] = []
        self.latencies: dict[str, list[float]] = {"gRPC": [], "REST": []}

    def _check(self, probabilities: np.ndarray, version: int | None) -> str | None:
        candidates = [self.expected[version]] if version is not None else list(self.expected.values())
        if any(np.abs(probabilities - e).max() <= 1e-4 for e in candidates if e.shape == probabilities.shape):
            return None
        return f"wrong answer (version {version})"

    def client(self, index: int) -> None:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        protocol = "gRPC" if index % 2 == 0 else "REST"
        if protocol == "gRPC":
            channel = grpc.insecure_channel(self.grpc_address, options=[("grpc.max_receive_message_length", 1 << 30)])
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "fcn"
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(self.image))
            request.output_filter.append("probabilities")
        else:
            body = json.dumps({"instances": self.image.tolist()}).encode()
            connection = http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=60)
        try:
            while next(self._next) < self.requests or (self.until is not None and self.until.is_alive()):
                started = time.perf_counter()
                try:
                    if protocol == "gRPC":
                        response = stub.Predict(request, timeout=60)
                        error = self._check(
                            tf.make_ndarray(response.outputs["probabilities"]), response.model_spec.version.value
                        )
                    else:
                        connection.request("POST", "/v1/models/fcn:predict", body=body)
                        reply = connection.getresponse()
                        data = reply.read()
                        if reply.status != 200:
                            error = f"HTTP {reply.status}: {data[:200]!r}"
                        else:
                            answer = json.loads(data)["predictions"][0]["probabilities"]
                            error = self._check(np.asarray(answer, np.float64)[None], None)
                except Exception as failure:  # every failure is counted, none stops the run
                    error = f"{type(failure).__name__}: {str(failure)[:200]}"
                    if protocol == "REST":
                        connection.close()  # reconnects on the next request
                elapsed = time.perf_counter() - started
                with self._lock:
                    self.done += 1
                    self.latencies[protocol].append(elapsed)
                    if error:
                        self.errors.append(f"{protocol}: {error}")
        finally:
            (channel if protocol == "gRPC" else connection).close()


def churn(base_path: str, stage: str, channel, log: list[str]) -> None:
    """Version 2 appears, is deleted (rollback to 1), then a corrupt version 3 appears."""
    os.rename(os.path.join(stage, "2"), os.path.join(base_path, "2"))
    wait_for(lambda: model_status(channel).get(2, ("",))[0] == "AVAILABLE", 120, "version 2 to load")
    log.append("version 2 appeared and was served")
    shutil.rmtree(os.path.join(base_path, "2"))
    wait_for(lambda: model_status(channel).get(1, ("",))[0] == "AVAILABLE", 120, "the rollback to version 1")
    log.append("version 2 deleted: rolled back to version 1")
    corrupt = os.path.join(stage, "3")
    os.makedirs(os.path.join(corrupt, "variables"))
    with open(os.path.join(corrupt, "saved_model.pb"), "wb") as f:
        f.write(b"\x0a\xff\xff\xff not a SavedModel")
    os.rename(corrupt, os.path.join(base_path, "3"))
    wait_for(lambda: model_status(channel).get(3, ("", ""))[1], 120, "version 3 to fail")
    log.append(f"corrupt version 3 appeared: status {model_status(channel)[3]!r}"[:200])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=5000, help="requests in all (after the warm-up)")
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--churn", action="store_true", help="new, deleted and corrupt versions during the run")
    parser.add_argument("--max-rss-growth", type=float, default=0.10, help="fail above this RSS growth (0.10: 10%%)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.requests < args.clients:
        parser.error(f"need clients >= 1 and requests >= clients. Received: {args.clients}, {args.requests}")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import grpc
    import keras
    import psutil

    import keras_fcn
    from keras_fcn.export import export_saved_model

    work = tempfile.mkdtemp(prefix="fcn-stress-")
    base_path, stage = os.path.join(work, "fcn"), os.path.join(work, "stage")
    image = np.random.default_rng(0).integers(0, 256, (1, args.size, args.size, 3), dtype=np.uint8)
    expected = {}
    for version, seed in ((1, 1), (2, 2)):
        keras.utils.set_random_seed(seed)
        model = keras_fcn.build_fcn("fcn8s", 21, **NARROW)
        rng = np.random.default_rng(seed)
        for layer in model.layers:  # a fresh FCN scores all zeros: give the versions different answers
            if layer.name.startswith("score"):
                layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
        export_saved_model(model, base_path if version == 1 else stage, version=version, verbose=False)
        logits = np.asarray(model(image.astype(np.float32), training=False), np.float64)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        expected[version] = e / e.sum(-1, keepdims=True)
    if not args.churn:
        del expected[2]

    grpc_port, rest_port = free_port(), free_port()
    server = start_server(base_path, grpc_port, rest_port)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    events: list[str] = []
    try:
        wait_for(lambda: model_status(channel).get(1, ("",))[0] == "AVAILABLE", 180, "the server")
        process = psutil.Process(server.pid)
        warm_up = Load(f"127.0.0.1:{grpc_port}", rest_port, image, expected, max(args.requests // 10, args.clients))
        _run(warm_up, args.clients)
        rss_warm = process.memory_info().rss
        load = Load(f"127.0.0.1:{grpc_port}", rest_port, image, expected, args.requests)
        if args.churn:
            load.until = threading.Thread(target=churn, args=(base_path, stage, channel, events), daemon=True)
            load.until.start()
        started = time.perf_counter()
        _run(load, args.clients)
        elapsed = time.perf_counter() - started
        rss_end = process.memory_info().rss
        status = model_status(channel)
    finally:
        channel.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)

    growth = rss_end / rss_warm - 1
    errors = warm_up.errors + load.errors
    print(
        f"{args.clients} clients (half gRPC, half REST), {load.done} requests after {warm_up.done} warm-up, "
        f"{args.size}x{args.size} images, narrow FCN-8s, {os.cpu_count()} CPUs, {load.done / elapsed:.0f} req/s"
    )
    print(f"{'protocol':<10}{'requests':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for protocol, latencies in load.latencies.items():
        if latencies:
            p50, p99 = (1000 * np.percentile(latencies, q) for q in (50, 99))
            print(f"{protocol:<10}{len(latencies):>10}{p50:>10.1f}{p99:>10.1f}")
    print(
        f"server RSS after warm-up {rss_warm / 2**20:.0f} MiB, at the end {rss_end / 2**20:.0f} MiB: "
        f"{100 * growth:+.1f}%"
    )
    print(f"errors: {len(errors)}" + "".join(f"\n  {e}" for e in errors[:5]))
    failed = bool(errors) or growth > args.max_rss_growth
    if args.churn:
        for event in events:
            print(f"churn: {event}")
        ok = len(events) == 3 and status.get(3, ("", ""))[1] and status.get(1, ("",))[0] == "AVAILABLE"
        print(f"after the churn: {status}" if ok else f"the churn did not complete: {events}, status {status}")
        failed = failed or not ok
    return 1 if failed else 0


def _run(load: Load, clients: int) -> None:
    threads = [threading.Thread(target=load.client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    sys.exit(main())
