"""The server under load, faults and hostile input: `keras-fcn serve` in its own process, on loopback.

Every hostile request must get INVALID_ARGUMENT / 400 or RESOURCE_EXHAUSTED / 429 (a well-formed
request naming what does not exist: NOT_FOUND), never INTERNAL / 500 or a crash, while a bystander
client keeps getting right answers.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from serving_testing import Server, build_test_model, random_images, reference, wait_until
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    predict_pb2,
    prediction_service_pb2_grpc,
)

from keras_fcn.export import export_saved_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_ELEMENTS = 1 << 20  # the served limit: small, so hostile shapes meet it
MAX_BODY = 1 << 21  # REST body limit: some giant b64 bodies pass it, some do not
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
NAMED_NOTHING = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}  # parsed, names nothing served
CORPUS = settings(
    derandomize=True,  # a fixed corpus: the same requests every run
    database=None,
    deadline=None,
    max_examples=40,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A base path with version 1 of a tiny FCN-32s and that model."""
    path = str(tmp_path_factory.mktemp("robust") / "fcn")
    model = build_test_model(num_classes=4, seed=11, variant="fcn32s")
    export_saved_model(model, path, version=1, verbose=False)
    return path, model


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    path, _ = exported
    log = str(tmp_path_factory.mktemp("robust-log") / "server.log")
    flags = ("--max-request-elements", str(MAX_ELEMENTS), "--rest-api-max-body-bytes", str(MAX_BODY))
    served = Server(path, log, *flags).start()
    yield served
    assert served.stop() == 0


def _request(images: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fcn"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return request


def _encoded_request(data: bytes) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fcn"
    request.model_spec.signature_name = "serve_encoded"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([data]))
    return request


def _post(port: int, body: bytes, timeout: float = 60) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/v1/models/fcn:predict", body=body)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data)
    finally:
        connection.close()


class Bystander:
    """A client sending good requests in a loop, each answer compared with the Keras model."""

    def __init__(self, address: str, model):
        self.images = random_images(1, 16, 16, seed=21)
        self.expected = reference(model, self.images)
        self.address, self.results = address, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set():
                try:
                    answer = stub.Predict(_request(self.images), timeout=60)
                    got = tf.make_ndarray(answer.outputs["probabilities"])
                    self.results.append(bool(np.abs(got - self.expected).max() < 1e-5))
                except grpc.RpcError as error:
                    self.results.append(error.code())
                time.sleep(0.05)

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        wait_until(lambda: len(self.results) >= 2, 60, "the bystander's answers")
        self._stop.set()
        self._thread.join(60)
        assert set(self.results) == {True}, self.results  # every answer arrived, and was right


def _assert_still_serving(server: Server, model) -> None:
    server.alive()
    images = random_images(1, 24, 16, seed=5)
    with grpc.insecure_channel(server.grpc_address) as channel:
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_request(images), timeout=60)
    np.testing.assert_allclose(tf.make_ndarray(answer.outputs["probabilities"]), reference(model, images), atol=1e-5)
    status, body = _post(server.rest_port, json.dumps({"instances": images.tolist()}).encode())
    assert status == 200
    np.testing.assert_allclose(body["predictions"][0]["probabilities"], reference(model, images)[0], atol=1e-5)


# --- hostile REST bodies --------------------------------------------------------------------------

_BAD_LEAVES = st.one_of(
    st.text(max_size=4),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),  # 0.5, NaN, Infinity, 1e308: not uint8
    # Beyond int32: TF Serving reads uint8 inputs as int32 and casts them (256 becomes 0, as TensorFlow's
    # cast does), so only integers past int32 are refused there and here.
    st.integers(min_value=1 << 31, max_value=10**40),
    st.integers(min_value=-(10**40), max_value=-(1 << 31) - 1),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), max_size=2),
)


def _image_with_a_bad_leaf(draw) -> bytes:
    h, w = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pixels = np.zeros((1, h, w, 3), int).tolist()
    pixels[0][draw(st.integers(0, h - 1))][draw(st.integers(0, w - 1))][draw(st.integers(0, 2))] = draw(_BAD_LEAVES)
    key = draw(st.sampled_from(["instances", "inputs"]))
    return json.dumps({key: pixels}, allow_nan=True).encode()


@st.composite
def hostile_bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "nesting", "leaf", "numbers", "json", "b64", "signature"]))
    if kind == "bytes":
        return draw(st.binary(max_size=3000))
    if kind == "nesting":  # a million brackets deep at most
        depth = draw(st.integers(1, 1_000_000))
        return b'{"instances": ' + b"[" * depth + b"]" * depth + b"}"
    if kind == "leaf":
        return _image_with_a_bad_leaf(draw)
    if kind == "numbers":
        number = draw(st.sampled_from(["1e999", "-1e999", "9" * 5000, "NaN", "Infinity", "-Infinity", "1.5"]))
        return ('{"instances": [[[[' + ", ".join([number] * 3) + "]]]]}").encode()
    if kind == "json":  # any JSON without a number a uint8 image could hold
        value = draw(
            st.recursive(
                _BAD_LEAVES,
                lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                max_leaves=30,
            )
        )
        key = draw(st.sampled_from(["instances", "inputs", "signature_name", "other"]))
        return json.dumps({key: value}, allow_nan=True).encode()
    if kind == "b64":  # giant, invalid or non-image b64 to serve_encoded, or b64 where uint8 is expected
        size = draw(st.integers(0, 3_000_000))
        text = draw(st.sampled_from(["A", "!", "iVBORw0KGgo"])) * (size // 11 + 1)
        signature = draw(st.sampled_from(["serve_encoded", "serving_default"]))
        return json.dumps({"signature_name": signature, "instances": [{"b64": text[:size]}]}).encode()
    value = draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=2), st.none(), st.booleans()))
    return json.dumps({"signature_name": value, "instances": [[[[0, 0, 0]]]]}).encode()


def test_hostile_rest_bodies_are_refused(server, exported):
    _, model = exported
    seen = []

    @CORPUS
    @given(body=hostile_bodies())
    @example(body=json.dumps({"signature_name": "serve_encoded", "instances": [{"b64": "A" * (3 << 20)}]}).encode())
    @example(body=b'{"instances": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}")
    @example(body=b'{"instances": [[[[1e999, NaN, -Infinity]]]]}')
    def send(body):
        status, answer = _post(server.rest_port, body)
        seen.append(status)
        assert status in (400, 413), (status, answer, body[:200])
        assert isinstance(answer.get("error"), str) and answer["error"]

    with Bystander(server.grpc_address, model):
        send()
    assert len(seen) >= CORPUS.max_examples and 413 in seen  # the corpus reached the body limit too
    _assert_still_serving(server, model)


# --- malformed protobufs and hostile tensors over gRPC ------------------------------------------


def _raw_predict(channel):
    """Predict taking and returning raw bytes: whatever the test writes reaches the server."""
    return channel.unary_unary("/tensorflow.serving.PredictionService/Predict")


_GOOD = _request(random_images(1, 8, 8, seed=3)).SerializeToString()


@st.composite
def malformed_messages(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "truncated", "flipped", "shape"]))
    if kind == "bytes":
        return draw(st.binary(min_size=1, max_size=2000))
    if kind == "truncated":
        return _GOOD[: draw(st.integers(1, len(_GOOD) - 1))]
    if kind == "flipped":
        data = bytearray(_GOOD)
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)
    # A tensor claiming a shape it does not fill: huge, negative, or more values than elements.
    dims = draw(st.lists(st.integers(-(2**62), 2**62), min_size=1, max_size=6))
    values = draw(st.lists(st.integers(0, 255), max_size=8))
    tensor = tensor_pb2.TensorProto(dtype=draw(st.sampled_from([types_pb2.DT_UINT8, types_pb2.DT_STRING])))
    if tensor.dtype == types_pb2.DT_STRING:
        tensor.string_val.extend(bytes([v]) for v in values)
    else:
        tensor.int_val.extend(values)
    elements = 1
    for size in dims:
        tensor.tensor_shape.dim.add(size=size)
        elements *= size
    if 0 <= elements <= MAX_ELEMENTS and len(values) in (1, elements):
        tensor.tensor_shape.dim.add(size=MAX_ELEMENTS + 1)  # keep it hostile: past the limit
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fcn"
    request.inputs[draw(st.sampled_from(["images", "image_bytes"]))].CopyFrom(tensor)
    return request.SerializeToString()


def test_malformed_and_truncated_protobufs_are_refused(server, exported):
    _, model = exported
    codes = []
    with grpc.insecure_channel(server.grpc_address) as channel, Bystander(server.grpc_address, model):
        predict = _raw_predict(channel)

        @CORPUS
        @given(message=malformed_messages())
        def send(message):
            try:
                answer = predict(message, timeout=60)
            except grpc.RpcError as error:
                codes.append(error.code())
                assert error.code() in REFUSED | NAMED_NOTHING, (error.code(), error.details())
            else:  # a flipped pixel value or name byte can leave a valid request: then a valid answer
                codes.append(grpc.StatusCode.OK)
                assert predict_pb2.PredictRequest.FromString(message).inputs
                assert predict_pb2.PredictResponse.FromString(answer).outputs

        send()
        assert predict(_GOOD, timeout=60)  # the raw path itself works
    assert grpc.StatusCode.INVALID_ARGUMENT in codes
    _assert_still_serving(server, model)


# --- hostile images through serve_encoded -------------------------------------------------------


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG")
    return buffer.getvalue()


def _png_claiming(width: int, height: int, rows: bytes = b"") -> bytes:
    """A PNG whose header claims width x height; its data holds `rows` (zlib) or nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _hostile_images() -> dict[str, bytes]:
    image = random_images(1, 24, 24, seed=9)[0]
    png, jpeg = _png(image), _jpeg(image)
    corrupt_png = bytearray(png)
    corrupt_png[len(png) // 2] ^= 0xFF  # the IDAT checksum no longer matches
    corrupt_jpeg = bytearray(jpeg)
    corrupt_jpeg[len(jpeg) // 2 : len(jpeg) // 2 + 64] = b"\xff" * 64
    cases = {f"png-cut-{n}": png[:n] for n in (0, 8, 20, 33, len(png) // 2, len(png) - 12)}
    cases |= {f"jpeg-cut-{n}": jpeg[:n] for n in (2, 20, len(jpeg) // 2)}
    cases |= {"png-corrupt": bytes(corrupt_png), "jpeg-corrupt": bytes(corrupt_jpeg)}
    # 60000 x 60000 = 3.6 G pixels claimed by a few hundred bytes: a decompression bomb.
    cases["png-bomb"] = _png_claiming(60_000, 60_000, b"\x00" * (1 << 16))
    cases["png-0x0"] = _png_claiming(0, 0)
    cases["gif"] = b"GIF89a" + b"\x00" * 40
    return cases


HOSTILE_IMAGES = _hostile_images()


@pytest.mark.parametrize("name", sorted(HOSTILE_IMAGES))
def test_hostile_images_are_refused(server, name):
    data = HOSTILE_IMAGES[name]
    with grpc.insecure_channel(server.grpc_address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_encoded_request(data), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    body = {"signature_name": "serve_encoded", "instances": [{"b64": base64.b64encode(data).decode()}]}
    status, answer = _post(server.rest_port, json.dumps(body).encode())
    assert status == 400, answer
    server.alive()


def test_a_1x65535_image_is_answered_rightly(server, exported):
    _, model = exported
    image = random_images(1, 1, 65535, seed=4)  # a legal image of an extreme shape
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        answer = stub.Predict(_encoded_request(_png(image[0])), timeout=120)
    np.testing.assert_allclose(tf.make_ndarray(answer.outputs["probabilities"]), reference(model, image), atol=1e-5)
    _assert_still_serving(server, model)


# --- load (short: CI; long: slow) and versions under load ---------------------------------------


def _stress(*flags: str) -> str:
    command = [sys.executable, os.path.join(REPO, "tools", "stress_serving.py"), *flags]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "errors: 0" in done.stdout
    return done.stdout


def test_short_load_grpc_and_rest_mixed_has_no_errors():
    print(_stress("--clients", "16", "--requests", "300", "--max-rss-growth", "1.0"))


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("KERAS_FCN_STRESS"),
    reason="the 5,000-request load (about 2 min on 2 cores) runs with KERAS_FCN_STRESS=1; "
    "test_short_load_grpc_and_rest_mixed_has_no_errors is its short version",
)
def test_load_of_5000_requests_keeps_rss_flat():
    output = _stress("--clients", "16", "--requests", "5000", "--max-rss-growth", "0.10")
    print(output)
    assert "5000 requests" in output


@pytest.mark.slow
def test_new_deleted_and_corrupt_versions_under_load_fail_no_request():
    output = _stress("--clients", "16", "--requests", "400", "--churn", "--max-rss-growth", "1.0")
    print(output)
    assert "corrupt version 3 appeared" in output and "1: ('AVAILABLE'" in output


# --- faults: SIGKILL, SIGTERM -------------------------------------------------------------------


class Clients:
    """Client threads sending good requests (gRPC and REST) until stopped; every outcome kept."""

    def __init__(self, server: Server, model, count: int = 6, size: int = 96):
        self.server, self.images = server, random_images(1, size, size, seed=13)
        self.expected = reference(model, self.images)
        self.outcomes: list[tuple[float, float, object]] = []  # (start, end, True | code | error name)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(count)]

    def _loop(self, index: int) -> None:
        body = json.dumps({"instances": self.images.tolist()}).encode()
        with grpc.insecure_channel(self.server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    if index % 2 == 0:
                        answer = stub.Predict(_request(self.images), timeout=60)
                        got = tf.make_ndarray(answer.outputs["probabilities"])
                        outcome = bool(np.abs(got - self.expected).max() < 1e-5)
                    else:
                        status, reply = _post(self.server.rest_port, body)
                        outcome = status
                        if status == 200:
                            got = np.asarray(reply["predictions"][0]["probabilities"])
                            outcome = bool(np.abs(got - self.expected[0]).max() < 1e-5)
                except grpc.RpcError as error:
                    outcome = error.code()
                except OSError as error:  # refused, reset: the REST server is gone
                    outcome = type(error).__name__
                self.outcomes.append((start, time.monotonic(), outcome))
                if outcome is not True and outcome != 200:
                    time.sleep(0.05)

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(90)


@pytest.mark.slow
def test_sigkill_mid_request_gives_unavailable_and_a_restarted_server_serves(exported, tmp_path):
    path, model = exported
    server = Server(path, str(tmp_path / "server.log")).start()
    with Clients(server, model) as clients:
        wait_until(lambda: sum(o[2] in (True, 200) for o in clients.outcomes) >= 6, 120, "answers before the kill")
        killed = time.monotonic()
        server.process.kill()  # SIGKILL: no drain, requests in flight are cut
        server.process.wait(30)
        wait_until(lambda: any(o[0] > killed + 0.5 for o in clients.outcomes), 60, "requests after the kill")
        server.start()  # the same ports
        restarted = time.monotonic()
        wait_until(lambda: sum(o[0] > restarted and o[2] in (True, 200) for o in clients.outcomes) >= 6, 120, "answers")
    assert server.stop() == 0
    before = [o[2] for o in clients.outcomes if o[1] < killed]
    during = [o[2] for o in clients.outcomes if killed <= o[1] and o[0] < restarted]
    after = [o[2] for o in clients.outcomes if o[0] > restarted]
    assert set(before) <= {True, 200}
    grpc_failures = {o for o in during if isinstance(o, grpc.StatusCode)}
    assert grpc_failures == {grpc.StatusCode.UNAVAILABLE}, during  # never a hang or INTERNAL
    assert set(after) <= {True, 200}, after


def _drain_log(log_path: str) -> tuple[int, str]:
    """From the server's log: how many requests were in flight when the drain began, and how it ended."""
    with open(log_path) as log:
        text = log.read()
    counts = re.search(r"Draining: (\d+) gRPC call\(s\) and (\d+) REST request\(s\) in flight", text)
    ended = re.search(r"Drained: (.*)", text)
    assert counts and ended, text[-3000:]
    return int(counts[1]) + int(counts[2]), ended[1]


@pytest.mark.slow
def test_sigterm_under_load_finishes_requests_in_flight_and_refuses_new_ones(exported, tmp_path):
    path, model = exported
    log_path = str(tmp_path / "server.log")
    server = Server(path, log_path, "--shutdown-grace-seconds", "30").start()
    with Clients(server, model, count=8, size=256) as clients:
        wait_until(lambda: sum(o[2] in (True, 200) for o in clients.outcomes) >= 8, 120, "answers before the stop")
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
        stopped = time.monotonic()
        wait_until(lambda: sum(o[0] > stopped for o in clients.outcomes) >= 8, 60, "requests after the exit")
    # The requests the server was answering when the drain began were all answered in full. Which
    # client requests those were is the server's knowledge, not a matter of client-side timing: under
    # load, a request sent a second before the signal may not have reached a handler yet (client and
    # server threads queue for the GIL and the cores), and is then refused like a new one.
    in_flight, ended = _drain_log(log_path)
    assert in_flight >= 1 and ended == "every request in flight was answered"
    answered_after_signal = [o for o in clients.outcomes if o[1] > signalled and o[2] is True]
    assert len(answered_after_signal) >= in_flight
    later = [o[2] for o in clients.outcomes if o[0] > stopped]
    refused = {grpc.StatusCode.UNAVAILABLE, "ConnectionRefusedError"}
    assert set(later) <= refused, later
    # Otherwise a request gets a full, right answer or a clean refusal: gRPC UNAVAILABLE, REST 503 (it
    # was waiting for a worker), or its connection closed unanswered (not yet accepted when the port
    # closed; over gRPC, one in transit then is CANCELLED by gRPC itself). Never a wrong answer or
    # another error, and a close only around the stop.
    closed = {"ConnectionResetError", "RemoteDisconnected", "BrokenPipeError", grpc.StatusCode.CANCELLED}
    odd = [
        o
        for o in clients.outcomes
        if o[2] not in {True, 200, 503} | refused and not (o[2] in closed and o[1] > signalled and o[0] < stopped)
    ]
    assert not odd, odd
