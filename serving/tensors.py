"""The TensorProto codec: request tensors to numpy arrays and numpy arrays to reply tensors."""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from .errors import ServingError

# Values one request may declare, all input tensors together (`--max_request_elements`): 3 x the
# exported model's default pixel limit, i.e. 33.5 M RGB pixels. A TensorProto may hold one value for
# its whole shape, so without this a 55-byte request makes the server build a multi-GB array.
MAX_REQUEST_ELEMENTS = 3 << 25
# Typed value fields of a TensorProto and how many entries make one element (complex: 2).
_VALUE_FIELDS = dict.fromkeys(
    ["half_val", "float_val", "double_val", "int_val", "int64_val", "uint32_val", "uint64_val", "bool_val"], 1
) | {"string_val": 1, "scomplex_val": 2, "dcomplex_val": 2}


_TF_NAMES = {"float32": "float", "float64": "double", "float16": "half"}


def data_type_string(dtype) -> str:
    """TensorFlow's C++ name of a dtype (`float`, `double`, `int32`, `string`), as its messages say it."""
    name = tf.dtypes.as_dtype(dtype).name
    return _TF_NAMES.get(name, name)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _packed(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with typed `*_val` fields, as TF Serving answers by default.

    Float and small non-negative integer arrays are written as packed fields straight from their
    bytes (the protobuf wire format of `float_val` is the array's little-endian bytes), which keeps
    a 30 MB reply cheap.
    """
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        proto = tf.make_tensor_proto(array.astype(object) if array.dtype.kind == "U" else array)
        return proto
    dtype = tf.dtypes.as_dtype(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    proto.tensor_shape.SetInParent()  # a scalar still says its shape is [] (TF's AsProtoField does)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.ravel()
    if array.dtype == np.float32:
        proto.MergeFromString(_packed(5, flat.astype("<f4").tobytes()))  # float_val
    elif array.dtype == np.float64:
        proto.MergeFromString(_packed(6, flat.astype("<f8").tobytes()))  # double_val
    elif array.dtype.kind in "iu" and array.dtype.itemsize <= 4 and array.dtype != np.uint32:
        if flat.size and 0 <= flat.min() and flat.max() < 128:
            proto.MergeFromString(_packed(7, flat.astype(np.uint8).tobytes()))  # int_val, 1-byte varints
        else:
            proto.int_val.extend(flat.tolist())
    elif array.dtype == np.int64:
        proto.int64_val.extend(flat.tolist())
    elif array.dtype == np.bool_:
        proto.bool_val.extend(flat.tolist())
    else:
        return tf.make_tensor_proto(array)
    return proto


def declared_elements(alias: str, proto: tensor_pb2.TensorProto) -> int:
    """The number of elements a request tensor's shape declares, read before any array is built.

    Raises:
        ServingError: INVALID_ARGUMENT `tensor parsing error` on a negative dimension.
    """
    dims = [d.size for d in proto.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}")
    return int(np.prod(dims, dtype=object))  # Python ints: 2^63-sized claims do not wrap


def check_request_size(tensors: dict, max_elements: int = MAX_REQUEST_ELEMENTS) -> None:
    """Refuses a request whose tensors declare more than `max_elements` values together.

    Args:
        tensors: `{alias: TensorProto}` of one request.
        max_elements: the most values all tensors may declare together.

    Raises:
        ServingError: INVALID_ARGUMENT naming the limit and the shapes, before any array exists.
    """
    sizes = {alias: declared_elements(alias, proto) for alias, proto in tensors.items()}
    total = sum(sizes.values())
    if total > max_elements:
        shapes = ", ".join(f"'{a}' {[d.size for d in p.tensor_shape.dim]}" for a, p in tensors.items())
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request too large: its tensors declare {total} values ({shapes}); the limit is {max_elements} "
            "values a request (--max_request_elements)",
        )


def from_tensor_proto(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The numpy value of a request tensor; INVALID_ARGUMENT `tensor parsing error` when malformed.

    The values must fill the declared shape: `tensor_content` of exactly its byte size, or typed
    values, one per element or a single one standing for all (as `tf.make_tensor_proto(7, shape=...)`
    writes). Call `check_request_size` first: one value may stand for a huge shape.
    """
    elements = declared_elements(alias, proto)
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype)
        if proto.tensor_content:
            if dtype == tf.string or len(proto.tensor_content) != elements * dtype.size:
                raise ValueError(f"tensor_content of {len(proto.tensor_content)} bytes")
        else:
            count = sum(len(getattr(proto, f)) // n for f, n in _VALUE_FIELDS.items())
            if count != elements and count != 1:
                raise ValueError(f"{count} values")
        array = tf.make_ndarray(proto)
    except Exception as error:  # TF Serving's text, word for word
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}") from error
    return array
