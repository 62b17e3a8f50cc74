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

Beside these, `GET /` serves a page that tries the model in a browser and `GET /v1/keras_fcn/...` the
small extension it reads (see `page.py`).
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import urllib.parse

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import classification_pb2, regression_pb2

from . import classify as classify_lib
from . import json_codec, page
from . import regress as regress_lib
from .errors import ServingError, log
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


def _bad(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def parse_path(method: str, path: str):
    """(verb or subresource, {"name", "version", "label"}) of a REST path, as TF Serving parses it.

    Raises:
        ServingError: INVALID_ARGUMENT `Malformed request: METHOD PATH` for a path no route takes,
            `Missing model name in request.` for `GET /v1/models`, `Failed to convert version`
            beyond int64.
    """
    malformed = _bad(f"Malformed request: {method} {path}")
    pattern = {"POST": _POST, "GET": _GET}.get(method)
    match = pattern.fullmatch(path) if pattern else None
    if match is None:
        raise malformed
    name, version, label, action = match.groups()
    name = urllib.parse.unquote(name or "")
    if version is not None:
        if int(version) > MAX_VERSION:
            raise _bad(f"Failed to convert version: {version} to numeric.")
        version = int(version)
    spec = {"name": name, "version": version, "label": urllib.parse.unquote(label) if label else ""}
    if method == "POST" and action not in ("classify", "regress", "predict"):
        raise malformed  # the verb matched in another case
    if method == "GET" and not name:
        raise _bad("Missing model name in request.")
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


def make_handler(service):
    """An HTTP request handler class bound to a `ServingService`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "keras-fcn-model-server"
        status = answered = None  # the error's gRPC code; the version and signature that answered

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            log.debug("REST %s", format % args)

        def _reply(self, code: int, body) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
            self._send(code, "application/json", data)

        def _send(self, code: int, content_type: str, data: bytes, headers: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _handle(self, method: str) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0]
                if method == "GET":
                    # The page and its extension first: TF Serving's routes are unchanged by them.
                    file = page.static_file(path)
                    if file is not None:
                        self._send(200, *file, page.STATIC_HEADERS)
                        return
                    extension = page.extension_json(service, path)
                    if extension is not None:
                        self._reply(200, extension)
                        return
                if not _API.fullmatch(path):
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"Not found: {method} {path}")
                action, spec = parse_path(method, path)
                if method == "GET":
                    if action == "metadata":
                        self._reply(200, metadata_json(service.metadata_for(**spec)))
                    else:
                        self._reply(200, status_json(service.status_for(**spec)))
                else:
                    reply, self.answered = _post(service, action, spec, raw)  # answered: for the metrics
                    self._reply(200, reply)
            except ServingError as error:
                self.status = error.code  # for the request metrics
                self._reply(HTTP_CODES.get(error.code, 500), {"error": error.message})
            except Exception as error:  # the server stays up and answers whatever the request held
                log.exception("REST request failed")
                self._reply(500, {"error": f"{type(error).__name__}: {error}"})

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

        def do_PUT(self):  # noqa: N802 - TF Serving answers other methods "Malformed request"
            self._handle("PUT")

        def do_DELETE(self):  # noqa: N802
            self._handle("DELETE")

        def do_PATCH(self):  # noqa: N802
            self._handle("PATCH")

    return Handler


def _post(service, verb: str, spec: dict, raw: bytes) -> tuple[str, tuple[int, str]]:
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
        raise _bad(f'Serving signature name: "{name}" not found in signature def')
    tensor_infos = version.signature_defs[name].inputs
    if not tensor_infos:
        raise _bad(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    booleans = b"true" in raw or b"false" in raw  # else numpy may build numeric arrays directly
    inputs, row_format = json_codec.predict_inputs(document, tensor_infos, booleans)
    _, outputs = service.predict_arrays(version, name, inputs)
    return json_codec.tensors_json(outputs, row_format), (version.version, name)


def _answered(response) -> tuple[int, str]:
    return response.model_spec.version.value, response.model_spec.signature_name


class RestServer(http.server.ThreadingHTTPServer):
    """The threaded HTTP server. `server_close` also shuts the reading side of the connections still
    open: browsers keep connections alive between requests, which a stopped server would otherwise go
    on answering; a reply being written still goes out."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args, **kwargs):
        self._open = set()
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self):
        super().server_close()
        with self._open_lock:
            connections, self._open = list(self._open), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RD)
            except OSError:  # already closed by its client
                pass
