"""numpy arrays to and from the `TensorProto`s of `wire`, without TensorFlow.

`make_tensor_proto` writes numbers as `tensor_content` (the array's little-endian bytes, which TF
Serving reads as it reads `tf.make_tensor_proto`'s) and strings as `string_val`. `make_ndarray` reads
what TF Serving answers: `tensor_content`, or the typed `*_val` field of the dtype, where fewer values than
the shape holds stand for the rest by repeating the last one (a single value fills the whole shape), and
no values at all mean zeros, as `tf.make_ndarray` and TensorFlow's `Tensor::FromProto` read them.

Example:
>>> import numpy as np
>>> make_ndarray(make_tensor_proto(np.arange(6, dtype=np.uint8).reshape(2, 3))).tolist()
[[0, 1, 2], [3, 4, 5]]
"""

from __future__ import annotations

import numpy as np

from .wire import DATA_TYPES, TensorProto

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
_BY_DTYPE = {np.dtype(dtype): DATA_TYPES[name] for name, (dtype, _) in _DTYPES.items()}
_STRING = DATA_TYPES["DT_STRING"]


def make_tensor_proto(values) -> TensorProto:
    """A `TensorProto` of an array: numbers as `tensor_content`, strings (bytes or str) as `string_val`.

    Args:
        values: an array or anything `np.asarray` takes; bytes, str and object arrays of them are strings
            (str is written as UTF-8).

    Returns:
        A `wire.TensorProto` with its dtype and shape set.

    Raises:
        ValueError: for a dtype TensorFlow has no DataType for here (e.g. datetime), or an object array
            holding something other than bytes or str.
    """
    array = np.asarray(values)
    proto = TensorProto()
    proto.tensor_shape.SetInParent()  # a scalar still says its shape is [], as tf.make_tensor_proto does
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
    if array.dtype not in _BY_DTYPE:
        raise ValueError(
            f"no TensorFlow DataType for this array's dtype (expected one of "
            f"{', '.join(sorted(str(d) for d in _BY_DTYPE))}, bytes or str). Received: dtype={array.dtype}"
        )
    proto.dtype = _BY_DTYPE[array.dtype]
    proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return proto


def make_ndarray(proto: TensorProto) -> np.ndarray:
    """The numpy array a `TensorProto` holds (any pool's: `wire`'s or TensorFlow's own).

    Args:
        proto: a TensorProto from a PredictResponse (or a request).

    Returns:
        An array of the proto's shape and dtype; strings as an object array of bytes.

    Raises:
        ValueError: for a DataType without a numpy dtype here (bfloat16, quantized, resource, variant),
            a negative dimension, `tensor_content` of the wrong size (or of a string tensor), or more values
            than the shape holds.
    """
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise ValueError(f"a tensor's dimensions cannot be negative. Received: shape={shape}")
    elements = int(np.prod(shape, dtype=np.int64))
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
    if dtype == np.float16:  # half_val holds the bit patterns
        return np.fromiter(field, np.uint16, len(field)).view(np.float16)
    if dtype.kind == "c":  # (real, imaginary) pairs
        if len(field) % 2:
            raise ValueError(f"complex values come as (real, imaginary) pairs. Received: {len(field)} numbers")
        return np.fromiter(field, dtype.type(0).real.dtype, len(field)).view(dtype)
    return np.fromiter(field, dtype, len(field))
