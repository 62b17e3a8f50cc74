"""Reading a Caffe weight file (`.caffemodel`): every layer's fields, and its blobs in place.

The NetParameter is walked by hand at the top (its layers) and inside each layer (its blobs), so that the float
arrays are never copied by protobuf: each blob's packed `data` becomes a numpy view on the memory-mapped file,
and `CaffeNet.release` drops its pages once copied. Everything else in a layer (name, type, convolution and
pooling settings) is parsed by protobuf with our schema, `keras_fcn.caffe_proto`.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

import numpy as np

from keras_fcn import caffe_proto


class CaffeModelError(ValueError):
    """A `.caffemodel` that cannot be read or is not a net this importer knows: the message names the problem."""


@dataclass
class Blob:
    """One blob of a layer: its shape as the file gives it and its numbers in Caffe's (C-order) layout."""

    shape: tuple[int, ...]
    array: np.ndarray  # float32 or float64; a view on the mapped file when `offset` >= 0
    offset: int  # where its data lies in the file (for releasing the pages), -1 when it was copied


@dataclass
class CaffeLayer:
    """One layer of the file: name, type (V1 enums as today's type names), its other fields, its blobs."""

    name: str
    type: str
    params: object  # LayerParameter (or V1LayerParameter) without its blobs
    blobs: list[Blob] = field(default_factory=list)


@dataclass
class CaffeNet:
    """The layers of a weight file, in file order; the file stays mapped while its blobs are used."""

    name: str
    layers: list[CaffeLayer]
    legacy: bool  # V1 `layers` (e.g. VGG_ILSVRC_16_layers) rather than `layer`
    path: str = ""
    _map: mmap.mmap | None = None

    def by_name(self) -> dict[str, CaffeLayer]:
        return {layer.name: layer for layer in self.layers}

    def close(self) -> None:
        """Unmaps the file, dropping the blobs' arrays that are views on it first; safe to call twice.

        An array the caller still holds keeps the map open (unmapping under it would crash); the map is
        then closed once that array is gone.
        """
        if self._map is None:
            return
        for layer in self.layers:
            for blob in layer.blobs:
                if blob.offset >= 0:
                    blob.array = None
        try:
            self._map.close()
        except BufferError:  # a view still exported: the garbage collector closes it after
            return
        self._map = None

    def __enter__(self) -> CaffeNet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def release(self, blob: Blob, start: int = 0, stop: int | None = None) -> None:
        """Drops the file pages of a copied blob (rows `start:stop`) from this process's memory.

        The pages stay in the system's page cache; only this process's resident size shrinks.
        """
        if self._map is None or not hasattr(mmap, "MADV_DONTNEED") or blob.offset < 0 or not blob.array.size:
            return
        row = blob.array[:1].nbytes if blob.array.ndim else blob.array.nbytes
        begin = blob.offset + start * row
        end = blob.offset + (blob.array.shape[0] if stop is None else stop) * row
        aligned = begin - begin % mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, aligned, end - aligned)


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise CaffeModelError("truncated or corrupt varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """Yields `(number, wire_type, field_start, value_start, value_end, varint_value)` of one message."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        value = None
        if wire == 0:
            value, pos2 = _varint(buf, pos, end)
        elif wire == 1:
            pos2 = pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            pos2 = pos + length
        elif wire == 5:
            pos2 = pos + 4
        else:  # groups (3, 4) are not in Caffe's schema; 6 and 7 do not exist
            raise CaffeModelError(f"unexpected wire type {wire} at byte {field_start}")
        if number == 0 or pos2 > end:
            raise CaffeModelError(f"truncated or corrupt field at byte {field_start}")
        yield number, wire, field_start, pos, pos2, value
        pos = pos2


def _read_blob(buf, start: int, end: int, layer: str) -> Blob:
    legacy = [0, 0, 0, 0]
    shape = None
    data, offset = None, -1
    for number, wire, _, value_start, value_end, value in _fields(buf, start, end):
        if number in (caffe_proto.BLOB_DATA, caffe_proto.BLOB_DOUBLE_DATA):
            dtype = "<f4" if number == caffe_proto.BLOB_DATA else "<f8"
            size = np.dtype(dtype).itemsize
            if wire == 2:  # packed, as Caffe writes them: read in place
                if (value_end - value_start) % size:
                    raise CaffeModelError(f"layer {layer!r}: blob data is not a whole number of floats")
                piece = np.frombuffer(buf, dtype, (value_end - value_start) // size, value_start)
                offset = value_start if data is None else -1  # several pieces are joined in a copy
            else:  # an unpacked element (allowed by protobuf; Caffe never writes it)
                piece, offset = np.frombuffer(bytes(buf[value_start:value_end]), dtype), -1
            data = piece if data is None else np.concatenate([data, piece])
        elif number == caffe_proto.BLOB_SHAPE and wire == 2:
            shape = tuple(int(d) for d in caffe_proto.BlobShape.FromString(bytes(buf[value_start:value_end])).dim)
        elif number in (1, 2, 3, 4) and wire == 0:
            legacy[number - 1] = value
    if shape is None:
        shape = tuple(legacy)
    if data is None:
        data = np.zeros(0, "<f4")
    if int(np.prod(shape)) != data.size:
        raise CaffeModelError(
            f"layer {layer!r}: a blob of shape {shape} holds {data.size} numbers (truncated or corrupt file)"
        )
    return Blob(shape, data.reshape(shape), offset)


def read_caffemodel(path: str | os.PathLike) -> CaffeNet:
    """Reads a `.caffemodel` (NetParameter binary): every layer's fields, and its blobs as views on the file.

    Args:
        path: the weight file.

    Returns:
        A `CaffeNet` (the file stays mapped while its blobs are in use).

    Raises:
        CaffeModelError: missing, empty, truncated or not a NetParameter.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CaffeModelError(f"Caffe weight file not found. Received: path={path!r}")
    if os.path.getsize(path) == 0:
        raise CaffeModelError(f"Not a Caffe weight file: it is empty. Received: path={path!r}")
    with open(path, "rb") as handle:
        buf = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        name, layers, legacy = _read_net(buf)
    except CaffeModelError as error:
        raise CaffeModelError(f"Not a readable Caffe weight file ({error}). Received: path={path!r}") from None
    if not layers:
        raise CaffeModelError(f"Not a Caffe weight file: it holds no layers. Received: path={path!r}")
    return CaffeNet(name, layers, legacy, path, buf)


def _read_net(buf) -> tuple[str, list[CaffeLayer], bool]:
    name, layers, legacy = "", [], False
    from google.protobuf.message import DecodeError

    for number, wire, _, value_start, value_end, _ in _fields(buf, 0, len(buf)):
        if number == 1 and wire == 2:
            name = bytes(buf[value_start:value_end]).decode("utf-8", "replace")
        if wire != 2 or number not in (caffe_proto.NET_LAYER, caffe_proto.NET_LAYERS):
            continue
        legacy = number == caffe_proto.NET_LAYERS
        blob_field = caffe_proto.V1_LAYER_BLOBS if legacy else caffe_proto.LAYER_BLOBS
        header, blob_spans = bytearray(), []
        for inner, inner_wire, field_start, start, end, _ in _fields(buf, value_start, value_end):
            if inner == blob_field and inner_wire == 2:
                blob_spans.append((start, end))
            else:
                header += buf[field_start:end]
        message = caffe_proto.V1LayerParameter if legacy else caffe_proto.LayerParameter
        try:
            params = message.FromString(bytes(header))
        except DecodeError as error:
            raise CaffeModelError(f"a layer does not parse: {error}") from None
        layer_type = caffe_proto.V1_TYPE_NAMES.get(params.type, str(params.type)) if legacy else params.type
        layer = CaffeLayer(params.name, layer_type, params)
        layer.blobs = [_read_blob(buf, start, end, params.name) for start, end in blob_spans]
        layers.append(layer)
    return name, layers, legacy
