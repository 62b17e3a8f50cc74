"""TF Serving's REST API, transport-free: `respond()` answers one request the HTTP front has read.

- `GET  /v1/models/M[/versions/N|/labels/L]` -> `{"model_version_status": [...]}`
- `GET  /v1/models/M[/versions/N|/labels/L]/metadata`
  -> `{"model_spec": ..., "metadata": {"signature_def": ...}}`
- `POST /v1/models/M[/versions/N|/labels/L]:predict` with `{"signature_name": ..., "instances": [...]}`
  (row format, answered with `predictions`) or `{"inputs": ...}` (columnar, answered with `outputs`).
  Binary values travel as `{"b64": "..."}`; string outputs whose alias ends in `_bytes` come back so.
- `POST /v1/models/M[...]:classify` / `:regress` with `{"examples": [{feature: value, ...}], "context": {...}}`
  -> `{"results": [[[label, score], ...]]}` / `{"results": [value, ...]}`.
Errors are `{"error": message}` with the HTTP code of the gRPC status; a path under `/v1/` that no
route takes is a 400 `Malformed request`, as in TF Serving. The JSON codec is `wire/json_codec.py`.

A body that may hold more values than `--max_request_elements` is refused before it is parsed
(`check_values_bound`). How requests arrive, and the bounds on bodies, connections and workers, are
the front's (`transport/rest_server.py`).

Beside these, `GET /` serves a page that tries the model in a browser and `GET /v1/keras_fcn/...` the
small extension it reads (see `page.py`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse

import grpc
from google.protobuf import json_format
from tensorflow_serving.apis import classification_pb2, regression_pb2

from .. import page
from ..errors import ServingError, check_deadline, invalid_argument, log
from ..models.versions import DEFAULT_SIGNATURE, State
from ..wire import json_codec, json_numbers
from . import classify as classify_lib
from . import regress as regress_lib

# TF Serving's routes (`http_rest_api_util.cc`): POST a verb, GET a status or metadata; the
# path prefix matches in any case, the verb and `metadata` only in lower case.
_POST = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
_GET = re.compile(r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:\/(metadata))?")
API = re.compile(r"(?i)/v1/.*")  # paths the REST API answers; others are not found
# The model, version and verb of a path, for the request metrics' labels.
PATH = re.compile(r"(?i)/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/[^/:]+)?(?::(?P<verb>\w+))?")
MAX_VERSION = (1 << 63) - 1  # versions are int64
MAX_BODY_BYTES = 1 << 30  # as the gRPC message limit
DEFAULT_TIMEOUT_MS = 30_000  # TF Serving's --rest_api_timeout_in_ms
DEFAULT_THREADS = 16
DEFAULT_MAX_QUEUED = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a JSON string (for the commas inside strings)
_MAX_COUNTED_STRINGS = 1 << 20  # quotes up to which commas inside strings are taken off the values bound
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


def respond(service, method: str, path: str, body, deadline: float, timeout_ms: int, max_elements: int) -> Reply:
    """The answer to one REST request, transport-free: the HTTP front reads the request, this answers it.

    Args:
        service: the `ServingService` answering the requests.
        method: the HTTP method.
        path: the request path with its query string.
        body: the request body (bytes or bytearray), already bounded by the front.
        deadline: `time.monotonic()` past which the request is answered 504.
        timeout_ms: `--rest_api_timeout_in_ms`, named in the 504's message.
        max_elements: `--max_request_elements`; a body that may hold more values is refused before parsing.
    """
    reply = Reply()
    try:
        path = path.split("?")[0]
        if method == "GET":
            # The page and its extension first: TF Serving's routes are unchanged by them.
            file = page.static_file(path)
            if file is not None:
                reply.content_type, reply.data = file
                reply.headers = page.STATIC_HEADERS
                return reply
            extension = page.extension_json(service, path)
            if extension is not None:
                return reply.json(200, extension)
        if not API.fullmatch(path):
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Not found: {method} {path}")
        action, spec = parse_path(method, path)
        if method == "GET":
            if action == "metadata":
                return reply.json(200, metadata_json(service.metadata_for(**spec)))
            return reply.json(200, status_json(service.status_for(**spec)))
        check_values_bound(body, max_elements)
        answer, reply.answered = _post(service, action, spec, body, deadline)
        check_deadline(deadline, "the answer was sent")
        return reply.json(200, answer)
    except ServingError as error:
        reply.status = error.code
        message = error.message
        if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            message += f" (the request took more than --rest_api_timeout_in_ms={timeout_ms})"
        return reply.json(HTTP_CODES.get(error.code, 500), {"error": message})
    except RecursionError:  # JSON nested too deeply for the parser or the codec
        reply.status = grpc.StatusCode.INVALID_ARGUMENT
        return reply.json(400, {"error": "Failed to process the request: JSON nested too deeply"})
    except Exception as error:  # the server stays up and answers whatever the request held
        log.exception("REST request failed")
        reply.status, reply.close = grpc.StatusCode.INTERNAL, True
        return reply.json(500, {"error": f"{type(error).__name__}: {error}"})


@dataclasses.dataclass
class Reply:
    """What the HTTP front sends: the code, the body and its type, extra headers; and, for the metrics,
    the gRPC status of an error and the (version, signature) that answered."""

    code: int = 200
    content_type: str = "application/json"
    data: bytes = b""
    headers: dict = dataclasses.field(default_factory=dict)
    status: grpc.StatusCode | None = None
    answered: tuple | None = None
    close: bool = False  # close the connection after this reply

    def json(self, code: int, body) -> Reply:
        self.code = code
        self.content_type = "application/json"
        self.data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
        return self


def check_values_bound(body, max_elements: int) -> None:
    """Refuses a body that may hold more JSON values than `--max_request_elements`, before it is parsed.

    The bound is `json_numbers.count_upper_bound`: one more than the body's commas, a fraction of a second
    for 300 MB. A comma inside a string over-counts; when the bound is over the limit and the body has few
    strings, those commas are taken off before refusing. (Commas after the document, which TF Serving
    ignores, count too: such a body is refused.)

    Raises:
        ServingError: INVALID_ARGUMENT naming the bound and the limit.
    """
    bound = json_numbers.count_upper_bound(body)
    if bound <= max_elements:
        return
    if body.count(b'"') <= _MAX_COUNTED_STRINGS:
        bound -= sum(match.group().count(b",") for match in _STRING.finditer(body))
    if bound > max_elements:
        raise invalid_argument(
            f"the request body holds up to {bound} values, more than the {max_elements} one request may "
            "hold (--max_request_elements)"
        )


def _post(service, verb: str, spec: dict, raw: bytes, deadline: float | None = None) -> tuple[str, tuple[int, str]]:
    """The JSON reply of a POST (the body parsed, the request run, the result written), and the version
    and signature that answered it."""
    # A body of plain numbers is scanned and parsed into numpy with one array-sized buffer; any other body
    # goes through json_codec, which also words every error as TF Serving does.
    numeric = json_numbers.scan_predict_body(raw) if verb == "predict" else None
    document = json_codec.parse_json(raw) if numeric is None else None
    signature_name = json_codec.signature_name(document) if numeric is None else numeric.signature_name
    if verb in ("classify", "regress"):
        model_input = json_codec.examples_input(document)
        version = service.resolve(**spec)
        if verb == "classify":
            request = classification_pb2.ClassificationRequest(input=model_input)
            request.model_spec.signature_name = signature_name
            response = classify_lib.classify(version, request, service.runner(deadline), service.method_name_check)
            return json_codec.classification_json(response.result), _answered(response)
        request = regression_pb2.RegressionRequest(input=model_input)
        request.model_spec.signature_name = signature_name
        response = regress_lib.regress(version, request, service.runner(deadline), service.method_name_check)
        return json_codec.regression_json(response.result), _answered(response)
    version = service.resolve(**spec)
    name = signature_name or DEFAULT_SIGNATURE
    if name not in version.signature_defs:
        raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
    tensor_infos = version.signature_defs[name].inputs
    if not tensor_infos:
        raise invalid_argument(f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    parsed = None if numeric is None else numeric.inputs(tensor_infos, service.max_request_elements)
    if parsed is None:
        document = json_codec.parse_json(raw) if document is None else document
        booleans = b"true" in raw or b"false" in raw  # else numpy may build numeric arrays directly
        parsed = json_codec.predict_inputs(document, tensor_infos, booleans)
    inputs, row_format = parsed
    _, outputs = service.predict_arrays(version, name, inputs, deadline=deadline)
    return json_codec.tensors_json(outputs, row_format), (version.version, name)


def _answered(response) -> tuple[int, str]:
    return response.model_spec.version.value, response.model_spec.signature_name


def too_large(size: int, limit: int, prefix: str = "") -> str:
    """The 413's message for a body of `size` bytes (or at least that many) past `limit`."""
    return f"request body of {prefix}{size} bytes is larger than the limit of {limit} bytes (--rest_api_max_body_bytes)"
