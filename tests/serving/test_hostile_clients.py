"""What hostile or slow clients cost the server, observed from the clients' side only.

`keras-fcn serve` runs in its own process with its default limits; each test looks at what a client
can see: the status and words of the answers, how long they take, when the server closes a
connection, the metrics page, and the server's memory in /proc.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from serving_testing import Server, build_test_model, random_images, reference, wait_until
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

import keras_fcn.serving
from keras_fcn.export import export_saved_model

TIMEOUT_MS = 3000  # --rest_api_timeout_in_ms: the read deadlines of headers and bodies too
MAX_CONNECTIONS = 80
DEFAULT_MAX_ELEMENTS = 3 << 25  # `keras-fcn serve`'s --max_request_elements


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hostile") / "fcn")
    model = build_test_model(num_classes=4, seed=3, variant="fcn32s")
    export_saved_model(model, path, version=1, verbose=False)
    return path, model


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    path, _ = exported
    folder = tmp_path_factory.mktemp("hostile-server")
    monitoring = folder / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }\n")
    flags = ["--rest-api-timeout-in-ms", str(TIMEOUT_MS), "--rest-api-max-connections", str(MAX_CONNECTIONS)]
    flags += ["--monitoring-config-file", str(monitoring)]
    served = Server(path, str(folder / "server.log"), *flags).start()
    yield served
    assert served.stop() == 0


def _post(port: int, body: bytes, path: str = "/v1/models/fcn:predict", timeout: float = 60) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", path, body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read())[1]) / 1024


def _assert_serves(server: Server, model) -> float:
    """A normal REST request is answered rightly; returns how long it took."""
    images = random_images(1, 16, 16, seed=8)
    started = time.monotonic()
    status, body = _post(server.rest_port, json.dumps({"instances": images.tolist()}).encode(), timeout=30)
    took = time.monotonic() - started
    assert status == 200, body
    np.testing.assert_allclose(body["predictions"][0]["probabilities"], reference(model, images)[0], atol=1e-5)
    return took


def _image_body(height: int, width: int) -> bytes:
    """`{"instances": [image]}` of a height x width x 3 image of zeros, written without building it in Python."""
    row = b"[" + b",".join([b"[0,0,0]"] * width) + b"]"
    return b'{"instances": [[' + b",".join([row] * height) + b"]]}"


def test_a_290_mb_body_over_the_element_limit_is_refused_fast_without_growing_the_server(server, exported):
    body = _image_body(6000, 6000)  # 1 x 6000 x 6000 x 3 = 108 M values in 288 MB of JSON
    assert len(body) > 280e6 and 6000 * 6000 * 3 > DEFAULT_MAX_ELEMENTS
    before = _peak_rss_mb(server.process.pid)
    started = time.monotonic()
    status, answer = _post(server.rest_port, body, timeout=120)
    took = time.monotonic() - started
    grown = _peak_rss_mb(server.process.pid) - before
    del body
    assert status == 400, answer
    assert f"more than the {DEFAULT_MAX_ELEMENTS}" in answer["error"] and "--max_request_elements" in answer["error"]
    # The old server parsed for 30 s into lists of Python floats and answered 504.
    assert took < 20, f"refused after {took:.1f} s"
    assert grown < 800, f"the server's peak RSS grew by {grown:.0f} MB"
    # A Content-Length past --rest_api_max_body_bytes (1 GiB) is refused from the header alone: 413.
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as connection:
        connection.sendall(b"POST /v1/models/fcn:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2147483648\r\n\r\n{")
        head = connection.recv(65536)
    assert head.startswith(b"HTTP/1.1 413") and b"2147483648 bytes is larger than the limit" in head
    _assert_serves(server, exported[1])


def _metric_label_values(page: str, label: str) -> set[str]:
    return set(re.findall(label + r'="([^"]*)"', page))


def test_made_up_model_and_signature_names_do_not_grow_the_metrics(server, exported):
    def send_made_up(start: int, count: int) -> None:
        request = predict_pb2.PredictRequest()
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(random_images(1, 8, 8)))
        with grpc.insecure_channel(server.grpc_address) as channel:
            predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
            for i in range(start, start + count):
                request.model_spec.name = f"made-up-{i}" if i % 2 else "fcn"
                request.model_spec.signature_name = f"made-up-signature-{i}"
                request.model_spec.version.value = i
                with pytest.raises(grpc.RpcError):
                    predict(request, timeout=30)
        for i in range(start, start + count // 10):  # and over REST
            _post(server.rest_port, b'{"instances": [[[[0, 0, 0]]]]}', f"/v1/models/made-up-rest-{i}:predict")

    path = "/monitoring/prometheus/metrics"
    send_made_up(0, 1000)
    first = _get(server.rest_port, path)[1].decode()
    send_made_up(1000, 2000)
    second = _get(server.rest_port, path)[1].decode()
    assert len(second.splitlines()) == len(first.splitlines())  # the counts grew, not the page
    assert _metric_label_values(second, "model_name") == {"fcn", "(other)"}
    assert _metric_label_values(second, "signature_name") <= {"", "(other)", "serving_default"}
    assert "made-up" not in second
    totals = re.findall(r':tensorflow:serving:request_count\{model_name="\(other\)",status="NOT_FOUND"\} (\d+)', second)
    assert sum(map(int, totals)) >= 1500 + 150  # every made-up call was counted, under one label


def _drip(connection: socket.socket, data: bytes, pause: float, stop: threading.Event) -> None:
    for byte in data:
        if stop.is_set():
            return
        try:
            connection.sendall(bytes([byte]))
        except OSError:  # the server closed it
            return
        time.sleep(pause)


def _closed_by_server(connection: socket.socket, within: float) -> bool:
    """Whether the server closes `connection` within `within` s (it reads EOF, a reset, or an error answer)."""
    connection.settimeout(within)
    try:
        while data := connection.recv(65536):
            if data.startswith(b"HTTP/1.1 4") or data.startswith(b"HTTP/1.1 5"):
                return True
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_slow_clients_hold_no_worker_and_are_cut_off_by_the_server(server, exported):
    """48 clients drip their bodies and 8 their headers, a byte each 0.5 s: a normal request is answered at
    once, and the server (not the clients) ends every slow one at its read deadline."""
    body = json.dumps({"instances": random_images(1, 8, 8).tolist()}).encode()
    head = f"POST /v1/models/fcn:predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    stop, slow, threads = threading.Event(), [], []
    try:
        for i in range(56):
            connection = socket.create_connection(("127.0.0.1", server.rest_port), timeout=30)
            if i < 48:
                connection.sendall(head)  # the headers at once, then the body a byte at a time
                data = body
            else:
                data = head  # the headers a byte at a time
            slow.append(connection)
            threads.append(threading.Thread(target=_drip, args=(connection, data, 0.5, stop), daemon=True))
        started = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        took = _assert_serves(server, exported[1])
        assert took < 5, f"a normal request took {took:.1f} s while 56 clients dripped"
        # No client gives up: the server closes each slow connection at its deadline.
        closed = [_closed_by_server(c, TIMEOUT_MS / 1000 + 10 - (time.monotonic() - started)) for c in slow]
        assert all(closed), f"{closed.count(False)} slow connections still open {time.monotonic() - started:.0f} s on"
    finally:
        stop.set()
        for connection in slow:
            connection.close()
    _assert_serves(server, exported[1])


def test_connections_past_the_limit_are_refused_503(server, exported):
    idle = []
    try:
        for _ in range(MAX_CONNECTIONS):
            idle.append(socket.create_connection(("127.0.0.1", server.rest_port), timeout=30))
        time.sleep(0.3)  # the server accepts them all
        answer = _raw(server.rest_port, b"GET /v1/models/fcn HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503") and f"--rest_api_max_connections={MAX_CONNECTIONS}".encode() in answer
    finally:
        for connection in idle:
            connection.close()
    wait_until(lambda: _get(server.rest_port, "/v1/models/fcn")[0] == 200, 10, "the closed connections to be let go")
    _assert_serves(server, exported[1])


def _raw(port: int, data: bytes) -> bytes:
    """What the server answers to `data` on a new connection, until it closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(data)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return received


def _reload(server: Server, *configs: tuple[str, str]):
    request = model_management_pb2.ReloadConfigRequest()
    for name, base_path in configs:
        request.config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
    with grpc.insecure_channel(server.grpc_address) as channel:
        return model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=30)


@pytest.mark.parametrize(
    "configs, words",
    [
        ((("fcn", "relative/fcn"),), "Expected model fcn to have an absolute path or URI; got base_path()=relative"),
        ((("fcn", "/x"), ("fcn", "/y")), "Illegal to list model fcn multiple times in config list"),
        ((), "must list at least one model"),
    ],
    ids=["relative-base-path", "duplicate-name", "empty"],
)
def test_bad_reload_configs_are_invalid_argument(server, exported, configs, words):
    with pytest.raises(grpc.RpcError) as caught:
        _reload(server, *configs)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in caught.value.details()
    _assert_serves(server, exported[1])  # the served models are unchanged


def test_model_management_can_be_turned_off(exported, tmp_path):
    path, model = exported
    served = Server(path, str(tmp_path / "server.log"), "--enable_model_management=false").start()
    try:
        with pytest.raises(grpc.RpcError) as caught:
            _reload(served, ("other", os.path.abspath(path)))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "--enable_model_management=false" in caught.value.details()
        _assert_serves(served, model)
    finally:
        assert served.stop() == 0


def test_the_pages_files_are_served_as_they_are_and_nothing_else(server):
    """The page's static routes without a browser: each file byte for byte with its headers; any other
    path, traversals included, is 404 without touching the file system."""
    web = os.path.join(os.path.dirname(os.path.abspath(keras_fcn.serving.__file__)), "web")
    for path, name, kind in (
        ("/", "index.html", "text/html"),
        ("/index.html", "index.html", "text/html"),
        ("/app.js", "app.js", "text/javascript"),
        ("/style.css", "style.css", "text/css"),
        ("/app.js?v=2", "app.js", "text/javascript"),
    ):
        connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
        connection.request("GET", path)
        reply = connection.getresponse()
        with open(os.path.join(web, name), "rb") as f:
            assert (reply.status, reply.read()) == (200, f.read()), path
        assert reply.getheader("Content-Type").startswith(kind)
        assert "default-src 'self'" in reply.getheader("Content-Security-Policy")
        assert reply.getheader("X-Content-Type-Options") == "nosniff"
        connection.close()
    for path in (
        "/../setup.py",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2fsetup.py",
        "//etc/passwd",
        "/web/index.html",
        "/index.html/",
        "/app.js/../index.html",
        "/server.py",
        "/%00",
    ):
        answer = _raw(server.rest_port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.1 404"), (path, answer[:200])
        assert b"Not found: GET" in answer
    # A CORS preflight to the API: 200 with an Origin, 400 without; elsewhere 404.
    preflight = "OPTIONS /v1/models/fcn:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    with_origin = (preflight + "Origin: http://example.org\r\n\r\n").encode()
    assert _raw(server.rest_port, with_origin).startswith(b"HTTP/1.1 200")
    assert _raw(server.rest_port, (preflight + "\r\n").encode()).startswith(b"HTTP/1.1 400")
    assert _raw(server.rest_port, b"OPTIONS /app.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(
        b"HTTP/1.1 404"
    )
