"""The JSON codec of TF Serving's REST API: request bodies to arrays and tf.Examples, results to JSON.

It follows TF Serving's `util/json_tensor.cc`: the same accepted shapes of `instances` (row
format, batched) and `inputs` (columnar, as is), the same type rules (a float tensor takes JSON
numbers, an integer one JSON integers, a string one strings or `{"b64": ...}`), the same error
texts, and the same number formatting (float32 written with up to 6 significant digits when that
reads back exactly, else 9; whole numbers keep a `.0`; NaN and Infinity unquoted).
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

from ..errors import ServingError, invalid_argument
from .examples import decode_b64, input_from_json, is_b64, json_type
from .tensor_codec import data_type_string

MAX_DEBUG_CHARS = 256  # TF Serving cuts the JSON it quotes in errors here

# rapidjson's words for the parse errors Python's json module reports differently.
_PARSE_ERRORS = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid control character at": "Invalid encoding in string.",
}


def _finite_float(text: str) -> float:
    value = float(text)
    if np.isinf(value):
        raise ValueError("Number too big to be stored in double.")
    return value


def _int_or_double(text: str):
    """JSON integers beyond uint64 are doubles to TF Serving's parser (and too big ones an error)."""
    value = int(text)
    return _finite_float(text) if value >= 1 << 64 or value < -(1 << 63) else value


def parse_json(body: bytes) -> dict:
    """The JSON object of a request body; INVALID_ARGUMENT `JSON Parse error: ...` as TF Serving words it.

    As TF Serving's parser, reading stops after the first complete value (trailing bytes are ignored)
    and NaN/Infinity are accepted.
    """
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise invalid_argument(f"JSON Parse error: Invalid encoding in string. at offset: {error.start}") from error
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise invalid_argument(f"JSON Parse error: The document is empty. at offset: {start}")
    try:
        document, _ = json.JSONDecoder(parse_float=_finite_float, parse_int=_int_or_double).raw_decode(text, start)
    except json.JSONDecodeError as error:
        words = next((v for k, v in _PARSE_ERRORS.items() if error.msg.startswith(k)), None)
        if words is None and error.msg.startswith("Expecting ',' delimiter"):
            if _enclosing(text, error.pos) == "{":
                words = "Missing a comma or '}' after an object member."
            else:
                words = "Missing a comma or ']' after an array element."
        raise invalid_argument(f"JSON Parse error: {words or error.msg} at offset: {error.pos}") from error
    except (ValueError, RecursionError) as error:
        raise invalid_argument(f"JSON Parse error: {error}") from error
    if not isinstance(document, dict):
        raise invalid_argument(f"JSON Value: {debug_string(document)} Is not object")
    return document


def _enclosing(text: str, position: int) -> str:
    """The bracket ('{' or '[') open at `position` (for the wording of a missing-comma error)."""
    depth, in_string, escaped = [], False, False
    for char in text[:position]:
        if in_string:
            in_string = not (char == '"' and not escaped)
            escaped = char == "\\" and not escaped
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth.append(char)
        elif char in "}]" and depth:
            depth.pop()
    return depth[-1] if depth else "["


def debug_string(value) -> str:
    """A JSON value as TF Serving quotes it in errors (objects indented, arrays on one line, cut at 256)."""

    def render(item, indent: int) -> str:
        if isinstance(item, dict):
            if not item:
                return "{}"
            pad = " " * (indent + 4)
            members = [f"{pad}{json.dumps(k)}: {render(v, indent + 4)}" for k, v in item.items()]
            return "{\n" + ",\n".join(members) + "\n" + " " * indent + "}"
        if isinstance(item, list):
            return "[" + ", ".join(render(v, indent) for v in item) + "]"
        return json.dumps(item)

    return render(value, 0)[:MAX_DEBUG_CHARS]


def signature_name(document: dict) -> str:
    """The optional `signature_name`; it must be a string."""
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {debug_string(document)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


def _accepts(value, dtype: tf.DType) -> bool:
    """Whether TF Serving's JSON reader takes `value` as an element of a `dtype` tensor."""
    if dtype == tf.string:
        return isinstance(value, str)
    if isinstance(value, bool) or value is None or isinstance(value, (str, dict, list)):
        return dtype == tf.bool and isinstance(value, bool)
    if dtype in (tf.float32, tf.float64, tf.bfloat16, tf.float16):
        return dtype in (tf.float32, tf.float64)
    if isinstance(value, float):
        return False
    bounds = {
        tf.int8: (-(1 << 31), 1 << 31),  # TF Serving reads small integer types as int32
        tf.int16: (-(1 << 31), 1 << 31),
        tf.int32: (-(1 << 31), 1 << 31),
        tf.uint8: (-(1 << 31), 1 << 31),
        tf.int64: (-(1 << 63), 1 << 63),
        tf.uint32: (0, 1 << 32),
        tf.uint64: (0, 1 << 64),
    }
    if dtype not in bounds:
        return False
    low, high = bounds[dtype]
    return low <= value < high


def _type_error(value, dtype: tf.DType) -> ServingError:
    expected = data_type_string(dtype)
    return invalid_argument(
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} is not of expected type: {expected}"
    )


def _dense_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _walk(value, level: int, shape: list[int], dtype: tf.DType, leaves: list) -> None:
    """TF Serving's tensor fill: every leaf at the same depth, every list of its level's size."""
    if not isinstance(value, list):
        if level != len(shape):
            raise invalid_argument(
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        if isinstance(value, dict):
            if dtype != tf.string:
                raise _type_error(value, dtype)
            if not is_b64(value):
                raise invalid_argument(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
            leaves.append(decode_b64(value))
            return
        if not _accepts(value, dtype):
            raise _type_error(value, dtype)
        leaves.append(value.encode("utf-8") if isinstance(value, str) else value)
        return
    if level >= len(shape):
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _walk(item, level + 1, shape, dtype, leaves)


MAX_RANK = 64


def to_array(value, dtype: tf.DType, booleans: bool = True) -> np.ndarray:
    """One JSON value (a scalar or nested lists) as a `dtype` array, checked as TF Serving does.

    `booleans=False` says the body holds no JSON `true`/`false`, which lets numpy build a numeric
    array directly (a boolean among numbers would otherwise pass as 0 or 1).
    """
    shape = _dense_shape(value)
    if len(shape) > MAX_RANK:  # numpy holds at most 64 dimensions (TensorFlow 254)
        raise invalid_argument(
            f"Tensors of more than {MAX_RANK} dimensions are not supported. Received: {len(shape)} dimensions"
        )
    if dtype != tf.string and shape:
        # Fast path for large numeric bodies; anything unusual takes TF Serving's walk below.
        numeric = None
        if booleans:
            try:
                array = np.array(value, dtype=object)
            except ValueError:
                array = None
            if (
                array is not None
                and list(array.shape) == shape
                and set(map(type, array.ravel().tolist()))
                <= {
                    int,
                    float,
                }
            ):
                numeric = np.array(array.tolist())
        else:
            try:
                numeric = np.array(value)
            except (ValueError, OverflowError):
                numeric = None
        if numeric is not None and list(numeric.shape) == shape and numeric.size and numeric.dtype.kind in "iuf":
            floating = dtype in (tf.float32, tf.float64)
            if floating or (
                numeric.dtype.kind in "iu" and all(_accepts(v, dtype) for v in (int(numeric.min()), int(numeric.max())))
            ):
                with np.errstate(over="ignore"):  # beyond float32: +-inf, as TF Serving's cast gives
                    return numeric.astype(dtype.as_numpy_dtype).reshape(shape)
    leaves: list = []
    _walk(value, 0, shape, dtype, leaves)
    if dtype == tf.string:
        array = np.empty(len(leaves), dtype=object)
        array[:] = leaves
        return array.reshape(shape)
    if dtype in (tf.int8, tf.int16, tf.uint8):  # read as int32 and cast, wrapping, as TensorFlow does
        return np.array(leaves, dtype=np.int64).astype(dtype.as_numpy_dtype).reshape(shape)
    with np.errstate(over="ignore"):  # beyond float32: +-inf
        return np.array(leaves, dtype=dtype.as_numpy_dtype).reshape(shape)


def predict_inputs(document: dict, tensor_infos, booleans: bool = True) -> tuple[dict, bool]:
    """The arrays of a `:predict` body, by input alias, and whether it used the row format.

    Args:
        document: the request object.
        tensor_infos: the signature's inputs (alias -> TensorInfo).
        booleans: False when the body holds no JSON `true`/`false` (a faster conversion).

    Returns:
        ({alias: array}, row_format): `instances` are batched along a new first dimension,
        `inputs` are taken as they are.
    """
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise invalid_argument(
            f"JSON Value: {debug_string(document)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    dtypes = {alias: tf.dtypes.as_dtype(info.dtype) for alias, info in tensor_infos.items()}
    if has_instances:
        return _from_instances(document, dtypes, booleans), True
    if has_inputs:
        return _from_columns(document["inputs"], dtypes, booleans), False
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _from_instances(document: dict, dtypes: dict, booleans: bool) -> dict:
    instances = document["instances"]
    if not isinstance(instances, list):
        raise invalid_argument(f"JSON Value: {debug_string(document)} Expecting 'instances' to be an list/array")
    if not instances:
        raise invalid_argument(f"JSON Value: {debug_string(document)} No values in 'instances' array")

    def is_object(value) -> bool:
        return isinstance(value, dict) and not is_b64(value)

    if not isinstance(instances[0], dict) and len(dtypes) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as "
            "per tensorinfo_map"
        )
    objects = is_object(instances[0])
    columns: dict = {}

    def add(alias: str, value) -> None:
        if alias not in dtypes:
            raise invalid_argument(f"JSON object: does not have named input: {alias}")
        array = to_array(value, dtypes[alias], booleans)
        if alias in columns:
            first = columns[alias][0]
            if first.size != array.size:
                raise invalid_argument(f"Expecting tensor size: {first.size} but got: {array.size}")
            if first.shape != array.shape:
                raise invalid_argument(f"Expecting shape {_shape(first.shape)} but got: {_shape(array.shape)}")
        columns.setdefault(alias, []).append(array)

    for index, item in enumerate(instances):
        if objects:
            if not is_object(item):
                raise invalid_argument(f"Expecting object but got list at item {index} of input list")
            for alias, value in item.items():
                try:
                    add(alias, value)
                except ServingError as error:
                    raise invalid_argument(
                        f"Failed to process element: {index} key: {alias} of 'instances' list. "
                        f"Error: INVALID_ARGUMENT: {error.message}"
                    ) from error
            if set(item) != set(dtypes):
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: {debug_string(item)} "
                    f"keys must be equal to: {','.join(sorted(dtypes))}"
                )
        else:
            if is_object(item):
                raise invalid_argument(f"Expecting value/list but got object at item {index} of input list")
            try:
                add(next(iter(sorted(dtypes))), item)
            except ServingError as error:
                raise invalid_argument(
                    f"Failed to process element: {index} of 'instances' list. Error: INVALID_ARGUMENT: {error.message}"
                ) from error
    return {alias: np.stack(arrays) for alias, arrays in columns.items()}


def _shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _from_columns(value, dtypes: dict, booleans: bool) -> dict:
    if not isinstance(value, dict) or is_b64(value):
        if len(dtypes) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as "
                "per tensorinfo_map"
            )
        alias = next(iter(dtypes))
        return {alias: to_array(value, dtypes[alias], booleans)}
    arrays = {}
    for alias in sorted(dtypes):
        if alias not in value:
            raise invalid_argument(f"Missing named input: {alias} in 'inputs' object.")
        arrays[alias] = to_array(value[alias], dtypes[alias], booleans)
    return arrays


# --- results -------------------------------------------------------------------------------------


_NON_FINITE = {"nan": "NaN", "-nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _float_texts(values: np.ndarray, digits: int) -> list[str]:
    """TF Serving's float text, flat: %g when it reads back exactly, else %.{digits}g; `.0` on whole numbers."""
    flat = values.ravel()
    texts = ["%g" % v for v in flat.tolist()]  # noqa: UP031 - printf semantics are the point
    if not texts:
        return texts
    with np.errstate(all="ignore"):
        inexact = np.flatnonzero((np.array(texts, dtype=np.float64).astype(flat.dtype) != flat) & np.isfinite(flat))
    for index in inexact.tolist():
        texts[index] = f"%.{digits}g" % flat[index]
    return [_NON_FINITE.get(t, t) if "n" in t else t if "." in t or "e" in t else t + ".0" for t in texts]


def _leaf_texts(alias: str, array: np.ndarray) -> list[str]:
    """Each element of an output tensor as JSON text, in row-major order."""
    if array.dtype == np.float32:
        return _float_texts(array, 9)
    if array.dtype == np.float64:
        return _float_texts(array, 17)
    if array.dtype == np.bool_:
        return ["true" if v else "false" for v in array.ravel().tolist()]
    if array.dtype.kind in "iu":
        return [str(v) for v in array.ravel().tolist()]
    if array.dtype.kind in "OS":
        if alias.endswith("_bytes"):
            import base64

            return [json.dumps({"b64": base64.b64encode(v).decode("ascii")}) for v in array.ravel().tolist()]
        return [json.dumps(v.decode("utf-8", "replace")) for v in array.ravel().tolist()]
    raise invalid_argument(f"Failed to write JSON value for tensor type: {data_type_string(array.dtype)}")


def _nest(items: list[str], shape) -> list[str]:
    """Flat element texts grouped into JSON arrays, innermost dimension first; one text per outer element.

    With shape (2, 3) and six items: ["[a, b, c]", "[d, e, f]"] for `shape[1:]` grouping, and so on
    up to the first dimension (which stays a list).
    """
    for level in range(len(shape) - 1, 0, -1):
        size = shape[level]
        if size == 0:  # as many empty arrays as the outer dimensions hold
            items = ["[]"] * int(np.prod(shape[:level], dtype=np.int64))
        else:
            items = ["[" + ", ".join(items[k : k + size]) + "]" for k in range(0, len(items), size)]
    return items


def _value(items: list[str], shape) -> str:
    """A whole tensor's JSON text (a scalar is its single value)."""
    if not len(shape):
        return items[0]
    return "[" + ", ".join(_nest(items, shape)) + "]"


def tensors_json(outputs: dict, row_format: bool) -> str:
    """A `:predict` reply: `{"predictions": [...]}` (row format) or `{"outputs": ...}` (columnar)."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    arrays = {alias: np.asarray(value) for alias, value in outputs.items()}
    texts = {alias: _leaf_texts(alias, array) for alias, array in arrays.items()}
    if not row_format:
        if len(texts) == 1:
            ((alias, items),) = texts.items()
            return '{"outputs": ' + _value(items, arrays[alias].shape) + "}"
        members = ", ".join(f"{json.dumps(alias)}: {_value(t, arrays[alias].shape)}" for alias, t in texts.items())
        return '{"outputs": {' + members + "}}"
    batch = -1
    for alias, array in arrays.items():
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {alias} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise invalid_argument(
                f"Tensor name: {alias} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
            )
        batch = array.shape[0]
    rows = {alias: _nest(items, arrays[alias].shape) for alias, items in texts.items()}
    if len(rows) == 1:
        lines = next(iter(rows.values()))
    else:
        named = [(json.dumps(alias), row_texts) for alias, row_texts in rows.items()]
        lines = ["{" + ", ".join(f"{name}: {r[i]}" for name, r in named) + "}" for i in range(batch)]
    return '{"predictions": [' + ", ".join(lines) + "]}"


def classification_json(result) -> str:
    """A `:classify` reply: `{"results": [[[label, score], ...], ...]}`."""
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        scores = _float_texts(np.array([c.score for c in classifications.classes], np.float32), 9)
        pairs = [f"[{json.dumps(c.label)}, {s}]" for c, s in zip(classifications.classes, scores, strict=True)]
        rows.append("[" + ", ".join(pairs) + "]")
    return '{"results": [' + ", ".join(rows) + "]}"


def regression_json(result) -> str:
    """A `:regress` reply: `{"results": [value, ...]}`."""
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    values = _float_texts(np.array([r.value for r in result.regressions], np.float32), 9)
    return '{"results": [' + ", ".join(values) + "]}"


def examples_input(document: dict):
    """The `Input` proto of a `:classify`/`:regress` body."""
    return input_from_json(document, debug_string)
