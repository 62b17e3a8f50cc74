"""TF Serving's REST API on the standard library's HTTP server.

- `GET  /v1/models/M[/versions/N|/labels/L]` -> `{"model_version_status": [...]}`
- `GET  /v1/models/M[/versions/N|/labels/L]/metadata`
  -> `{"model_spec": ..., "metadata": {"signature_def": ...}}`
- `POST /v1/models/M[/versions/N|/labels/L]:predict` with `{"signature_name": ..., "instances": [...]}`
  (row format, answered with `predictions`) or `{"inputs": ...}` (columnar, answered with `outputs`).
  Binary values travel as `{"b64": "..."}`; string outputs whose alias ends in `_bytes` come back so.
Errors are `{"error": message}` with the HTTP code of the gRPC status.

Bounds: a body larger than `max_body_bytes` (Content-Length or chunked) is refused with 429 before
it is read; `num_threads` workers serve connections and at most `max_queued` more wait for one,
any further connection is answered 429 at once; a request not answered within `timeout_ms`
(`--rest_api_timeout_in_ms`, counted from when its connection was accepted) gets 504.
"""

from __future__ import annotations

import base64
import http.server
import json
import queue
import re
import socket
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from .errors import ServingError, check_deadline, log
from .versions import State

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>predict|classify|regress)|/(?P<metadata>metadata))?/?$"
)
MAX_VERSION = (1 << 63) - 1  # versions are int64
MAX_BODY_BYTES = 1 << 30  # as the gRPC message limit
DEFAULT_TIMEOUT_MS = 30_000  # TF Serving's --rest_api_timeout_in_ms
DEFAULT_THREADS = 16
DEFAULT_MAX_QUEUED = 64
_DRAIN_BYTES = 1 << 20  # unread request bytes discarded before a close, so the client sees the answer
HTTP_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _decode_b64(value):
    """Replaces every `{"b64": s}` in a JSON value by the bytes it encodes."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (ValueError, TypeError) as error:
                raise _bad(f"Unable to base64 decode: {error}") from error
        return {k: _decode_b64(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_b64(v) for v in value]
    return value


def _to_array(alias: str, value, datatype: int) -> np.ndarray:
    """A JSON value as a numpy array of the signature's dtype, refusing lossy conversions."""
    dtype = tf.dtypes.as_dtype(datatype)
    try:
        if dtype == tf.string:
            array = np.array(value, dtype=object)
            if not all(isinstance(v, (bytes, str)) for v in array.flat):
                raise ValueError('expected strings or {"b64": ...} values')
            strings = np.empty(array.shape, dtype=object)
            strings.flat[:] = [v.encode() if isinstance(v, str) else v for v in array.flat]
            return strings
        array = np.array(value)
        if array.dtype == object or array.dtype.kind not in "biuf":
            raise ValueError("ragged or non-numeric")
        if dtype.is_integer and array.dtype.kind == "f":
            raise ValueError(f"{dtype.name} expected, got floating point values")
        if dtype.is_integer and array.size and (array.min() < dtype.min or array.max() > dtype.max):
            raise ValueError(f"values out of the {dtype.name} range")
        return array.astype(dtype.as_numpy_dtype)
    except (ValueError, TypeError, OverflowError) as error:
        raise _bad(f"Failed to process input '{alias}': {error}") from error


def _parse_inputs(body: dict, signature_def) -> tuple[dict, bool]:
    """Request JSON -> ({alias: array}, row_format)."""
    if ("instances" in body) == ("inputs" in body):
        raise _bad("JSON Value must contain exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    specs = signature_def.inputs
    if "instances" in body:
        instances = _decode_b64(body["instances"])
        if not isinstance(instances, list) or not instances:
            raise _bad("'instances' must be a non-empty JSON list")
        named = all(isinstance(x, dict) for x in instances)
        if not named:
            if len(specs) != 1:
                raise _bad(f"'instances' must hold objects keyed by input name; the signature has {sorted(specs)}")
            columns = {next(iter(specs)): instances}
        else:
            names = set(instances[0])
            if any(set(x) != names for x in instances):
                raise _bad("every element of 'instances' must name the same inputs")
            columns = {name: [x[name] for x in instances] for name in names}
        return _arrays(columns, specs), True
    inputs = _decode_b64(body["inputs"])
    if not isinstance(inputs, dict) or (len(specs) == 1 and next(iter(specs)) not in inputs):
        if len(specs) != 1:
            raise _bad(f"'inputs' must be an object keyed by input name; the signature has {sorted(specs)}")
        inputs = {next(iter(specs)): inputs}
    return _arrays(inputs, specs), False


def _arrays(values: dict, specs) -> dict:
    # An input the signature lacks gets an empty placeholder: the name check then reports it.
    return {a: _to_array(a, v, specs[a].dtype) if a in specs else np.empty(0) for a, v in values.items()}


def _json_value(alias: str, array: np.ndarray):
    if array.dtype == object or array.dtype.kind == "S":
        if alias.endswith("_bytes"):
            encode = lambda v: {"b64": base64.b64encode(v).decode("ascii")}
        else:
            encode = lambda v: v.decode("utf-8", "replace")
        return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def _outputs_json(outputs: dict, row_format: bool) -> dict:
    if not row_format:
        if len(outputs) == 1:
            ((alias, value),) = outputs.items()
            return {"outputs": _json_value(alias, value)}
        return {"outputs": {alias: _json_value(alias, value) for alias, value in outputs.items()}}
    columns = {alias: _json_value(alias, value) for alias, value in outputs.items()}
    sizes = {len(column) if isinstance(column, list) else -1 for column in columns.values()}
    if len(sizes) != 1 or -1 in sizes:
        raise _bad("in row format all outputs need the same batch size; use the columnar 'inputs' format")
    if len(columns) == 1:
        return {"predictions": next(iter(columns.values()))}
    size = sizes.pop()
    return {"predictions": [{alias: column[i] for alias, column in columns.items()} for i in range(size)]}


def status_json(response) -> dict:
    """A GetModelStatusResponse as TF Serving prints it (every field, enums by name)."""
    return {
        "model_version_status": [
            {
                "version": str(entry.version),
                "state": State.Name(entry.state),
                "status": {
                    "error_code": grpc.StatusCode.OK.name
                    if not entry.status.error_code
                    else next(c.name for c in grpc.StatusCode if c.value[0] == entry.status.error_code),
                    "error_message": entry.status.error_message,
                },
            }
            for entry in response.model_version_status
        ]
    }


def metadata_json(response) -> dict:
    from tensorflow_serving.apis import get_model_metadata_pb2

    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    return {
        "model_spec": {
            "name": response.model_spec.name,
            "signature_name": "",
            "version": str(response.model_spec.version.value),
        },
        "metadata": {"signature_def": json_format.MessageToDict(signatures, preserving_proto_field_name=True)},
    }


def make_handler(service, max_body_bytes: int = MAX_BODY_BYTES, timeout_ms: int = DEFAULT_TIMEOUT_MS):
    """An HTTP request handler class bound to a `ServingService`.

    Args:
        service: the `ServingService` answering the requests.
        max_body_bytes: the largest request body read; larger ones are answered 429.
        timeout_ms: how long a request may take, from when its connection was accepted; 504 after.
    """

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "keras-fcn-model-server"
        # Socket timeout: a client that stops sending (or an idle keep-alive connection) frees its worker.
        timeout = max(timeout_ms / 1000, 1.0)

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            log.debug("REST %s", format % args)

        def parse_request(self) -> bool:
            # A request line arrived: this connection is now answering a request, not idle.
            getattr(self.server, "mark_active", lambda *_: None)(self.request, True)
            return super().parse_request()

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode("utf-8")
            if getattr(self.server, "draining", False):
                self.close_connection = True
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            getattr(self.server, "mark_active", lambda *_: None)(self.request, False)

        def _answer(self, answer) -> None:
            accepted = getattr(self.server, "take_accepted_time", lambda: None)()
            deadline = (accepted or time.monotonic()) + timeout_ms / 1000
            try:
                self._reply(200, answer(deadline))
            except ServingError as error:
                message = error.message
                if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    message += f" (the request took more than --rest_api_timeout_in_ms={timeout_ms})"
                self._reply(HTTP_CODES.get(error.code, 500), {"error": message})
            except TimeoutError:  # the client stopped sending its body for the whole timeout
                self.close_connection = True
                message = f"Deadline exceeded: the body did not arrive within --rest_api_timeout_in_ms={timeout_ms}"
                self._reply(504, {"error": message})
            except Exception as error:  # the server stays up whatever the request held
                log.exception("REST request failed")
                self.close_connection = True
                self._reply(500, {"error": f"{type(error).__name__}: {error}"})

        def _route(self, method: str):
            match = _PATH.match(self.path.split("?")[0])
            if match is None:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {self.path}")
            version = int(match["version"]) if match["version"] else None
            if version is not None and version > MAX_VERSION:
                raise _bad(f"Failed to convert version: {match['version']} to numeric.")  # beyond int64
            return match, {"name": match["name"], "version": version, "label": match["label"] or ""}

        def _body(self) -> bytes:
            """The request body (Content-Length or chunked), refused past `max_body_bytes`."""
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._chunked_body()
            text = (self.headers.get("Content-Length") or "0").strip()
            if not text.isdigit():
                self.close_connection = True  # where this body ends is unknown
                raise _bad(f"Content-Length must be a non-negative integer; received {text[:40]!r}")
            length = int(text)
            if length > max_body_bytes:
                self.close_connection = True
                raise _too_large(length, max_body_bytes)
            body = self.rfile.read(length)
            if len(body) < length:
                self.close_connection = True
                raise _bad(f"the request body ended after {len(body)} of its {length} bytes")
            return body

        def _chunked_body(self) -> bytes:
            self.close_connection = True  # until the last chunk is read, the stream position is unsure
            parts, total = [], 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    size = -1
                if size < 0:
                    raise _bad(f"malformed chunk size line in a chunked body: {line[:40]!r}")
                if size == 0:
                    break
                total += size
                if total > max_body_bytes:
                    raise _too_large(total, max_body_bytes, "at least ")
                chunk = self.rfile.read(size)
                if len(chunk) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise _bad("a chunk of the chunked body is truncated or not followed by CRLF")
                parts.append(chunk)
            for _ in range(100):  # trailer fields, then the empty line
                if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                    self.close_connection = False
                    return b"".join(parts)
            raise _bad("too many trailer fields after a chunked body")

        def do_GET(self):  # noqa: N802 - http.server's name
            def answer(deadline):
                match, spec = self._route("GET")
                if match["verb"]:
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: GET {self.path}")
                if match["metadata"]:
                    return metadata_json(service.metadata_for(**spec))
                return status_json(service.status_for(**spec))

            self._answer(answer)

        def do_POST(self):  # noqa: N802
            def answer(deadline):
                raw = self._body()
                match, spec = self._route("POST")
                if not match["verb"]:
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: POST {self.path}")
                try:
                    body = json.loads(raw or b"null")
                except (ValueError, RecursionError) as error:  # RecursionError: nested too deeply
                    raise _bad(f"JSON Parse error: {error}"[:200]) from error
                if not isinstance(body, dict):
                    raise _bad("The request body must be a JSON object")
                if not isinstance(body.get("signature_name", ""), str):
                    raise _bad("'signature_name' key must be a string value.")  # TF Serving's text
                if match["verb"] != "predict":
                    service.classify_or_regress(match["verb"], spec, body.get("signature_name", ""))
                version = service.resolve(**spec)
                signature_name, signature_def, _ = version.signature(body.get("signature_name", ""))
                try:
                    inputs, row_format = _parse_inputs(body, signature_def)
                except RecursionError as error:
                    raise _bad("Failed to process the inputs: nested too deeply") from error
                _, outputs = service.predict_arrays(version, signature_name, inputs, deadline=deadline)
                check_deadline(deadline, "the answer was sent")
                return _outputs_json(outputs, row_format)

            self._answer(answer)

    return Handler


def _too_large(size: int, limit: int, prefix: str = "") -> ServingError:
    return ServingError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"request body of {prefix}{size} bytes is larger than the limit of {limit} bytes (--rest_api_max_body_bytes)",
    )


def _discard_and_close(connection: socket.socket, wait: float) -> None:
    """Closes a connection after reading what the client still sends (up to 1 MiB or `wait` s).

    Closing a socket with unread input makes the kernel send a reset, which can destroy the reply
    before the client reads it.
    """
    try:
        connection.shutdown(socket.SHUT_WR)
        connection.settimeout(wait)
        received = 0
        while received < _DRAIN_BYTES:
            data = connection.recv(65536)
            if not data:
                break
            received += len(data)
    except OSError:
        pass
    connection.close()


class RestServer(http.server.HTTPServer):
    """An HTTP server with a bounded pool: `num_threads` workers, at most `max_queued` waiting connections.

    A connection beyond those is answered 429 at once and closed: nothing queues without bound.
    `drain(grace)` stops taking connections and lets requests in flight finish for `grace` seconds.
    """

    allow_reuse_address = True

    def __init__(self, address, handler, *, num_threads: int = DEFAULT_THREADS, max_queued: int = DEFAULT_MAX_QUEUED):
        if num_threads < 1 or max_queued < 0:
            raise ValueError(
                f"num_threads must be >= 1 and max_queued >= 0. Received: num_threads={num_threads}, "
                f"max_queued={max_queued}"
            )
        super().__init__(address, handler)
        self.draining = False
        self._waiting: queue.SimpleQueue = queue.SimpleQueue()
        self._capacity = num_threads + max_queued  # connections served or waiting, at most
        self._admitted = 0
        self._lock = threading.Condition()
        self._busy: set[socket.socket] = set()  # connections held by a worker
        self._active: set[socket.socket] = set()  # of those, the ones answering a request
        self._local = threading.local()
        self._workers = [threading.Thread(target=self._work, name=f"rest-{i}", daemon=True) for i in range(num_threads)]
        for worker in self._workers:
            worker.start()

    def process_request(self, request, client_address) -> None:
        with self._lock:
            admitted = self._admitted < self._capacity
            self._admitted += admitted
        if admitted:
            self._waiting.put((request, client_address, time.monotonic()))
        else:
            self._refuse(request, 429, "too many REST requests at once; retry later")

    @staticmethod
    def _refuse(request, code: int, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        reason = {429: "Too Many Requests", 503: "Service Unavailable"}[code]
        head = f"HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            request.settimeout(1.0)
            request.sendall(head.encode() + b"Connection: close\r\n\r\n" + body)
        except OSError:
            pass
        _discard_and_close(request, 0.05)  # the accepting thread must not wait long

    def mark_active(self, connection: socket.socket, active: bool) -> None:
        """Called by the handler: a request started (True) or was answered (False) on `connection`."""
        with self._lock:
            if active:
                self._active.add(connection)
            else:
                self._active.discard(connection)
                self._lock.notify_all()

    def take_accepted_time(self) -> float | None:
        """When this thread's connection was accepted, once: its first request counts the wait for a worker."""
        accepted, self._local.accepted = getattr(self._local, "accepted", None), None
        return accepted

    def _work(self) -> None:
        while True:
            item = self._waiting.get()
            if item is None:
                return
            request, client_address, accepted = item
            with self._lock:
                self._busy.add(request)
            self._local.accepted = accepted
            try:
                if self.draining:
                    self._refuse(request, 503, "the server is shutting down")
                else:
                    self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                _discard_and_close(request, 0.2)
                with self._lock:
                    self._admitted -= 1
                    self._busy.discard(request)
                    self._active.discard(request)
                    self._lock.notify_all()

    def drain(self, grace: float) -> None:
        """Refuses new connections, lets requests in flight finish for up to `grace` s, then closes."""
        self.draining = True
        self.shutdown()  # the accept loop stops, then the listening socket closes
        self.server_close()
        deadline = time.monotonic() + grace
        with self._lock:
            while self._active and time.monotonic() < deadline:
                self._lock.wait(max(deadline - time.monotonic(), 0.01))
            for connection in list(self._busy):  # idle keep-alive ones, and any past the grace time
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for _ in self._workers:  # connections still waiting are answered 503 by the workers first
            self._waiting.put(None)
