"""The one TensorProto codec of client and server: numpy arrays to and from TensorProtos, without TensorFlow.

It reads and writes the `TensorProto` of any descriptor pool: the client's own (`wire.TensorProto`) and
TensorFlow's (the messages of `tensorflow-serving-api` that the server's gRPC stubs use).

Writing, two forms:
- `make_tensor_proto(array)`: numbers as `tensor_content` (the array's little-endian bytes, which TF
  Serving reads as it reads `tf.make_tensor_proto`'s), strings as `string_val`: what a client sends.
- `make_tensor_proto(array, typed=True)`: the typed `*_val` field of the dtype, as TF Serving answers;
  float and small non-negative integer arrays go in as packed fields straight from their bytes (the wire
  form of `float_val` is the array's little-endian bytes), which keeps a 30 MB answer cheap.

Reading, two modes:
- `make_ndarray(proto)`: as `tf.make_ndarray` and TensorFlow's `Tensor::FromProto` read it: fewer typed
  values than the shape holds stand for the rest by repeating the last one, none at all mean zeros.
- `make_ndarray(proto, strict=True)`: TF Serving's rules for a request tensor: `tensor_content` of exactly
  the shape's byte size, or exactly one typed value per element or a single one standing for all (as
  `tf.make_tensor_proto(7, shape=...)` writes); `request_array` words its refusal as TF Serving does.
Call `check_request_size` before reading a request: one value may stand for a huge shape.

Example:
>>> import numpy as np
>>> make_ndarray(make_tensor_proto(np.arange(6, dtype=np.uint8).reshape(2, 3))).tolist()
[[0, 1, 2], [3, 4, 5]]
"""

from __future__ import annotations

import grpc
import numpy as np

from ..errors import ServingError
from .messages import DATA_TYPES, TensorProto

# Values one request may declare, all input tensors together (`--max_request_elements`): 3 x the
# exported model's default pixel limit, i.e. 33.5 M RGB pixels. A TensorProto may hold one value for
# its whole shape, so without this a 55-byte request makes the server build a multi-GB array.
MAX_REQUEST_ELEMENTS = 3 << 25

# DataType name -> (numpy dtype, the typed field TensorFlow writes its values to).
_DTYPES = {
    "DT_HALF": (np.float16, "half_val"),  # each value's 16 bits, in an int32
    "DT_FLOAT": (np.float32, "float_val"),
    "DT_DOUBLE": (np.float64, "double_val"),
    "DT_INT8": (np.int8, "int_val"),
    "DT_INT16": (np.int16, "int_val"),
    "DT_INT32": (np.int32, "int_val"),
    "DT_INT64": (np.int64, "int64_val"),
    "DT_UINT8": (np.uint8, "int_val"),
    "DT_UINT16": (np.uint16, "int_val"),
    "DT_UINT32": (np.uint32, "uint32_val"),
    "DT_UINT64": (np.uint64, "uint64_val"),
    "DT_BOOL": (np.bool_, "bool_val"),
    "DT_COMPLEX64": (np.complex64, "scomplex_val"),  # real, imaginary, real, ...
    "DT_COMPLEX128": (np.complex128, "dcomplex_val"),
}
_BY_NUMBER = {DATA_TYPES[name]: (name, np.dtype(dtype), field) for name, (dtype, field) in _DTYPES.items()}
_BY_DTYPE = {dtype: number for number, (_, dtype, _) in _BY_NUMBER.items()}
_BFLOAT16 = 14  # DT_BFLOAT16: its numpy type is ml_dtypes' (which TensorFlow installs), imported when met


def _add_bfloat16() -> None:
    """Adds DT_BFLOAT16 (bits in half_val, as DT_HALF) to the tables once a bfloat16 tensor is met."""
    import ml_dtypes  # a second to import: not for clients that never see bfloat16

    _BY_NUMBER[_BFLOAT16] = ("DT_BFLOAT16", np.dtype(ml_dtypes.bfloat16), "half_val")
    _BY_DTYPE[np.dtype(ml_dtypes.bfloat16)] = _BFLOAT16
_STRING = DATA_TYPES["DT_STRING"]
# Typed value fields of a TensorProto and how many entries make one element (complex: 2).
_VALUE_FIELDS = dict.fromkeys(
    ["half_val", "float_val", "double_val", "int_val", "int64_val", "uint32_val", "uint64_val", "bool_val"], 1
) | {"string_val": 1, "scomplex_val": 2, "dcomplex_val": 2}
# Packed fields written straight from an array's bytes: field number, little-endian dtype.
_PACKED = {np.dtype(np.float32): (5, "<f4"), np.dtype(np.float64): (6, "<f8")}  # float_val, double_val
_INT_VAL = 7
# TensorFlow's C++ names of the dtypes whose numpy names differ, as its messages say them.
_TF_NAMES = {"float32": "float", "float64": "double", "float16": "half", "bytes": "string", "object": "string"}


def data_type_string(dtype) -> str:
    """TensorFlow's C++ name of a dtype (`float`, `double`, `int32`, `string`), as its messages say it.

    Args:
        dtype: a numpy dtype or a `tf.DType` (anything with the numpy-style `name`).
    """
    name = getattr(dtype, "name", None) or np.dtype(dtype).name
    name = "bytes" if name.startswith(("bytes", "str")) else name
    return _TF_NAMES.get(name, name)


def make_tensor_proto(values, proto=None, typed: bool = False):
    """A `TensorProto` of an array (see the module docstring for the two forms).

    Args:
        values: an array or anything `np.asarray` takes; bytes, str and object arrays of them are strings
            (str is written as UTF-8).
        proto: the message to fill (e.g. a reply's `outputs[alias]`, of any pool); None: a new
            `wire.TensorProto`.
        typed: write the typed `*_val` field (TF Serving's answers) instead of `tensor_content`.

    Returns:
        `proto`, with its dtype, shape and values set.

    Raises:
        ValueError: for a dtype TensorFlow has no DataType for here (e.g. datetime), or an object array
            holding something other than bytes or str.
    """
    array = np.asarray(values)
    proto = TensorProto() if proto is None else proto
    proto.tensor_shape.SetInParent()  # a scalar still says its shape is [], as TensorFlow writes it
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if array.dtype.kind in "OSU":
        strings = [item.encode() if isinstance(item, str) else item for item in array.ravel().tolist()]
        wrong = next((item for item in strings if not isinstance(item, bytes)), None)
        if wrong is not None:
            raise ValueError(f"a string tensor holds bytes or str only. Received: value={wrong!r}")
        proto.dtype = _STRING
        proto.string_val.extend(strings)
        return proto
    if array.dtype.name == "bfloat16" and array.dtype not in _BY_DTYPE:
        _add_bfloat16()
    if array.dtype not in _BY_DTYPE:
        raise ValueError(
            f"no TensorFlow DataType for this array's dtype (expected one of "
            f"{', '.join(sorted(str(d) for d in _BY_DTYPE))}, bytes or str). Received: dtype={array.dtype}"
        )
    proto.dtype = _BY_DTYPE[array.dtype]
    if not typed:
        proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        return proto
    flat = array.ravel()
    name, dtype, field = _BY_NUMBER[proto.dtype]
    if dtype in _PACKED:
        number, little_endian = _PACKED[dtype]
        proto.MergeFromString(_packed(number, flat.astype(little_endian).tobytes()))
    elif field == "int_val" and flat.size and 0 <= flat.min() and flat.max() < 128:
        proto.MergeFromString(_packed(_INT_VAL, flat.astype(np.uint8).tobytes()))  # 1-byte varints
    elif field == "half_val":
        proto.half_val.extend(flat.view(np.uint16).tolist())  # the bits
    elif dtype.kind == "c":
        getattr(proto, field).extend(flat.view(flat.real.dtype).tolist())  # (real, imaginary) pairs
    else:
        getattr(proto, field).extend(flat.tolist())
    return proto


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _packed(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def declared_elements(proto) -> int:
    """The number of elements a tensor's shape declares, read before any array is built.

    Raises:
        ValueError: on a negative dimension.
    """
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise ValueError(f"a tensor's dimensions cannot be negative. Received: shape={shape}")
    return int(np.prod(shape, dtype=object))  # Python ints: 2^63-sized claims do not wrap


def make_ndarray(proto, strict: bool = False) -> np.ndarray:
    """The numpy array a `TensorProto` holds (any pool's).

    Args:
        proto: a TensorProto.
        strict: TF Serving's rules for request tensors (see the module docstring).

    Returns:
        An array of the proto's shape and dtype; strings as an object array of bytes.

    Raises:
        ValueError: for a DataType without a numpy dtype here (quantized, resource, variant, ...),
            a negative dimension, `tensor_content` of the wrong size (or of a string tensor), more values
            than the shape holds, or (strict) a number of values that neither fills the shape nor is one.
    """
    elements = declared_elements(proto)
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if strict and not proto.tensor_content:
        count = sum(len(getattr(proto, field)) // n for field, n in _VALUE_FIELDS.items())
        if count not in (elements, 1):
            raise ValueError(f"{count} values do not fill the shape {shape} (nor is it one value for all)")
    if proto.dtype == _BFLOAT16 and _BFLOAT16 not in _BY_NUMBER:
        _add_bfloat16()
    if proto.dtype == _STRING:
        if proto.tensor_content:  # TensorFlow's own string encoding, which TF Serving does not answer with
            raise ValueError(
                f"string tensors are read from string_val. Received: {len(proto.tensor_content)} bytes of "
                "tensor_content"
            )
        values = list(proto.string_val)
        dtype = np.dtype(object)
    elif proto.dtype in _BY_NUMBER:
        name, dtype, field = _BY_NUMBER[proto.dtype]
        if proto.tensor_content:
            if len(proto.tensor_content) != elements * dtype.itemsize:
                raise ValueError(
                    f"{name} tensor_content of shape {shape} needs {elements * dtype.itemsize} bytes. "
                    f"Received: len(tensor_content)={len(proto.tensor_content)}"
                )
            return np.frombuffer(proto.tensor_content, dtype.newbyteorder("<")).astype(dtype).reshape(shape)
        values = _typed_values(getattr(proto, field), dtype)
    else:
        raise ValueError(f"no numpy dtype for this tensor's DataType here. Received: dtype={proto.dtype}")
    if len(values) > elements:
        raise ValueError(f"more values than the shape {shape} holds. Received: {len(values)} values")
    if len(values) == 0:
        return np.full(shape, b"", dtype) if proto.dtype == _STRING else np.zeros(shape, dtype)
    array = np.empty(elements, dtype)
    array[: len(values)] = values
    array[len(values) :] = values[-1]  # TensorFlow repeats the last value over the rest of the shape
    return array.reshape(shape)


def _typed_values(field, dtype: np.dtype) -> np.ndarray:
    if dtype.itemsize == 2 and dtype.kind not in "iu":  # half_val holds the bits of float16 and bfloat16
        return np.fromiter(field, np.uint16, len(field)).view(dtype)
    if dtype.kind == "c":  # (real, imaginary) pairs
        if len(field) % 2:
            raise ValueError(f"complex values come as (real, imaginary) pairs. Received: {len(field)} numbers")
        return np.fromiter(field, dtype.type(0).real.dtype, len(field)).view(dtype)
    return np.fromiter(field, dtype, len(field))


def request_array(alias: str, proto) -> np.ndarray:
    """A request tensor's array under TF Serving's rules; INVALID_ARGUMENT `tensor parsing error: ALIAS`
    (its words) when it breaks them."""
    try:
        return make_ndarray(proto, strict=True)
    except ValueError as error:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}") from error


def check_request_size(tensors: dict, max_elements: int = MAX_REQUEST_ELEMENTS) -> None:
    """Refuses a request whose tensors declare more than `max_elements` values together.

    Args:
        tensors: `{alias: TensorProto}` of one request.
        max_elements: the most values all tensors may declare together.

    Raises:
        ServingError: INVALID_ARGUMENT naming the limit and the shapes, before any array exists
            (`tensor parsing error` for a negative dimension).
    """
    sizes = {}
    for alias, proto in tensors.items():
        try:
            sizes[alias] = declared_elements(proto)
        except ValueError as error:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}") from error
    total = sum(sizes.values())
    if total > max_elements:
        shapes = ", ".join(f"'{a}' {[d.size for d in p.tensor_shape.dim]}" for a, p in tensors.items())
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request too large: its tensors declare {total} values ({shapes}); the limit is {max_elements} "
            "values a request (--max_request_elements)",
        )
