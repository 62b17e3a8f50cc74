"""TF Serving's REST API on the standard library's HTTP server.

- `GET  /v1/models/M[/versions/N|/labels/L]` -> `{"model_version_status": [...]}`
- `GET  /v1/models/M[/versions/N|/labels/L]/metadata`
  -> `{"model_spec": ..., "metadata": {"signature_def": ...}}`
- `POST /v1/models/M[/versions/N|/labels/L]:predict` with `{"signature_name": ..., "instances": [...]}`
  (row format, answered with `predictions`) or `{"inputs": ...}` (columnar, answered with `outputs`).
  Binary values travel as `{"b64": "..."}`; string outputs whose alias ends in `_bytes` come back so.
Errors are `{"error": message}` with the HTTP code of the gRPC status.
"""

from __future__ import annotations

import base64
import http.server
import json
import re

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from .errors import ServingError, log
from .versions import State

_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>predict|classify|regress)|/(?P<metadata>metadata))?/?$"
)
MAX_VERSION = (1 << 63) - 1  # versions are int64
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


def float32_decimals(array: np.ndarray) -> np.ndarray:
    """float64 values whose text (Python's shortest repr) reads back as the same float32 values.

    `float32(0.1).tolist()` is 0.10000000149011612: float64 text, twice as long, and a client parsing
    it into float64 sees digits the model never computed. For each value this picks the fewest
    significant digits (1 to 9; 9 always suffice for float32) whose nearest decimal rounds back to
    the same float32, vectorized. Zeros, infinities and NaN pass unchanged.

    Args:
        array: float32 values.

    Returns:
        float64 values `y` with `np.float32(y) == array` (NaN where NaN), for `json.dumps`.
    """
    x = np.asarray(array, np.float32)
    with np.errstate(all="ignore"):
        exact = x.astype(np.float64)
        out = exact.copy()
        todo = np.isfinite(exact) & (exact != 0)
        magnitude = np.floor(np.log10(np.abs(np.where(todo, exact, 1.0))))
        for digits in range(1, 10):
            shift = digits - 1 - magnitude  # the decimal is m * 10**-shift, m an integer of `digits` digits
            scale = 10.0 ** np.abs(shift)
            m = np.where(shift >= 0, np.round(exact * scale), np.round(exact / scale))
            # m and powers of ten up to 1e22 are exact float64s, so one division or product rounds the
            # decimal correctly; beyond (|x| < 1e-13 or > 1e22) numpy parses "<m>e<-shift>" instead.
            rounded = np.where(shift >= 0, m / scale, m * scale)
            far = todo & (np.abs(shift) > 22)
            if far.any():
                mantissas = m[far].astype(np.int64).astype(str)
                exponents = (-shift[far]).astype(np.int64).astype(str)
                rounded[far] = np.char.add(np.char.add(mantissas, "e"), exponents).astype(np.float64)
            ok = todo & (rounded.astype(np.float32) == x)
            out[ok] = rounded[ok]
            todo &= ~ok
            if not todo.any():
                break
    return out


def _json_value(alias: str, array: np.ndarray):
    if array.dtype == object or array.dtype.kind == "S":
        if alias.endswith("_bytes"):
            encode = lambda v: {"b64": base64.b64encode(v).decode("ascii")}
        else:
            encode = lambda v: v.decode("utf-8", "replace")
        return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else array.tolist()
    if array.dtype == np.float32:  # float32 text, not float64's
        return float32_decimals(array).tolist()
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


def make_handler(service):
    """An HTTP request handler class bound to a `ServingService`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "keras-fcn-model-server"

        def log_message(self, format, *args):  # noqa: A002 - the base class's name
            log.debug("REST %s", format % args)

        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str):
            match = _PATH.match(self.path.split("?")[0])
            if match is None:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: {method} {self.path}")
            version = int(match["version"]) if match["version"] else None
            if version is not None and version > MAX_VERSION:
                raise _bad(f"Failed to convert version: {match['version']} to numeric.")  # beyond int64
            return match, {"name": match["name"], "version": version, "label": match["label"] or ""}

        def do_GET(self):  # noqa: N802 - http.server's name
            try:
                match, spec = self._route("GET")
                if match["verb"]:
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: GET {self.path}")
                if match["metadata"]:
                    self._reply(200, metadata_json(service.metadata_for(**spec)))
                else:
                    self._reply(200, status_json(service.status_for(**spec)))
            except ServingError as error:
                self._reply(HTTP_CODES.get(error.code, 500), {"error": error.message})
            except Exception as error:  # the server stays up and answers whatever the request held
                log.exception("REST request failed")
                self._reply(500, {"error": f"{type(error).__name__}: {error}"})

        def do_POST(self):  # noqa: N802
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                match, spec = self._route("POST")
                if not match["verb"]:
                    raise ServingError(grpc.StatusCode.NOT_FOUND, f"Malformed request: POST {self.path}")
                try:
                    body = json.loads(raw or b"null")
                except ValueError as error:
                    raise _bad(f"JSON Parse error: {error}") from error
                if not isinstance(body, dict):
                    raise _bad("The request body must be a JSON object")
                if match["verb"] != "predict":
                    service.classify_or_regress(match["verb"], spec, body.get("signature_name", ""))
                version = service.resolve(**spec)
                signature_name, signature_def, _ = version.signature(body.get("signature_name", ""))
                inputs, row_format = _parse_inputs(body, signature_def)
                _, outputs = service.predict_arrays(version, signature_name, inputs)
                self._reply(200, _outputs_json(outputs, row_format))
            except ServingError as error:
                self._reply(HTTP_CODES.get(error.code, 500), {"error": error.message})
            except Exception as error:  # the server stays up whatever the request held
                log.exception("REST request failed")
                self._reply(500, {"error": f"{type(error).__name__}: {error}"})

    return Handler


class RestServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
