"""Limits no request can cross: pixels inside the SavedModel, declared sizes, bodies, workers, deadlines."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import grpc
import numpy as np
import psutil
import pytest
import tensorflow as tf
from serving_testing import build_test_model, random_images, reference, wait_until
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from keras_fcn.export import export_saved_model
from keras_fcn.serving import ModelServer
from keras_fcn.serving.errors import ServingError
from keras_fcn.serving.models import signatures as signatures_lib
from keras_fcn.serving.models.batching import BatchScheduler
from keras_fcn.serving.models.config import BatchingParameters

PIXELS = 1024  # the pixel limit the test model is exported with: 32x32 passes, 32x33 does not


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A base path with version 1 of a tiny FCN exported with `max_decoded_pixels=PIXELS`."""
    path = str(tmp_path_factory.mktemp("limits") / "fcn")
    model = build_test_model(num_classes=5, seed=7, variant="fcn32s")
    result = export_saved_model(model, path, version=1, max_decoded_pixels=PIXELS, verbose=False)
    return path, model, tf.saved_model.load(result.path)


def _request(tensor: tensor_pb2.TensorProto, signature: str = "serving_default", alias: str = "images"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "fcn"
    request.model_spec.signature_name = signature
    request.inputs[alias].CopyFrom(tensor)
    return request


def _predict(server, request, timeout: float = 30):
    with grpc.insecure_channel(server.grpc_address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)


def _refusal(server, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _predict(server, request)
    return caught.value


def _post(url: str, body: bytes, headers: dict | None = None, chunks=None):
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        if chunks is not None:
            connection.request("POST", "/v1/models/fcn:predict", body=iter(chunks), encode_chunked=True)
        else:
            connection.request("POST", "/v1/models/fcn:predict", body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


# --- the pixel limit lives in the SavedModel -----------------------------------------------------


def test_serving_default_refuses_more_pixels_than_exported_with(limited):
    _, model, loaded = limited
    function = loaded.signatures["serving_default"]
    for shape, pixels in (((1, 32, 33, 3), 1056), ((2, 16, 33, 3), 1056)):  # the batch counts too
        with pytest.raises(
            tf.errors.InvalidArgumentError, match=f"images too large: {pixels} input pixels.*limit is {PIXELS}"
        ):
            function(images=tf.zeros(shape, tf.uint8))
    images = random_images(1, 32, 32, seed=1)  # exactly the limit: served, and right
    answer = function(images=tf.constant(images))
    np.testing.assert_allclose(answer["probabilities"].numpy(), reference(model, images), atol=1e-5)


def test_pixel_limit_holds_through_the_server(limited):
    path, model, _ = limited
    with ModelServer("fcn", path, port=0, rest_port=0) as server:
        error = _refusal(server, _request(tf.make_tensor_proto(np.zeros((1, 40, 40, 3), np.uint8))))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "images too large: 1600 input pixels in one request, the limit is 1024" in error.details()
        status, body = _post(
            server.rest_address, json.dumps({"instances": np.zeros((1, 40, 40, 3), int).tolist()}).encode()
        )
        assert status == 400 and "images too large: 1600 input pixels" in body["error"]
        images = random_images(1, 32, 32, seed=2)
        answer = _predict(server, _request(tf.make_tensor_proto(images)))
        np.testing.assert_allclose(
            tf.make_ndarray(answer.outputs["probabilities"]), reference(model, images), atol=1e-5
        )


def test_an_image_past_the_pixel_limit_is_answered_in_tiles_blended_on_the_client(limited, tmp_path, capsys):
    from PIL import Image

    from keras_fcn.cli import main
    from keras_fcn.serving import FCNClient
    from keras_fcn.tiling import predict_tiled, tile_count

    path, model, _ = limited
    image = random_images(1, 75, 101, seed=4)[0]  # 7,575 pixels: 7x the limit, not a multiple of the tile
    Image.fromarray(image).save(tmp_path / "large.png")
    expected_ids, expected = predict_tiled(model, image, tile_size=32, overlap=0.25, return_probabilities=True)
    with ModelServer("fcn", path, port=0, rest_port=None) as server, FCNClient(server.grpc_address, "fcn") as client:
        sent = []
        predict = client._predict

        class Recorder:  # the requests the client sends, to see each one's version
            def future(self, request, timeout):
                sent.append(request.model_spec.version.value if request.model_spec.HasField("version") else None)
                return predict.future(request, timeout=timeout)

        client._predict = Recorder()
        answer = client.predict_tiled(image, tile_size=32, overlap=0.25, max_in_flight=3, probabilities=True)
        client._predict = predict
        assert answer.model_version == 1 and answer.class_ids.shape == (1, 75, 101)
        # The served tiles blended here are the local model's tiles blended by predict_tiled.
        np.testing.assert_allclose(answer.probabilities[0], expected, atol=1e-5)
        np.testing.assert_array_equal(answer.class_ids[0], expected_ids)
        assert len(sent) == tile_count((75, 101), 32, 0.25) == 3 * 4  # rows at 0, 24, 43; columns at 0, 24, 48, 69
        assert sent[:3] == [None] * 3 and sent[3:] == [1] * 9  # after the first group: pinned to the version

        argv = ["query", "--address", server.grpc_address, "--model", "fcn", str(tmp_path / "large.png")]
        capsys.readouterr()
        assert main([*argv, "--output", str(tmp_path / "whole")]) == 2
        error = capsys.readouterr().err
        assert "images too large: 7575 decoded pixels" in error and "(send it in tiles: --tile-size 32)" in error
        assert main([*argv, "--output", str(tmp_path / "tiles"), "--tile-size", "32", "--max-in-flight", "2"]) == 0
        assert "12/12 tiles" in capsys.readouterr().out
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "tiles" / "large_class_ids.png")), expected_ids)


# --- declared sizes are checked before any array exists ------------------------------------------


def _one_value_for(shape) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, int_val=[7])
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    return tensor


def test_a_55_byte_request_claiming_6000x6000_is_refused_cheaply(limited):
    path, _, _ = limited
    request = _request(_one_value_for((1, 6000, 6000, 3)))
    request.model_spec.signature_name = ""
    assert request.ByteSize() <= 60
    process = psutil.Process()
    with ModelServer("fcn", path, port=0, rest_port=None) as server:
        _predict(server, _request(tf.make_tensor_proto(random_images(1, 8, 8))))  # warm
        before = process.memory_info().rss
        for _ in range(5):
            error = _refusal(server, request)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        grown = process.memory_info().rss - before
    assert "[1, 6000, 6000, 3]" in error.details() and "108000000 values" in error.details()
    assert f"the limit is {3 << 25} values" in error.details()
    assert grown < 50 << 20  # the 108 MB array (and the model run over it) never existed


def test_the_element_limit_is_configurable(limited):
    path, model, _ = limited
    with ModelServer("fcn", path, port=0, rest_port=None, max_request_elements=75) as server:
        error = _refusal(server, _request(tf.make_tensor_proto(random_images(1, 5, 6))))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "90 values" in error.details() and "the limit is 75 values" in error.details()
        images = random_images(1, 5, 5, seed=3)  # 75 values: allowed
        answer = _predict(server, _request(tf.make_tensor_proto(images)))
        np.testing.assert_allclose(
            tf.make_ndarray(answer.outputs["probabilities"]), reference(model, images), atol=1e-5
        )
    with pytest.raises(ValueError, match="Received: max_request_elements=0"):
        ModelServer("fcn", path, max_request_elements=0)


def _content(shape, data: bytes) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, tensor_content=data)
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    return tensor


@pytest.mark.parametrize(
    "tensor",
    [
        tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, int_val=[1, 2, 3], tensor_shape={"dim": [{"size": 1}] * 3}),
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_UINT8,
            int_val=list(range(13)),
            tensor_shape={"dim": [{"size": 1}, {"size": 2}, {"size": 2}, {"size": 3}]},
        ),
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_UINT8,
            int_val=list(range(5)),
            tensor_shape={"dim": [{"size": 1}, {"size": 2}, {"size": 2}, {"size": 3}]},
        ),
        tensor_pb2.TensorProto(
            dtype=types_pb2.DT_UINT8,
            int_val=[],
            tensor_shape={"dim": [{"size": 1}, {"size": 2}, {"size": 2}, {"size": 3}]},
        ),
        _content((1, 2, 2, 3), b"\x01" * 11),
        _content((1, 2, 2, 3), b"\x01" * 13),
        _content((1, -2, 2, 3), b""),
        tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_content=b"abc", tensor_shape={"dim": [{"size": 1}]}),
    ],
    ids=[
        "3-for-3",
        "13-for-12",
        "5-for-12",
        "0-for-12",
        "content-short",
        "content-long",
        "negative-dim",
        "string-content",
    ],
)
def test_values_that_do_not_fill_the_shape_are_refused(limited, tensor):
    path, _, _ = limited
    alias = "image_bytes" if tensor.dtype == types_pb2.DT_STRING else "images"
    signature = "serve_encoded" if alias == "image_bytes" else "serving_default"
    with ModelServer("fcn", path, port=0, rest_port=None) as server:
        error = _refusal(server, _request(tensor, signature, alias))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == f"tensor parsing error: {alias}"  # TF Serving's text


def test_one_value_stands_for_the_whole_shape_as_in_tensorflow(limited):
    path, model, _ = limited
    with ModelServer("fcn", path, port=0, rest_port=None) as server:
        answer = _predict(server, _request(_one_value_for((1, 9, 8, 3))))
    np.testing.assert_allclose(
        tf.make_ndarray(answer.outputs["probabilities"]), reference(model, np.full((1, 9, 8, 3), 7)), atol=1e-5
    )


# --- REST: body size, chunked bodies -------------------------------------------------------------


def test_rest_body_limit_and_chunked_bodies(limited):
    path, model, _ = limited
    images = random_images(1, 8, 8, seed=4)
    body = json.dumps({"instances": images.tolist()}).encode()
    with ModelServer("fcn", path, port=0, rest_port=0, rest_max_body_bytes=len(body)) as server:
        status, answer = _post(server.rest_address, body)
        assert status == 200
        np.testing.assert_allclose(answer["predictions"][0]["probabilities"], reference(model, images)[0], atol=1e-5)
        pieces = [body[i : i + 100] for i in range(0, len(body), 100)]  # many chunks
        assert _post(server.rest_address, b"", chunks=pieces) == (status, answer)
        too_big = body + b" "
        status, error = _post(server.rest_address, too_big)
        assert status == 413 and f"{len(too_big)} bytes is larger than the limit of {len(body)}" in error["error"]
        status, error = _post(server.rest_address, b"", chunks=[body, b" "])
        assert status == 413 and "larger than the limit" in error["error"]
        # A Content-Length claiming 2 GB is refused from the header alone.
        status, error = _post(server.rest_address, b"{}", headers={"Content-Length": str(2 << 30)})
        assert status == 413 and f"{2 << 30} bytes" in error["error"]
        assert _raw_http(
            server.rest_port, b"POST /v1/models/fcn:predict HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        ).startswith(b"HTTP/1.1 400")
        # A superscript two is a digit to str.isdigit() but no number to int(): 400, not 500.
        assert _raw_http(
            server.rest_port, "POST /v1/models/fcn:predict HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n".encode("latin-1")
        ).startswith(b"HTTP/1.1 400")
        assert _post(server.rest_address, body)[0] == 200  # and it still serves


def _raw_http(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


# --- bounded workers: RESOURCE_EXHAUSTED / 429, not a queue -------------------------------------


@pytest.fixture
def blocked_runs(monkeypatch):
    """Makes every signature call wait until `release` is set; `entered` counts calls that started."""
    release, entered = threading.Event(), []
    real = signatures_lib.run_signature

    def run(function, inputs):
        entered.append(1)
        release.wait(60)
        return real(function, inputs)

    monkeypatch.setattr(signatures_lib, "run_signature", run)
    yield release, entered
    release.set()


def test_grpc_past_its_bound_answers_resource_exhausted(limited, blocked_runs):
    path, model, _ = limited
    release, entered = blocked_runs
    request = _request(tf.make_tensor_proto(random_images(1, 8, 8)))
    with ModelServer("fcn", path, port=0, rest_port=None, grpc_threads=1, max_queued_requests=0) as server:
        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            first = stub.Predict.future(request, timeout=60)
            wait_until(lambda: entered, 30, "the first request to run")
            with pytest.raises(grpc.RpcError) as caught:
                stub.Predict(request, timeout=30)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            np.testing.assert_allclose(
                tf.make_ndarray(first.result().outputs["probabilities"]),
                reference(model, random_images(1, 8, 8)),
                atol=1e-5,
            )
            stub.Predict(request, timeout=30)  # the bound is free again


def test_rest_past_its_bound_answers_429(limited, blocked_runs):
    path, _, _ = limited
    release, entered = blocked_runs
    body = json.dumps({"instances": random_images(1, 8, 8).tolist()}).encode()
    with ModelServer("fcn", path, port=0, rest_port=0, rest_threads=1, max_queued_requests=1) as server:
        results = []
        running = threading.Thread(target=lambda: results.append(_post(server.rest_address, body)))
        running.start()
        wait_until(lambda: entered, 30, "the first request to run")
        waiting = threading.Thread(target=lambda: results.append(_post(server.rest_address, body)))
        waiting.start()  # takes the one queue place
        wait_until(lambda: server._rest.admitted == 2, 30, "the second request to be queued")
        status, error = _post(server.rest_address, body)
        assert status == 429 and "too many REST requests" in error["error"]
        release.set()
        running.join(30)
        waiting.join(30)
        assert [status for status, _ in results] == [200, 200]
        wait_until(lambda: server._rest.admitted == 0, 30, "the requests to be answered")
        assert _post(server.rest_address, body)[0] == 200


# --- deadlines -----------------------------------------------------------------------------------


def test_rest_timeout_answers_504(limited, monkeypatch):
    path, _, _ = limited
    real = signatures_lib.run_signature

    def slow(function, inputs):
        time.sleep(0.6)  # longer than the 300 ms timeout below
        return real(function, inputs)

    monkeypatch.setattr(signatures_lib, "run_signature", slow)
    body = json.dumps({"instances": random_images(1, 8, 8).tolist()}).encode()
    with ModelServer("fcn", path, port=0, rest_port=0, rest_timeout_ms=300) as server:
        status, error = _post(server.rest_address, body)
    assert status == 504
    assert "Deadline exceeded" in error["error"] and "--rest_api_timeout_in_ms=300" in error["error"]


def test_grpc_deadline_is_answered_deadline_exceeded(limited, blocked_runs):
    path, _, _ = limited
    release, _ = blocked_runs
    with ModelServer("fcn", path, port=0, rest_port=None) as server:
        with pytest.raises(grpc.RpcError) as caught:
            _predict(server, _request(tf.make_tensor_proto(random_images(1, 8, 8))), timeout=0.5)
        release.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_requests_whose_deadline_passed_in_the_batch_queue_are_not_run():
    calls = []
    # Only a full batch or a minute's wait would start a batch: the request waits in the queue.
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, batch_timeout_micros=60_000_000))
    try:
        with pytest.raises(ServingError) as caught:
            scheduler.run(
                lambda **x: calls.append(x), {"images": np.zeros((1, 4, 4, 3), np.uint8)}, time.monotonic() + 0.3
            )
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and not calls
        with pytest.raises(ServingError) as caught:  # already past: not even queued
            scheduler.run(
                lambda **x: calls.append(x), {"images": np.zeros((1, 4, 4, 3), np.uint8)}, time.monotonic() - 1
            )
        assert caught.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and not calls
    finally:
        scheduler.stop()


def test_a_client_that_sends_its_whole_too_large_body_before_reading_gets_the_413(limited):
    """Python's http.client sends the whole body before it reads: a body a little past the limit is read and
    dropped, then answered 413 on a connection that stays usable; a huge one is answered at once."""
    import http.client

    path, _, _ = limited
    with ModelServer("fcn", path, port=0, rest_port=0, rest_max_body_bytes=1 << 20) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
        for size in (3 << 20, 12 << 20):  # past the limit, within what is read and dropped
            connection.request("POST", "/v1/models/fcn:predict", body=b" " * size)
            reply = connection.getresponse()
            assert reply.status == 413 and f"{size} bytes is larger" in json.loads(reply.read())["error"]
        connection.request("GET", "/v1/models/fcn")  # the same connection still answers
        assert connection.getresponse().status == 200
        connection.close()
