"""TF Serving's REST API on the standard library's HTTP server.

- `GET  /v1/models/M[/versions/N|/labels/L]` -> `{"model_version_status": [...]}`
- `GET  /v1/models/M[/versions/N|/labels/L]/metadata`
  -> `{"model_spec": ..., "metadata": {"signature_def": ...}}`
- `POST /v1/models/M[/versions/N|/labels/L]:predict` with `{"signature_name": ..., "instances": [...]}`
  (row format, answered with `predictions`) or `{"inputs": ...}` (columnar, answered with `outputs`).
  Binary values travel as `{"b64": "..."}`; string outputs whose alias ends in `_bytes` come back so.
- `POST /v1/models/M[...]:classify` / `:regress` with `{"examples": [{feature: value, ...}], "context": {...}}`
  -> `{"results": [[[label, score], ...]]}` / `{"results": [value, ...]}`.
Errors are `{"error": message}` with the HTTP code of the gRPC status; a path under `/v1/` that no
route takes is a 400 `Malformed request`, as in TF Serving. The JSON codec is `json_codec.py`.

Bounds: a body larger than `max_body_bytes` (Content-Length or chunked) is refused with 429 before
it is read; `num_threads` workers serve connections and at most `max_queued` more wait for one,
any further connection is answered 429 at once; a request not answered within `timeout_ms`
(`--rest_api_timeout_in_ms`, counted from when its connection was accepted) gets 504.

Beside these, `GET /` serves a page that tries the model in a browser and `GET /v1/keras_fcn/...` the
small extension it reads (see `page.py`).
"""

from __future__ import annotations

import http.server
import json
import queue
import re
import socket
import threading
import time
import urllib.parse

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import classification_pb2, regression_pb2

from . import classify as classify_lib
from . import json_codec, page
from . import regress as regress_lib
from .errors import ServingError, check_deadline, invalid_argument, log
from .versions import DEFAULT_SIGNATURE, State

# TF Serving's routes (`http_rest_api_util.cc`): POST a verb, GET a status or metadata; the
# path prefix matches in any case, the verb and `metadata` only in lower case.
_POST = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
_GET = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:\/(metadata))?")
_API = re.compile(r"(?i)/v1/.*")  # paths the REST API answers; others are not found
# The model, version and verb of a path, for the request metrics' labels.
_PATH = re.compile(r"(?i)/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/[^/:]+)?(?::(?P<verb>\w+))?")
MAX_VERSION = (1 << 63) - 1  # versions are int64
MAX_BODY_BYTES = 1 << 30  # as the gRPC message limit
DEFAULT_TIMEOUT_MS = 30_000  # TF Serving's --rest_api_timeout_in_ms
DEFAULT_THREADS = 16
DEFAULT_MAX_QUEUED = 64
_DRAIN_BYTES = 1 << 20  # unread request bytes discarded before a close, so the client sees the answer
HTTP_CODES = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}



def parse_path(method: str, path: str):
    """(verb or subresource, {"name", "version", "label"}) of a REST path, as TF Serving parses it.

    Raises:
        ServingError: INVALID_ARGUMENT `Malformed request: METHOD PATH` for a path no route takes,
            `Missing model name in request.` for `GET /v1/models`, `Failed to convert version`
            beyond int64.
    """
    malformed = invalid_argument(f"Malformed request: {method} {path}")
    pattern = {"POST": _POST, "GET": _GET}.get(method)
    match = pattern.fullmatch(path) if pattern else None
    if match is None:
        raise malformed
    name, version, label, action = match.groups()
    name = urllib.parse.unquote(name or "")
    if version is not None:
        if int(version) > MAX_VERSION:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
        version = int(version)
    spec = {"name": name, "version": version, "label": urllib.parse.unquote(label) if label else ""}
    if method == "POST" and action not in ("classify", "regress", "predict"):
        raise malformed  # the verb matched in another case
    if method == "GET" and not name:
        raise invalid_argument("Missing model name in request.")
    return action, spec


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
    # As TF Serving prints it: proto field names, fields left at their defaults printed too.
    options = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}
    return {
        "model_spec": json_format.MessageToDict(response.model_spec, **options),
        "metadata": {"signature_def": json_format.MessageToDict(signatures, **options)},
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
        status = answered = None  # the error's gRPC code; the version and signature that answered

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            log.debug("REST %s", format % args)

        def parse_request(self) -> bool:
            # A request line arrived: this connection is now answering a request, not idle.
            self._mark_active(True)
            return super().parse_request()

        def _mark_active(self, active: bool) -> None:
            getattr(self.server, "mark_active", lambda *_: None)(self.request, active)

        def _reply(self, code: int, body) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
            self._send(code, "application/json", data)

        def _send(self, code: int, content_type: str, data: bytes, headers: dict | None = None) -> None:
            if getattr(self.server, "draining", False):
                self.close_connection = True
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self._mark_active(False)

        def _answer(self, answer) -> None:
            """Replies with `answer(deadline)` (None: it replied itself), or with the error it raised."""
            accepted = getattr(self.server, "take_accepted_time", lambda: None)()
            deadline = (accepted or time.monotonic()) + timeout_ms / 1000
            try:
                body = answer(deadline)
                if body is not None:
                    self._reply(200, body)
            except ServingError as error:
                self.status = error.code  # for the request metrics
                message = error.message
                if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    message += f" (the request took more than --rest_api_timeout_in_ms={timeout_ms})"
                self._reply(HTTP_CODES.get(error.code, 500), {"error": message})
            except RecursionError:  # JSON nested too deeply for the parser or the codec
                self.status = grpc.StatusCode.INVALID_ARGUMENT
                self._reply(400, {"error": "Failed to process the request: JSON nested too deeply"})
            except TimeoutError:  # the client stopped sending its body for the whole timeout
                self.close_connection = True
                message = f"Deadline exceeded: the body did not arrive within --rest_api_timeout_in_ms={timeout_ms}"
                self.status = grpc.StatusCode.DEADLINE_EXCEEDED
                self._reply(504, {"error": message})
            except Exception as error:  # the server stays up and answers whatever the request held
                log.exception("REST request failed")
                self.close_connection = True
                self._reply(500, {"error": f"{type(error).__name__}: {error}"})

        def _body(self) -> bytes:
            """The request body (Content-Length or chunked), refused past `max_body_bytes`."""
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._chunked_body()
            text = (self.headers.get("Content-Length") or "0").strip()
            if not (text.isascii() and text.isdecimal()):
                self.close_connection = True  # where this body ends is unknown
                raise invalid_argument(f"Content-Length must be a non-negative integer; received {text[:40]!r}")
            length = int(text)
            if length > max_body_bytes:
                self.close_connection = True
                raise _too_large(length, max_body_bytes)
            body = self.rfile.read(length)
            if len(body) < length:
                self.close_connection = True
                raise invalid_argument(f"the request body ended after {len(body)} of its {length} bytes")
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
                    raise invalid_argument(f"malformed chunk size line in a chunked body: {line[:40]!r}")
                if size == 0:
                    break
                total += size
                if total > max_body_bytes:
                    raise _too_large(total, max_body_bytes, "at least ")
                chunk = self.rfile.read(size)
                if len(chunk) < size or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise invalid_argument("a chunk of the chunked body is truncated or not followed by CRLF")
                parts.append(chunk)
            for _ in range(100):  # trailer fields, then the empty line
                if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                    self.close_connection = False
                    return b"".join(parts)
            raise invalid_argument("too many trailer fields after a chunked body")

        def _handle(self, method: str) -> None:
            def answer(deadline):
                raw = self._body()
                path = self.path.split("?")[0]
                if method == "GET":
                    # The page and its extension first: TF Serving's routes are unchanged by them.
                    file = page.static_file(path)
                    if file is not None:
                        self._send(200, *file, page.STATIC_HEADERS)
                        return None
                    extension = page.extension_json(service, path)
                    if extension is not None:
                        return extension
                if not _API.fullmatch(path):
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"Not found: {method} {path}")
                action, spec = parse_path(method, path)
                if method == "GET":
                    if action == "metadata":
                        return metadata_json(service.metadata_for(**spec))
                    return status_json(service.status_for(**spec))
                reply, self.answered = _post(service, action, spec, raw, deadline)  # answered: for the metrics
                check_deadline(deadline, "the answer was sent")
                return reply

            self._answer(answer)

        def do_GET(self):  # noqa: N802 - http.server's names
            self._handle("GET")

        def do_POST(self):  # noqa: N802
            self._handle("POST")

        def do_OPTIONS(self):  # noqa: N802 - a CORS preflight: 200 with an Origin, else 400 (both empty)
            if not _API.fullmatch(self.path.split("?")[0]):
                self._reply(404, {"error": f"Not found: OPTIONS {self.path}"})
                return
            origin = re.search(r"https?://", self.headers.get("Origin", ""))
            self.send_response(200 if origin else 400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self._mark_active(False)

        def do_PUT(self):  # noqa: N802 - TF Serving answers other methods "Malformed request"
            self._handle("PUT")

        def do_DELETE(self):  # noqa: N802
            self._handle("DELETE")

        def do_PATCH(self):  # noqa: N802
            self._handle("PATCH")

    return Handler


def _post(service, verb: str, spec: dict, raw: bytes, deadline: float | None = None) -> tuple[str, tuple[int, str]]:
    """The JSON reply of a POST (the body parsed, the request run, the result written), and the version
    and signature that answered it."""
    document = json_codec.parse_json(raw)
    signature_name = json_codec.signature_name(document)
    if verb in ("classify", "regress"):
        model_input = json_codec.examples_input(document)
        version = service.resolve(**spec)
        if verb == "classify":
            request = classification_pb2.ClassificationRequest(input=model_input)
            request.model_spec.signature_name = signature_name
            response = classify_lib.classify(version, request, service.run, service.method_name_check)
            return json_codec.classification_json(response.result), _answered(response)
        request = regression_pb2.RegressionRequest(input=model_input)
        request.model_spec.signature_name = signature_name
        response = regress_lib.regress(version, request, service.run, service.method_name_check)
        return json_codec.regression_json(response.result), _answered(response)
    version = service.resolve(**spec)
    name = signature_name or DEFAULT_SIGNATURE
    if name not in version.signature_defs:
        raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
    tensor_infos = version.signature_defs[name].inputs
    if not tensor_infos:
        raise invalid_argument(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    booleans = b"true" in raw or b"false" in raw  # else numpy may build numeric arrays directly
    inputs, row_format = json_codec.predict_inputs(document, tensor_infos, booleans)
    _, outputs = service.predict_arrays(version, name, inputs, deadline=deadline)
    return json_codec.tensors_json(outputs, row_format), (version.version, name)


def _answered(response) -> tuple[int, str]:
    return response.model_spec.version.value, response.model_spec.signature_name


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
        self.refused = 0  # queued connections answered 503 because the drain had begun
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
                    with self._lock:
                        self.refused += 1
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

    @property
    def in_flight(self) -> int:
        """Requests being answered now (read or being read by a worker, not yet replied to)."""
        with self._lock:
            return len(self._active)

    def drain(self, grace: float) -> int:
        """Refuses new connections, lets requests in flight finish for up to `grace` s, then closes.

        Returns:
            How many requests were still being answered after `grace` s (their connections are closed).
        """
        self.draining = True
        self.shutdown()  # the accept loop stops, then the listening socket closes
        self.server_close()
        deadline = time.monotonic() + grace
        with self._lock:
            while self._active and time.monotonic() < deadline:
                self._lock.wait(max(deadline - time.monotonic(), 0.01))
            unfinished = len(self._active)
            for connection in list(self._busy):  # idle keep-alive ones, and any past the grace time
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for _ in self._workers:  # connections still waiting are answered 503 by the workers first
            self._waiting.put(None)
        finish = max(deadline, time.monotonic() + 1.0)  # time for those 503s, not for a request past grace
        for worker in self._workers:
            worker.join(max(finish - time.monotonic(), 0.0))
        return unfinished
