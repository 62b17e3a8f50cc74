"""The TensorProto codec: request tensors to numpy arrays and numpy arrays to reply tensors."""

from __future__ import annotations

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from .errors import ServingError

MAX_REQUEST_ELEMENTS = 1 << 30  # no 1 GiB request message holds more values


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


def from_tensor_proto(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The numpy value of a request tensor; INVALID_ARGUMENT `tensor parsing error` when malformed."""
    try:
        dims = [d.size for d in proto.tensor_shape.dim]
        # One typed value may stand for a whole shape: refuse shapes no real request could fill.
        if any(d < 0 for d in dims) or np.prod(dims, dtype=np.float64) > MAX_REQUEST_ELEMENTS:
            raise ValueError(f"shape {dims}")
        array = tf.make_ndarray(proto)
    except Exception as error:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}") from error
    return array
