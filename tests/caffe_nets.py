"""Writes Caffe nets in the reference's exact layer structure, with seeded random weights, for the importer's tests.

The structure follows shelhamer/fcn.berkeleyvision.org's `net.py` files (layer names, in-place ReLU and Dropout,
`Crop` offsets from its coordinate maps, Eltwise SUM fusions, Scale layers of the at-once net, SIFT Flow's
`_sem`/`_geo` heads) and VGG_ILSVRC_16_layers' legacy V1 layers. Two files come out: a deploy `.prototxt`
(an Input layer instead of the Python data layer, which OpenCV cannot run) and the `.caffemodel`, written
layer by layer (protobuf for each layer's fields, the float arrays appended as packed fields, as Caffe
writes them), so that a full-size file streams to disk.
"""

from __future__ import annotations

import os

import numpy as np
from google.protobuf import text_format

from keras_fcn import caffe_proto

CROP_OFFSETS = {"fcn32s": {"score": 19}, "fcn16s": {"score_pool4c": 5, "score": 27},
                "fcn8s": {"score_pool4c": 5, "score_pool3c": 9, "score": 31}}  # fmt: skip
BLOCKS = (2, 2, 3, 3, 3)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def blob_bytes(array: np.ndarray, legacy: bool = False) -> bytes:
    """A serialized BlobProto: its shape (or legacy num/channels/height/width) and packed float data."""
    blob = caffe_proto.BlobProto()
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(array.shape)
    return blob.SerializeToString() + _field(caffe_proto.BLOB_DATA, np.ascontiguousarray(array, "<f4").tobytes())


class NetWriter:
    """Collects layers (definition + weights) and writes the prototxt and the caffemodel."""

    def __init__(self, name: str, legacy: bool = False):
        self.name, self.legacy = name, legacy
        self.layers: list[tuple[object, list[np.ndarray]]] = []

    def add(self, params, blobs=(), deploy: bool = True):
        self.layers.append((params, list(blobs), deploy))

    def write(self, directory: str, input_shape: tuple[int, int], stem: str | None = None) -> tuple[str, str]:
        stem = os.path.join(directory, stem or self.name)
        definition = caffe_proto.NetParameter(name=self.name)
        if self.legacy:
            definition.input.append("data")
            definition.input_dim.extend([1, 3, *input_shape])
        else:
            data = definition.layer.add(name="input", type="Input", top=["data"])
            data.input_param.shape.add().dim.extend([1, 3, *input_shape])
        for params, _, deploy in self.layers:
            if deploy:
                (definition.layers if self.legacy else definition.layer).add().CopyFrom(params)
        with open(stem + ".prototxt", "w", encoding="utf-8") as handle:
            handle.write(text_format.MessageToString(definition))
        number = caffe_proto.NET_LAYERS if self.legacy else caffe_proto.NET_LAYER
        blob_field = caffe_proto.V1_LAYER_BLOBS if self.legacy else caffe_proto.LAYER_BLOBS
        with open(stem + ".caffemodel", "wb") as handle:
            handle.write(caffe_proto.NetParameter(name=self.name).SerializeToString())
            for params, blobs, _ in self.layers:
                payload = params.SerializeToString()
                payload += b"".join(_field(blob_field, blob_bytes(b, self.legacy)) for b in blobs)
                handle.write(_field(number, payload))
        return stem + ".prototxt", stem + ".caffemodel"


def _layer(name, kind, bottom, top, **params):
    layer = caffe_proto.LayerParameter(name=name, type=kind, bottom=list(bottom), top=list(top))
    for key, value in params.items():
        getattr(layer, key).CopyFrom(value) if hasattr(value, "ListFields") else setattr(layer, key, value)
    return layer


def _conv(num_output, kernel, pad=0, stride=1, bias_term=True, group=1):
    param = caffe_proto.ConvolutionParameter(num_output=num_output, bias_term=bias_term, group=group)
    param.kernel_size.append(kernel)
    if pad:
        param.pad.append(pad)
    if stride != 1:
        param.stride.append(stride)
    return param


class _Weights:
    """Seeded random weights with a He-like scale, so activations stay O(1) through the net."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def conv(self, out, inp, k):
        return (self.rng.standard_normal((out, inp, k, k)) * np.sqrt(2.0 / (inp * k * k))).astype("float32")

    def bias(self, out):
        return self.rng.uniform(-0.1, 0.1, out).astype("float32")


def fcn_net(variant: str, num_classes: int, filters=(4, 6, 8, 8, 10), fc_units: int = 12, seed: int = 0,
            at_once: bool = False, siftflow: bool = False, group: int = 1, scales=None,
            python_param: str | None = None) -> NetWriter:
    """A reference FCN (voc/pascalcontext/nyud/siftflow layout) with random weights in every layer.

    Args:
        variant: "fcn32s", "fcn16s" or "fcn8s".
        at_once: add the at-once net's Scale layers on pool4 and pool3.
        siftflow: name the head `*_sem` and add the geometric head `*_geo` (3 classes).
        group: the Deconvolutions' group (old releases used `group: num_classes`).
        scales: the Scale layers' values `(pool4, pool3)`: floats or per-channel arrays (default random).
        python_param: the data layer's `param_str` kept in the caffemodel (as the reference's files do).
    """
    weights = _Weights(seed)
    net = NetWriter(f"{variant}{'-atonce' if at_once else ''}")
    if python_param is not None:
        layer = _layer("data", "Python", [], ["data", "label"])
        layer.python_param.module, layer.python_param.param_str = "voc_layers", python_param
        net.add(layer, deploy=False)
    bottom, channels = "data", 3
    for block, (width, depth) in enumerate(zip(filters, BLOCKS, strict=True), start=1):
        for conv in range(1, depth + 1):
            name = f"conv{block}_{conv}"
            pad = 100 if name == "conv1_1" else 1
            net.add(_layer(name, "Convolution", [bottom], [name], convolution_param=_conv(width, 3, pad)),
                    [weights.conv(width, channels, 3), weights.bias(width)])  # fmt: skip
            net.add(_layer(f"relu{block}_{conv}", "ReLU", [name], [name]))
            bottom, channels = name, width
        pool = caffe_proto.PoolingParameter(pool=0, kernel_size=2, stride=2)
        net.add(_layer(f"pool{block}", "Pooling", [bottom], [f"pool{block}"], pooling_param=pool))
        bottom = f"pool{block}"
    for name, kernel, inp in (("fc6", 7, filters[4]), ("fc7", 1, fc_units)):
        net.add(_layer(name, "Convolution", [bottom], [name], convolution_param=_conv(fc_units, kernel)),
                [weights.conv(fc_units, inp, kernel), weights.bias(fc_units)])  # fmt: skip
        net.add(_layer(f"relu{name[-1]}", "ReLU", [name], [name]))
        net.add(_layer(f"drop{name[-1]}", "Dropout", [name], [name]))
        bottom = name
    heads = [("_sem" if siftflow else "", num_classes)] + ([("_geo", 3)] if siftflow else [])
    for suffix, classes in heads:
        _fcn_head(net, weights, variant, classes, suffix, filters, fc_units, at_once and not suffix, group, scales)
    return net


def _fcn_head(net, weights, variant, classes, suffix, filters, fc_units, at_once, group, scales):
    offsets = CROP_OFFSETS[variant]

    def score(name, bottom, inp):
        net.add(_layer(name + suffix, "Convolution", [bottom], [name + suffix], convolution_param=_conv(classes, 1)),
                [weights.conv(classes, inp, 1), weights.bias(classes)])  # fmt: skip

    def upscore(name, bottom, factor):
        param = _conv(classes, 2 * factor, stride=factor, bias_term=False, group=group)
        kernel = weights.rng.standard_normal((classes, classes // group, 2 * factor, 2 * factor)).astype("float32")
        net.add(_layer(name + suffix, "Deconvolution", [bottom], [name + suffix], convolution_param=param),
                [kernel / (2 * factor)])  # fmt: skip

    def crop(name, bottom, reference):
        param = caffe_proto.CropParameter(axis=2, offset=[offsets[name]])
        top = f"{name[:-1]}{suffix}c" if name.endswith("c") else name + suffix
        net.add(_layer(top, "Crop", [bottom, reference], [top], crop_param=param))
        return top

    def fuse(name, a, b):
        net.add(_layer(name + suffix, "Eltwise", [a, b], [name + suffix],
                       eltwise_param=caffe_proto.EltwiseParameter(operation=1)))  # fmt: skip

    score("score_fr", "fc7", fc_units)
    if variant == "fcn32s":
        upscore("upscore", "score_fr" + suffix, 32)
        final = "upscore" + suffix
    else:
        upscore("upscore2", "score_fr" + suffix, 2)
        pool4 = "pool4"
        if at_once:
            pool4 = _scale(net, weights, "scale_pool4", "pool4", filters[3], None if scales is None else scales[0])
        score("score_pool4", pool4, filters[3])
        fuse("fuse_pool4", "upscore2" + suffix, crop("score_pool4c", "score_pool4" + suffix, "upscore2" + suffix))
        if variant == "fcn16s":
            upscore("upscore16", "fuse_pool4" + suffix, 16)
            final = "upscore16" + suffix
        else:
            upscore("upscore_pool4", "fuse_pool4" + suffix, 2)
            pool3 = "pool3"
            if at_once:
                pool3 = _scale(net, weights, "scale_pool3", "pool3", filters[2], None if scales is None else scales[1])
            score("score_pool3", pool3, filters[2])
            fuse("fuse_pool3", "upscore_pool4" + suffix,
                 crop("score_pool3c", "score_pool3" + suffix, "upscore_pool4" + suffix))  # fmt: skip
            upscore("upscore8", "fuse_pool3" + suffix, 8)
            final = "upscore8" + suffix
    crop("score", final, "data")
    loss = _layer("loss" + suffix, "SoftmaxWithLoss", ["score" + suffix, "label"], ["loss" + suffix])
    net.add(loss, deploy=False)


def _scale(net, weights, name, bottom, channels, values):
    if values is None:
        values = weights.rng.uniform(0.5, 2.0, channels)
    values = np.broadcast_to(np.asarray(values, "float32"), (channels,)).copy()
    param = caffe_proto.ScaleParameter(filler=caffe_proto.FillerParameter(type="constant", value=float(values[0])))
    net.add(_layer(name, "Scale", [bottom], [name], scale_param=param), [values])
    return name


def vgg16_net(filters=(4, 6, 8, 8, 10), fc_units: int = 12, classes: int = 7, seed: int = 0) -> NetWriter:
    """VGG_ILSVRC_16_layers in legacy V1 layers: conv 3x3 pad 1, InnerProduct fc6 over (C, 7, 7), fc7, fc8."""
    weights = _Weights(seed)
    net = NetWriter("VGG_ILSVRC_16_layers", legacy=True)
    types = caffe_proto.V1LayerParameter.LayerType

    def layer(name, kind, bottom, top, **params):
        return caffe_proto.V1LayerParameter(name=name, type=types.Value(kind), bottom=[bottom], top=[top], **params)

    bottom, channels = "data", 3
    for block, (width, depth) in enumerate(zip(filters, BLOCKS, strict=True), start=1):
        for conv in range(1, depth + 1):
            name = f"conv{block}_{conv}"
            net.add(layer(name, "CONVOLUTION", bottom, name, convolution_param=_conv(width, 3, 1)),
                    [weights.conv(width, channels, 3), weights.bias(width)])  # fmt: skip
            net.add(layer(f"relu{block}_{conv}", "RELU", name, name))
            bottom, channels = name, width
        pool = caffe_proto.PoolingParameter(pool=0, kernel_size=2, stride=2)
        net.add(layer(f"pool{block}", "POOLING", bottom, f"pool{block}", pooling_param=pool))
        bottom = f"pool{block}"
    heads = (("fc6", channels * 49, fc_units), ("fc7", fc_units, fc_units), ("fc8", fc_units, classes))
    for name, inputs, units in heads:
        param = caffe_proto.InnerProductParameter(num_output=units)
        kernel = (weights.rng.standard_normal((units, inputs)) * np.sqrt(2.0 / inputs)).astype("float32")
        net.add(layer(name, "INNER_PRODUCT", bottom, name, inner_product_param=param), [kernel, weights.bias(units)])
        if name != "fc8":
            net.add(layer(f"relu{name[-1]}", "RELU", name, name))
            net.add(layer(f"drop{name[-1]}", "DROPOUT", name, name))
        bottom = name
    net.add(layer("prob", "SOFTMAX", "fc8", "prob"))
    return net
