"""An FCN's Keras layers written straight into an ONNX graph, one layer at a time, weights copied once.

An FCN needs few operators: the preprocessing (Cast, Transpose, Gather of the channels, Sub), Conv with
Relu, MaxPool, Pad (fixed, or computed from the input's size for "aligned" geometry), ConvTranspose,
Slice for the crops, Mul for the at-once net's scales, Add, and Softmax and ArgMax at the end. Writing them
from the layers' configs and weights takes about the weights' size in memory (tf2onnx's conversion of a
traced function, by contrast, needs tens of times the weights: the full-size FCN-8s, 540 MB of weights, did
not fit in 24 GB).

The graph computes in NCHW, ONNX's layout for convolutions: the input `images` uint8 `(N, H, W, 3)` is cast
and transposed once, and the logits are transposed back before `probabilities` (Softmax over the classes)
and `class_ids` (ArgMax of the logits, int32), as the SavedModel's `serving_default` answers. Models whose
layers it does not know are refused with the layer named. A model computing in bfloat16 or float16 is
written with its weights as they are, converted to float32, and computes in float32: onnxruntime's CPU
kernels are float32's.
"""

from __future__ import annotations

import numpy as np

from keras_fcn.functional import ends, wiring

INPUT_NAME = "images"
OUTPUT_NAMES = ("class_ids", "probabilities")


class _Graph:
    """The ModelProto being written, in place (a proto copied into another is copied whole: the weights twice)."""

    def __init__(self):
        import onnx

        self.helper = onnx.helper
        self.model = onnx.ModelProto()
        self.proto = self.model.graph
        self._count = 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}/{self._count}"

    def constant(self, stem: str, value: np.ndarray) -> str:
        from onnx import helper

        value = np.asarray(value)
        tensor = self.proto.initializer.add()
        tensor.name = self.name(stem)
        tensor.data_type = helper.np_dtype_to_tensor_dtype(value.dtype)
        tensor.dims.extend(value.shape)
        tensor.raw_data = np.ascontiguousarray(value).tobytes()  # little-endian, as ONNX stores raw data
        return tensor.name

    def node(self, op: str, inputs: list[str], stem: str, output: str | None = None, **attributes) -> str:
        output = output or self.name(stem)
        node = self.helper.make_node(op, inputs, [output], name=self.name(f"{stem}/{op}"), **attributes)
        self.proto.node.append(node)
        return output


def _same_or_valid(layer) -> dict:
    if layer.padding == "same":
        return {"auto_pad": "SAME_UPPER"}  # TensorFlow's "same": the odd pixel of padding at the end
    if layer.padding == "valid":
        return {}
    raise ValueError(f"layer {layer.name!r} has padding {layer.padding!r}; the ONNX writer knows 'same' and 'valid'")


def _conv(graph: _Graph, layer, x: str) -> str:
    import keras

    if layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1) or getattr(layer, "groups", 1) != 1:
        raise ValueError(f"layer {layer.name!r}: the ONNX writer knows undilated, ungrouped channels-last convolutions")
    transposed = isinstance(layer, keras.layers.Conv2DTranspose)
    if transposed and (layer.padding not in ("same", "valid") or layer.output_padding is not None):
        raise ValueError(f"layer {layer.name!r}: the ONNX writer knows transposed convolutions without output_padding")
    weights = [np.asarray(w, np.float32) for w in layer.get_weights()]
    # Keras kernels are (kh, kw, in, out), and (kh, kw, out, in) transposed; ONNX's are (out, in, kh, kw),
    # and (in, out, kh, kw) transposed: the same permutation.
    inputs = [x, graph.constant(f"{layer.name}/kernel", weights[0].transpose(3, 2, 0, 1))]
    if layer.use_bias:
        inputs.append(graph.constant(f"{layer.name}/bias", weights[1]))
    del weights
    attributes = {"kernel_shape": list(layer.kernel_size), "strides": list(layer.strides)}
    if not transposed:
        attributes.update(_same_or_valid(layer))
    elif layer.padding == "same":
        # TensorFlow's "same" transposed convolution is the full one, (H - 1) s + k, cut to H s: k - s rows
        # dropped, the odd one at the end; ONNX's pads drop them.
        cut = [max(k - s, 0) for k, s in zip(layer.kernel_size, layer.strides, strict=True)]
        attributes["pads"] = [c // 2 for c in cut] + [c - c // 2 for c in cut]
    y = graph.node("ConvTranspose" if transposed else "Conv", inputs, layer.name, **attributes)
    activation = keras.activations.serialize(layer.activation)
    activation = activation if isinstance(activation, str) else activation.get("config", {}).get("name", activation)
    if activation == "relu":
        return graph.node("Relu", [y], layer.name)
    if activation != "linear":
        raise ValueError(f"layer {layer.name!r} has activation {activation!r}; the ONNX writer knows relu and linear")
    return y


def _height_width(graph: _Graph, x: str, stem: str) -> str:
    """`x`'s (height, width) at run time: an int64 pair from its NCHW shape."""
    shape = graph.node("Shape", [x], stem)
    return graph.node("Gather", [shape, graph.constant("hw", np.array([2, 3], np.int64))], stem, axis=0)


def _pad_to_multiple(graph: _Graph, layer, x: str) -> str:
    """Zero rows and columns at the bottom and right up to a multiple: (m - size % m) % m, from the input's shape."""
    multiple = graph.constant(f"{layer.name}/multiple", np.array([layer.multiple] * 2, np.int64))
    remainder = graph.node("Mod", [_height_width(graph, x, layer.name), multiple], layer.name)
    missing = graph.node("Mod", [graph.node("Sub", [multiple, remainder], layer.name), multiple], layer.name)
    zeros = graph.constant("zeros", np.zeros(6, np.int64))
    pads = graph.node("Concat", [zeros, missing], layer.name, axis=0)  # (begin N C H W, end N C) + (end H, end W)
    return graph.node("Pad", [x, pads], layer.name, mode="constant")


def _crop(graph: _Graph, layer, x: str, reference: str) -> str:
    offset = graph.constant(f"{layer.name}/offset", np.array([layer.offset] * 2, np.int64))
    stops = graph.node("Add", [offset, _height_width(graph, reference, layer.name)], layer.name)
    return graph.node("Slice", [x, offset, stops, graph.constant("axes", np.array([2, 3], np.int64))], layer.name)


def _per_channel(value) -> np.ndarray:
    """A Rescaling factor for NCHW: a scalar as is, a per-channel vector (Caffe's Scale layer) as (1, C, 1, 1)."""
    value = np.asarray(value, np.float32)
    return value if value.size == 1 else value.reshape(1, -1, 1, 1)


def _layer(graph: _Graph, layer, inputs: list[str]) -> str:
    import keras

    from keras_fcn.layers import CaffePreprocessing, CropToReference, PadToMultiple

    if isinstance(layer, CaffePreprocessing):  # NCHW already: RGB -> BGR, minus the BGR mean
        bgr = graph.node("Gather", [inputs[0], graph.constant("bgr", np.array([2, 1, 0], np.int64))], layer.name,
                         axis=1)  # fmt: skip
        mean = graph.constant(f"{layer.name}/mean", np.asarray(layer.mean, np.float32).reshape(1, 3, 1, 1))
        return graph.node("Sub", [bgr, mean], layer.name)
    if isinstance(layer, PadToMultiple):
        return _pad_to_multiple(graph, layer, inputs[0])
    if isinstance(layer, CropToReference):
        return _crop(graph, layer, *inputs)
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):  # GEMMConv2D is a Conv2D
        return _conv(graph, layer, inputs[0])
    if isinstance(layer, keras.layers.MaxPooling2D):
        return graph.node("MaxPool", inputs, layer.name, kernel_shape=list(layer.pool_size),
                          strides=list(layer.strides), **_same_or_valid(layer))  # fmt: skip
    if isinstance(layer, keras.layers.ZeroPadding2D):
        (top, bottom), (left, right) = layer.padding
        pads = graph.constant(f"{layer.name}/pads", np.array([0, 0, top, left, 0, 0, bottom, right], np.int64))
        return graph.node("Pad", [inputs[0], pads], layer.name, mode="constant")
    if isinstance(layer, keras.layers.Dropout):
        return inputs[0]  # inference
    if isinstance(layer, keras.layers.Rescaling):
        scale, offset = (_per_channel(value) for value in (layer.scale, layer.offset))
        y = graph.node("Mul", [inputs[0], graph.constant(f"{layer.name}/scale", scale)], layer.name)
        if np.any(offset):
            y = graph.node("Add", [y, graph.constant(f"{layer.name}/offset", offset)], layer.name)
        return y
    if isinstance(layer, keras.layers.Add):
        y = inputs[0]
        for other in inputs[1:]:
            y = graph.node("Add", [y, other], layer.name)
        return y
    raise ValueError(
        f"the ONNX writer does not know layer {layer.name!r} ({type(layer).__name__}); it writes the layers of "
        "keras_fcn's FCNs. Export a SavedModel or LiteRT file instead."
    )


def model_to_onnx(model, opset: int = 17):
    """`model` (a keras_fcn FCN) as an `onnx.ModelProto`: input `images`, outputs `class_ids` and `probabilities`.

    Raises:
        ValueError: a layer the writer does not know (named), or a model with more than one input or output.
    """
    from onnx import TensorProto, helper

    inputs, outputs = ends(model)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"the ONNX writer takes a model with one input and one output; {model.name!r} has "
                         f"{len(inputs)} and {len(outputs)}")  # fmt: skip
    (input_name,), (output_name,) = inputs, outputs
    graph = _Graph()
    pixels = graph.node("Cast", [INPUT_NAME], "input", to=TensorProto.FLOAT)
    values = {input_name: graph.node("Transpose", [pixels], "input", perm=[0, 3, 1, 2])}
    for name, taken in wiring(model):
        if name not in values:  # the input is there already
            values[name] = _layer(graph, model.get_layer(name), [values[n] for n in taken])
    logits = graph.node("Transpose", [values[output_name]], "output", perm=[0, 2, 3, 1])
    graph.node("Softmax", [logits], "output", output=OUTPUT_NAMES[1], axis=-1)
    ids = graph.node("ArgMax", [logits], "output", axis=-1, keepdims=0)
    graph.node("Cast", [ids], "output", output=OUTPUT_NAMES[0], to=TensorProto.INT32)
    classes = int(model.outputs[0].shape[-1])
    proto = graph.proto
    proto.name = model.name
    proto.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", "H", "W", 3]))
    proto.output.extend([
        helper.make_tensor_value_info(OUTPUT_NAMES[0], TensorProto.INT32, ["N", "H", "W"]),
        helper.make_tensor_value_info(OUTPUT_NAMES[1], TensorProto.FLOAT, ["N", "H", "W", classes]),
    ])  # fmt: skip
    onnx_model = graph.model
    onnx_model.opset_import.append(helper.make_opsetid("", opset))
    onnx_model.ir_version = helper.find_min_ir_version_for(list(onnx_model.opset_import))
    onnx_model.producer_name = "keras_fcn"
    return onnx_model
