"""The reference's Caffe weight files (`.caffemodel`) → Keras models, equal to what Caffe computes.

`load_caffemodel(path)` reads a NetParameter binary with our own protobuf schema (`keras_fcn.caffe_proto`; no
Caffe, no pycaffe), recognises the net from its layer names and blob shapes, builds the matching model in the
"caffe" geometry with the dataset's mean pixel, and copies every blob:

- Convolution `(out, in, kh, kw)` → Conv2D `(kh, kw, in, out)`; InnerProduct `(out, c*h*w)` over a `(c, h, w)`
  map → Conv2D `(h, w, c, out)` (VGG16's fc6); Deconvolution `(in, out/group, kh, kw)` → Conv2DTranspose
  `(kh, kw, out, in)`, a grouped one expanded to its block-diagonal kernel; Scale `(C,)` → Rescaling.

Recognised: the reference's voc-fcn32s/16s/8s, voc-fcn8s-atonce, pascalcontext-fcn*, nyud-fcn* (color),
siftflow-fcn* (its semantic head; the geometric head is left out) and the plain `VGG_ILSVRC_16_layers`
classifier (legacy V1 layers; it becomes the convolutionalized classifier, fc6/fc7/fc8 as convolutions).

Memory: the file is mapped, not read (`keras_fcn.caffe_reader`); each blob is copied into its Keras variable
in slices of its output units and its pages are released, and the model is built with zero initial weights
(random initialisers cost about three times the weights while they run), so the peak stays near the model's
own size.
"""

from __future__ import annotations

import ast
import gc
import math
import os
import resource
import time
from dataclasses import dataclass, field

import keras
import numpy as np

from keras_fcn import caffe_proto, surgery
from keras_fcn.atomic import replacing
from keras_fcn.backbone import VGG16_BLOCK_DEPTHS
from keras_fcn.caffe_reader import Blob, CaffeLayer, CaffeModelError, CaffeNet, read_caffemodel
from keras_fcn.labels import VOC_CLASSES
from keras_fcn.layers import CaffePreprocessing
from keras_fcn.vgg16 import CAFFE_BGR_MEAN, REFERENCE_BGR_MEAN

# --- the reference's datasets: classes (in output order) and mean pixels (BGR), from its data layers -------
# `data/pascal-context/classes-59.txt`: background then the 59 classes of the task.
PASCAL_CONTEXT_CLASSES = VOC_CLASSES + (
    "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "clothes", "computer", "cup", "door",
    "fence", "floor", "flower", "food", "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain",
    "platform", "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedcloth", "track",
    "tree", "truck", "wall", "water", "window", "wood",
)  # fmt: skip
# `data/nyud/classes.txt` (Gupta et al.'s 40 classes; void is not an output). Its "refridgerator" is spelled
# right here.
NYUD_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop",
)  # fmt: skip
# `data/sift-flow/classes.txt`, semantic classes 1-33 (0 is void, not an output).
SIFT_FLOW_CLASSES = (
    "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert", "door",
    "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock", "sand",
    "sea", "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window",
)  # fmt: skip


@dataclass(frozen=True)
class Dataset:
    """One of the reference's datasets: its class names in output order and its mean pixel."""

    name: str
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]  # BGR, as its data layer subtracts it


DATASETS = {
    "voc": Dataset("voc", VOC_CLASSES, REFERENCE_BGR_MEAN),  # voc_layers.py
    "pascalcontext": Dataset("pascalcontext", PASCAL_CONTEXT_CLASSES, (104.007, 116.669, 122.679)),
    "nyud": Dataset("nyud", NYUD_CLASSES, (116.190, 97.203, 92.318)),  # nyud_layers.py, color
    "siftflow": Dataset("siftflow", SIFT_FLOW_CLASSES, (114.578, 115.294, 108.353)),  # siftflow_layers.py
}
BACKBONE_LAYERS = tuple(
    (f"conv{block}_{conv}", f"block{block}_conv{conv}")
    for block, depth in enumerate(VGG16_BLOCK_DEPTHS, start=1)
    for conv in range(1, depth + 1)
)
# The reference's head layers of each variant (Caffe names; the Keras layers have the same names).
HEADS = {
    "fcn32s": ("score_fr", "upscore"),
    "fcn16s": ("score_fr", "upscore2", "score_pool4", "upscore16"),
    "fcn8s": ("score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8"),
}
UPSAMPLING = {"upscore": 32, "upscore2": 2, "upscore16": 16, "upscore_pool4": 2, "upscore8": 8}
CROPS = ("score_pool4c", "score_pool3c", "score")
# Assign blobs larger than this in slices of output units, so that no full transposed copy is made.
_SLICE_BYTES = 32 * 2**20


# --- recognising the net ----------------------------------------------------------------------------------
@dataclass
class Recognised:
    """What `recognise` found: the reference net, and everything needed to build and fill its model."""

    name: str  # e.g. "voc-fcn8s-atonce", "VGG_ILSVRC_16_layers"
    variant: str  # a keras_fcn variant, or "vgg16" for the classifier
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    mean_source: str
    backbone_filters: tuple[int, ...]
    fc_units: int
    layer_map: dict  # Keras layer name -> Caffe layer name
    notes: tuple[str, ...] = ()
    scales: dict = field(default_factory=dict)  # at-once: Keras Rescaling name -> the Scale blob's values
    window: int = 7  # the classifier's fc6 window over pool5

    def describe(self) -> str:
        text = (
            f"{self.name}: {self.variant}, {self.num_classes} classes, VGG16 widths {self.backbone_filters}, "
            f"fc {self.fc_units}, BGR mean {self.mean} ({self.mean_source})"
        )
        return "; ".join((text, *self.notes))


def _geometry(layer: CaffeLayer) -> dict:
    """Kernel, stride, pad and group of a Convolution/Deconvolution/Pooling layer's fields (square only)."""
    if layer.type == "Pooling":
        p = layer.params.pooling_param
        kernel = (p.kernel_h or p.kernel_size, p.kernel_w or p.kernel_size)
        stride = (p.stride_h or p.stride, p.stride_w or p.stride)
        pad = (p.pad_h or p.pad, p.pad_w or p.pad)
        return {"kernel": kernel, "stride": stride, "pad": pad, "pool": p.pool, "round": p.round_mode,
                "global": p.global_pooling}  # fmt: skip
    p = layer.params.convolution_param

    def pair(values, h, w, default):
        if h or w:
            return (h, w)
        values = list(values) or [default]
        return (values[0], values[-1]) if len(values) <= 2 else (-1, -1)

    return {
        "kernel": pair(p.kernel_size, p.kernel_h, p.kernel_w, 0),
        "stride": pair(p.stride, p.stride_h, p.stride_w, 1),
        "pad": pair(p.pad, p.pad_h, p.pad_w, 0),
        "dilation": pair(p.dilation, 0, 0, 1),
        "group": p.group or 1,
        "bias_term": p.bias_term,
    }


def _check(condition: bool, what: str, found, path: str) -> None:
    if not condition:
        raise CaffeModelError(f"{what}; found {found}. Received: path={path!r}")


def _python_params(net: CaffeNet) -> dict:
    """The reference's Python data layer settings (`param_str`, a dict literal), when the file kept them."""
    for layer in net.layers:
        if layer.type == "Python" and not net.legacy:
            try:
                params = ast.literal_eval(layer.params.python_param.param_str or "{}")
            except (ValueError, SyntaxError):
                continue
            if isinstance(params, dict):
                return params
    return {}


def recognise(net: CaffeNet) -> Recognised:
    """Names the reference net in `net` from its layer names, types and blob shapes, and checks its geometry.

    Raises:
        CaffeModelError: not one of the recognised nets, or a layer whose shape or settings do not fit (named).
    """
    path = net.path
    layers = net.by_name()
    weighted = [layer.name for layer in net.layers if layer.blobs]
    missing = [caffe for caffe, _ in BACKBONE_LAYERS if caffe not in layers or not layers[caffe].blobs]
    if missing or "fc6" not in layers or "fc7" not in layers:
        raise CaffeModelError(
            "Not a net this importer knows (the reference's VGG16 FCNs or VGG_ILSVRC_16_layers): it lacks "
            f"{missing + [n for n in ('fc6', 'fc7') if n not in layers]}; its layers with weights are {weighted}. "
            f"Received: path={path!r}"
        )
    # Backbone: 3x3 convolutions chaining from 3 input channels; conv1_1 padded by 100 in the FCNs.
    filters, channels = [], 3
    classifier = layers["fc6"].type == "InnerProduct"
    for caffe_name, _ in BACKBONE_LAYERS:
        layer = layers[caffe_name]
        _check(layer.type == "Convolution", f"layer {caffe_name!r} should be a Convolution", layer.type, path)
        weight = layer.blobs[0]
        _check(len(weight.shape) == 4 and weight.shape[1:] == (channels, 3, 3),
               f"layer {caffe_name!r} should hold (out, {channels}, 3, 3) weights", weight.shape, path)
        channels = weight.shape[0]
        _check(len(layer.blobs) == 2 and layer.blobs[1].array.size == channels,
               f"layer {caffe_name!r} should hold a bias of {channels}", [b.shape for b in layer.blobs], path)
        geometry = _geometry(layer)
        pad = 100 if caffe_name == "conv1_1" and not classifier else 1
        expected = {"stride": (1, 1), "pad": (pad, pad), "dilation": (1, 1), "group": 1}
        found = {key: geometry[key] for key in expected}
        _check(found == expected, f"layer {caffe_name!r} should have {expected}", found, path)
        if caffe_name.endswith("_1"):
            filters.append(channels)
    for block in range(1, 6):
        pool = layers.get(f"pool{block}")
        if pool is not None:  # the file keeps layers without weights too; check them when present
            geometry = _geometry(pool)
            found = (geometry["pool"], geometry["kernel"], geometry["stride"], geometry["pad"], geometry["round"])
            _check(found == (0, (2, 2), (2, 2), (0, 0), 0),
                   f"layer 'pool{block}' should be a 2x2/2 max pooling rounding up", found, path)

    fc6 = layers["fc6"].blobs[0]
    if classifier:
        return _recognise_classifier(net, tuple(filters), channels)
    _check(len(fc6.shape) == 4 and fc6.shape[1:] == (channels, 7, 7),
           f"layer 'fc6' should hold (units, {channels}, 7, 7) weights", fc6.shape, path)
    fc_units = fc6.shape[0]
    fc7 = layers["fc7"].blobs[0]
    _check(fc7.shape == (fc_units, fc_units, 1, 1), f"layer 'fc7' should hold ({fc_units}, {fc_units}, 1, 1) weights",
           fc7.shape, path)
    for name in ("fc6", "fc7"):
        layer = layers[name]
        found = (layer.type, len(layer.blobs), _geometry(layer)["stride"], _geometry(layer)["pad"])
        _check(found == ("Convolution", 2, (1, 1), (0, 0)),
               f"layer {name!r} should be a Convolution with a bias, stride 1 and no padding", found, path)

    suffix = "_sem" if "score_fr_sem" in layers else ""
    if "score_fr" + suffix not in layers:
        raise CaffeModelError(
            f"Not a net this importer knows: a VGG16 FCN body without 'score_fr' (or SIFT Flow's 'score_fr_sem'); "
            f"its layers with weights are {weighted}. Received: path={path!r}"
        )
    variant = next((v for v in ("fcn8s", "fcn16s", "fcn32s") if all(n + suffix in layers for n in HEADS[v])), None)
    if variant is None:
        raise CaffeModelError(
            f"Not a net this importer knows: score layers {[n for n in weighted if 'score' in n or 'up' in n]} "
            f"match none of FCN-32s {HEADS['fcn32s']}, FCN-16s or FCN-8s. Received: path={path!r}"
        )
    at_once = variant == "fcn8s" and "scale_pool4" in layers and "scale_pool3" in layers
    num_classes = layers["score_fr" + suffix].blobs[0].shape[0]
    notes = []
    if suffix:
        dataset = DATASETS["siftflow"]
        if "score_fr_geo" in layers:
            notes.append("its geometric head (score_*_geo, 3 classes) is left out: the model is the semantic head")
    else:
        dataset = next((d for d in DATASETS.values() if len(d.class_names) == num_classes and d.name != "siftflow"),
                       None)  # fmt: skip
    if dataset is None or len(dataset.class_names) != num_classes:
        raise CaffeModelError(
            f"Found an FCN ({variant}) with {num_classes} classes, which matches none of the reference's datasets "
            f"(VOC 21, PASCAL-Context 60, NYUDv2 40, SIFT Flow 33). Received: path={path!r}"
        )

    layer_map = {keras_name: caffe_name for caffe_name, keras_name in BACKBONE_LAYERS}
    layer_map.update({"fc6": "fc6", "fc7": "fc7"})
    for name in HEADS[variant]:
        layer = layers[name + suffix]
        layer_map[name] = name + suffix
        weight = layer.blobs[0] if layer.blobs else None
        if name.startswith("score"):
            source = {"score_fr": fc_units, "score_pool4": filters[3], "score_pool3": filters[2]}[name]
            _check(layer.type == "Convolution" and weight is not None and weight.shape == (num_classes, source, 1, 1)
                   and _geometry(layer)["pad"] == (0, 0) and _geometry(layer)["stride"] == (1, 1),
                   f"layer {name + suffix!r} should be a 1x1 Convolution with ({num_classes}, {source}, 1, 1) weights",
                   (layer.type, weight.shape if weight else None), path)  # fmt: skip
        else:
            factor = UPSAMPLING[name]
            geometry = _geometry(layer) if layer.type == "Deconvolution" else {}
            group = geometry.get("group", 1)
            expected = (num_classes, num_classes // group, 2 * factor, 2 * factor)
            _check(layer.type == "Deconvolution" and weight is not None and weight.shape == expected
                   and geometry["stride"] == (factor, factor) and geometry["pad"] == (0, 0)
                   and num_classes % group == 0 and len(layer.blobs) == 1,
                   f"layer {name + suffix!r} should be a Deconvolution {2 * factor}x{2 * factor}/{factor} with "
                   f"(in, out/group, kh, kw) = {expected} weights and no bias",
                   (layer.type, [b.shape for b in layer.blobs],
                                                                      geometry), path)  # fmt: skip
    scales = {}
    if at_once:
        variant = "fcn8s_at_once"
        for name, width in (("scale_pool4", filters[3]), ("scale_pool3", filters[2])):
            layer = layers[name]
            scale_param = layer.params.scale_param
            _check(layer.type == "Scale" and len(layer.blobs) == 1 and layer.blobs[0].array.size in (1, width)
                   and scale_param.axis == 1 and scale_param.num_axes in (0, 1),
                   f"layer {name!r} should be a Scale of 1 or {width} values without a bias",
                   [b.shape for b in layer.blobs],
                   path)  # fmt: skip
            layer_map[name] = name
            scales[name] = layer.blobs[0].array
    params = _python_params(net)
    tops = params.get("tops") or ()
    if dataset.name == "nyud" and tops and "color" not in tops:
        raise CaffeModelError(
            f"Found an NYUDv2 FCN trained on {list(tops)} input, not colour images: only the colour nets can "
            f"take RGB pixels. Received: path={path!r}"
        )
    mean, mean_source = dataset.mean, f"the reference's {dataset.name} data layer"
    if isinstance(params.get("mean"), (tuple, list)) and len(params["mean"]) == 3:
        mean, mean_source = tuple(float(m) for m in params["mean"]), "the file's data layer"
    family = {"fcn8s_at_once": "fcn8s-atonce"}.get(variant, variant)
    color = "-color" if dataset.name == "nyud" else ""
    if dataset.name == "nyud" and not tops:
        notes.append("taken as the colour net (an HHA-input net has the same layers; its input is not RGB)")
    return Recognised(
        f"{dataset.name}-{family}{color}", variant, num_classes, dataset.class_names, mean, mean_source,
        tuple(filters), fc_units, layer_map, tuple(notes), scales,
    )


def _recognise_classifier(net: CaffeNet, filters: tuple[int, ...], channels: int) -> Recognised:
    path, layers = net.path, net.by_name()
    if "fc8" not in layers or not layers["fc8"].blobs:
        raise CaffeModelError(
            f"Found VGG16 with InnerProduct fc6 but no fc8 (a classifier needs it). Received: path={path!r}"
        )
    fc6 = layers["fc6"].blobs[0].array
    fc6 = fc6.reshape(fc6.shape[-2:]) if fc6.ndim == 4 and fc6.shape[:2] == (1, 1) else fc6
    window = math.isqrt(fc6.shape[-1] // channels) if fc6.ndim == 2 else 0
    _check(window > 0 and fc6.shape[-1] == window * window * channels,
           f"layer 'fc6' should hold (units, {channels}*h*w) InnerProduct weights", fc6.shape, path)
    fc_units = fc6.shape[0]
    classes = None
    for name, inputs in (("fc7", fc_units), ("fc8", fc_units)):
        blob = layers[name].blobs[0].array
        shape = blob.shape[-2:] if blob.ndim == 4 and blob.shape[:2] == (1, 1) else blob.shape
        _check(layers[name].type == "InnerProduct" and len(shape) == 2 and shape[1] == inputs
               and (name == "fc8" or shape[0] == fc_units),
               f"layer {name!r} should be an InnerProduct of (units, {inputs}) weights", shape, path)
        classes = shape[0]
    layer_map = {keras_name: caffe_name for caffe_name, keras_name in BACKBONE_LAYERS}
    layer_map.update({"fc6": "fc6", "fc7": "fc7", "fc8": "fc8"})
    names = tuple(f"class_{i}" for i in range(classes))
    return Recognised(
        net.name or "VGG_ILSVRC_16_layers", "vgg16", classes, names, CAFFE_BGR_MEAN,
        "VGG's ILSVRC mean pixel", filters, fc_units, layer_map,
        (f"fc6 InnerProduct over pool5 ({channels}, {window}, {window}) becomes a {window}x{window} convolution",),
        window=window,
    )


# --- building and filling the model -----------------------------------------------------------------------
def _zeros_config(model: keras.Model, widths: dict[str, int], settings: dict[str, dict]) -> dict:
    """`model`'s config with the given layer widths and settings, and zero initialisers everywhere."""
    config = model.get_config()
    zeros = keras.initializers.serialize(keras.initializers.Zeros())
    for layer in config["layers"]:
        layer_config = layer["config"]
        layer.pop("build_config", None)  # the narrow model's input shapes; rebuilt when called
        if layer["class_name"] in ("Conv2D", "Conv2DTranspose"):
            layer_config["filters"] = widths[layer_config["name"]]
            layer_config["kernel_initializer"] = zeros
            layer_config["bias_initializer"] = zeros
        layer_config.update(settings.get(layer_config["name"], {}))
    return config


def build_model(found: Recognised) -> keras.Model:
    """The empty (all-zero) Keras model for `found`, with the file's widths, mean and Scale values."""
    from keras_fcn.models import build_fcn

    if found.variant == "vgg16":
        return _vgg16_classifier(found)
    filters, units, classes = found.backbone_filters, found.fc_units, found.num_classes
    widths = {keras_name: filters[int(keras_name[5]) - 1] for _, keras_name in BACKBONE_LAYERS}
    widths.update({"fc6": units, "fc7": units})
    widths.update({name: classes for name in found.layer_map if name.startswith(("score", "upscore"))})
    settings = {}
    for name, values in found.scales.items():
        values = [float(v) for v in np.ravel(values)]
        settings[name] = {"scale": values[0] if len(set(values)) == 1 else values}
    # A narrow model of the same graph gives the config; building the full one with zeros costs one copy.
    narrow = build_fcn(found.variant, classes, geometry="caffe", mean=found.mean, backbone_filters=(1,) * 5,
                       fc_units=1, name=found.name.replace("-", "_"))  # fmt: skip
    return keras.Model.from_config(_zeros_config(narrow, widths, settings))


def _vgg16_classifier(found: Recognised) -> keras.Model:
    """VGG16 as Caffe runs it on any input size: 'same' 3x3 convolutions, 2x2 max pooling rounding up, and
    the InnerProduct layers as convolutions (fc6 over the pool5 window, fc7 and fc8 1x1). Output: fc8 logits.
    """
    window = found.window
    images = keras.Input((None, None, 3), name="images")  # RGB, 0..255
    x = CaffePreprocessing(found.mean, name="preprocess")(images)
    zeros = "zeros"
    for block, (width, depth) in enumerate(zip(found.backbone_filters, VGG16_BLOCK_DEPTHS, strict=True), start=1):
        for conv in range(1, depth + 1):
            x = keras.layers.Conv2D(width, 3, padding="same", activation="relu", kernel_initializer=zeros,
                                    name=f"block{block}_conv{conv}")(x)  # fmt: skip
        x = keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"block{block}_pool")(x)
    x = keras.layers.Conv2D(found.fc_units, window, activation="relu", kernel_initializer=zeros, name="fc6")(x)
    x = keras.layers.Dropout(0.5, name="drop6")(x)
    x = keras.layers.Conv2D(found.fc_units, 1, activation="relu", kernel_initializer=zeros, name="fc7")(x)
    x = keras.layers.Dropout(0.5, name="drop7")(x)
    x = keras.layers.Conv2D(found.num_classes, 1, kernel_initializer=zeros, dtype="float32", name="fc8")(x)
    return keras.Model(images, x, name="vgg16_caffe")

def _expand_groups(weight: np.ndarray, group: int) -> np.ndarray:
    """A grouped Deconvolution's `(in, out/group, kh, kw)` weights as the block-diagonal `(in, out, kh, kw)`."""
    if group == 1:
        return weight
    channels_in, per_group = weight.shape[:2]
    full = np.zeros((channels_in, per_group * group, *weight.shape[2:]), weight.dtype)
    inputs_per_group = channels_in // group
    for g in range(group):
        rows = slice(g * inputs_per_group, (g + 1) * inputs_per_group)
        full[rows, g * per_group : (g + 1) * per_group] = weight[rows]
    return full


def _assign_kernel(variable, rows: np.ndarray, to_keras, release=lambda start, stop: None) -> None:
    """Assigns Caffe weights whose first axis is the output units, as `to_keras(rows[a:b])`, slice by slice.

    `to_keras` maps `(units, ...)` Caffe rows to a Keras kernel ending in `units`; slicing the units keeps the
    transposed copy small (fc6's 411 MB would otherwise be copied whole).
    """
    step = max(1, int(_SLICE_BYTES // max(rows[:1].nbytes, 1)))
    if step >= rows.shape[0] or keras.backend.backend() != "tensorflow":
        variable.assign(np.ascontiguousarray(to_keras(rows), dtype=variable.dtype))
        return
    import tensorflow as tf

    # The raw op writes the slice into the variable's buffer; `v[..., a:b].assign` first reads the whole
    # variable, which makes TensorFlow copy all of it (411 MB for fc6) on every write.
    handle, shape = variable.value.handle, tuple(variable.shape)
    for start in range(0, rows.shape[0], step):
        piece = np.ascontiguousarray(to_keras(rows[start : start + step]), dtype=variable.dtype)
        tf.raw_ops.ResourceStridedSliceAssign(
            ref=handle, begin=[0] * (len(shape) - 1) + [start], end=[*shape[:-1], start + piece.shape[-1]],
            strides=[1] * len(shape), value=piece,
        )  # fmt: skip
        release(start, start + step)


def transplant(net: CaffeNet, found: Recognised, model: keras.Model) -> list[str]:
    """Copies every recognised blob of `net` into `model` (built by `build_model(found)`).

    Returns:
        The Keras layers filled.
    """
    layers = net.by_name()
    filled = []
    for keras_name, caffe_name in found.layer_map.items():
        layer, target = layers[caffe_name], model.get_layer(keras_name)
        if layer.type == "Scale":  # its values are in the Rescaling layer's config already
            filled.append(keras_name)
            continue
        blob = layer.blobs[0]
        weight = blob.array

        def release(start, stop, blob=blob):
            net.release(blob, start, stop)

        if layer.type == "Convolution":  # (out, in, kh, kw) -> (kh, kw, in, out)
            _assign_kernel(target.kernel, weight, lambda rows: rows.transpose(2, 3, 1, 0), release)
        elif layer.type == "InnerProduct":
            weight = weight.reshape(weight.shape[-2:])  # legacy blobs are (1, 1, out, in)
            blob = Blob(weight.shape, weight, blob.offset)  # rows are output units either way
            if keras_name == "fc6":  # (out, c*h*w) over Caffe's (c, h, w) pool5
                feature = (found.backbone_filters[-1], found.window, found.window)
                _assign_kernel(target.kernel, weight,
                               lambda rows, feature=feature: surgery.caffe_fc_to_conv_kernel(rows, feature),
                               lambda start, stop, blob=blob: net.release(blob, start, stop))  # fmt: skip
            else:  # (out, in) -> (1, 1, in, out)
                _assign_kernel(target.kernel, weight, lambda rows: rows.T[None, None],
                               lambda start, stop, blob=blob: net.release(blob, start, stop))  # fmt: skip
        elif layer.type == "Deconvolution":  # (in, out/group, kh, kw) -> (kh, kw, out, in)
            full = _expand_groups(weight, _geometry(layer)["group"])
            target.kernel.assign(np.ascontiguousarray(surgery.caffe_deconv_to_keras_kernel(full), "float32"))
        if len(layer.blobs) > 1:
            target.bias.assign(layer.blobs[1].array.reshape(-1).astype("float32"))
        for blob in layer.blobs:
            net.release(blob)
        filled.append(keras_name)
    return filled


def _check_prototxt(net: CaffeNet, prototxt: str | os.PathLike) -> None:
    """Checks that a net definition agrees with the weight file: types and settings of the weighted layers.

    The file's own layer fields are what the model is built from; the prototxt (e.g. the reference's
    `deploy.prototxt`) is a second opinion, and its data layer's settings (mean, input tops) are used when the
    weight file lacks them.
    """
    from google.protobuf import text_format

    prototxt = os.fspath(prototxt)
    try:
        with open(prototxt, encoding="utf-8") as handle:
            definition = text_format.Parse(handle.read(), caffe_proto.NetParameter(), allow_unknown_field=True)
    except (OSError, UnicodeDecodeError, text_format.ParseError) as error:
        raise CaffeModelError(f"Cannot read the net definition: {error}. Received: prototxt={prototxt!r}") from None
    legacy = bool(definition.layers) and not definition.layer
    defined = {}
    for params in definition.layers if legacy else definition.layer:
        layer_type = caffe_proto.V1_TYPE_NAMES.get(params.type, str(params.type)) if legacy else params.type
        defined[params.name] = CaffeLayer(params.name, layer_type, params)
    for layer in net.layers:
        if not layer.blobs:
            continue
        other = defined.get(layer.name)
        if other is None:
            raise CaffeModelError(
                f"The net definition has no layer {layer.name!r}, which the weight file holds. "
                f"Received: prototxt={prototxt!r}"
            )
        mine = (layer.type, _geometry(layer) if layer.type in ("Convolution", "Deconvolution") else None)
        theirs = (other.type, _geometry(other) if other.type in ("Convolution", "Deconvolution") else None)
        if mine != theirs:
            raise CaffeModelError(
                f"Layer {layer.name!r} is {mine} in the weight file but {theirs} in the net definition. "
                f"Received: prototxt={prototxt!r}"
            )
    if not _python_params(net):  # a weight file without its data layer: take the definition's
        net.layers += [layer for layer in defined.values() if layer.type == "Python" and not legacy]


def load_caffemodel(path: str | os.PathLike, prototxt: str | os.PathLike | None = None) -> keras.Model:
    """Loads one of the reference's Caffe weight files as a Keras model computing what Caffe computes.

    Args:
        path: the `.caffemodel` (e.g. `fcn8s-heavy-pascal.caffemodel`, `VGG_ILSVRC_16_layers.caffemodel`).
        prototxt: optional net definition, checked against the weight file's layers.

    Returns:
        For an FCN: `build_fcn(variant, num_classes, geometry="caffe", mean=<the dataset's mean>)` with the
        file's weights: input `images` RGB 0..255 `(N, H, W, 3)`, output logits `(N, H, W, classes)`. For
        VGG16: the convolutionalized classifier, output fc8 logits `(N, h, w, 1000)` (`(N, 1, 1, 1000)` on
        224x224). Its class names: `inspect_caffemodel(path).class_names`.

    Raises:
        CaffeModelError: unreadable or truncated file, an unknown net, or shapes that do not fit.

    Example:
    >>> model = load_caffemodel("fcn8s-heavy-pascal.caffemodel")  # doctest: +SKIP
    >>> model(np.zeros((1, 375, 500, 3), "uint8")).shape  # doctest: +SKIP
    TensorShape([1, 375, 500, 21])
    """
    model, _ = _load(path, prototxt)
    return model


def inspect_caffemodel(path: str | os.PathLike, prototxt: str | os.PathLike | None = None) -> Recognised:
    """Recognises the net in a `.caffemodel` without building it (name, variant, classes, mean, widths).

    Raises:
        CaffeModelError: as `load_caffemodel`.
    """
    with read_caffemodel(path) as net:
        if prototxt is not None:
            _check_prototxt(net, prototxt)
        return recognise(net)


def _load(path, prototxt) -> tuple[keras.Model, Recognised]:
    with read_caffemodel(path) as net:  # unmapped once the weights are copied into the model
        return _build(net, prototxt)


def _build(net: CaffeNet, prototxt) -> tuple[keras.Model, Recognised]:
    if prototxt is not None:
        _check_prototxt(net, prototxt)
    found = recognise(net)
    model = build_model(found)
    transplant(net, found, model)
    if found.variant != "vgg16":  # the file's crop offsets, when it kept its Crop layers, must be ours
        layers = net.by_name()
        suffix = "_sem" if found.layer_map["score_fr"].endswith("_sem") else ""
        for name in CROPS:
            caffe_name = f"{name[:-1]}{suffix}c" if name.endswith("c") else f"{name}{suffix}"
            layer = layers.get(caffe_name)
            if layer is None or layer.type != "Crop" or not layer.params.crop_param.offset:
                continue
            offsets = set(layer.params.crop_param.offset)
            ours = model.get_layer(name).offset
            _check(offsets == {ours}, f"layer {caffe_name!r} should crop at offset {ours}", sorted(offsets), net.path)
    return model, found


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def class_names_path(model_path: str | os.PathLike) -> str:
    """Where the class names of a `.keras` model lie: `NAME.classes.txt` beside `NAME.keras`."""
    return os.path.splitext(os.fspath(model_path))[0] + ".classes.txt"


def convert_caffemodel(
    path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    prototxt: str | os.PathLike | None = None,
    force: bool = False,
    verbose: bool = True,
) -> dict:
    """Imports a `.caffemodel` and writes it as a `.keras` model and its class names, atomically.

    The model is saved to a temporary file beside `output`, reloaded and compared with the in-memory model
    on a seeded probe image; only then are `output` and `NAME.classes.txt` (read by `keras-fcn predict` and
    `export`) renamed into place.

    Args:
        path: the `.caffemodel`.
        output: the `.keras` file to write.
        prototxt: optional net definition, checked against the file.
        force: overwrite an existing output.
        verbose: print what was recognised, the time, the peak memory and the self-check.

    Returns:
        `{"recognised": Recognised, "output": str, "class_names": str, "seconds": float,
        "peak_rss_bytes": int, "max_abs_diff": float}`.

    Raises:
        CaffeModelError: bad input (nothing is written); FileExistsError: the output exists and not `force`;
        ValueError: an output not ending in `.keras`.
    """
    start = time.perf_counter()
    path, output = os.fspath(path), os.fspath(output)
    if not output.endswith(".keras"):
        raise ValueError(f"Expected an output path ending in '.keras'. Received: output={output!r}")
    names_path = class_names_path(output)
    if not force and (os.path.exists(output) or os.path.exists(names_path)):
        raise FileExistsError(f"The output exists; pass --force to overwrite it. Received: output={output!r}")
    model, found = _load(path, prototxt)
    # Odd sizes for an FCN; the classifier needs at least its fc6 window at pool5.
    size = (32 * found.window,) * 2 if found.variant == "vgg16" else (37, 45)
    probe = np.random.default_rng(0).integers(0, 256, (1, *size, 3)).astype("uint8")
    expected = keras.ops.convert_to_numpy(model(probe))

    # Both files are renamed into place only after the self-check (the class names first).
    with replacing(output) as tmp, replacing(names_path) as tmp_names:
        model.save(tmp)
        del model  # before reloading: the two copies of the weights need not be in memory together
        gc.collect()
        with open(tmp_names, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{name}\n" for name in found.class_names))
        reloaded = keras.saving.load_model(tmp, compile=False)
        max_abs_diff = float(np.max(np.abs(expected - keras.ops.convert_to_numpy(reloaded(probe)))))
        if max_abs_diff != 0:
            raise CaffeModelError(f"The saved model differs from the imported one by {max_abs_diff}. "
                                  f"Received: output={output!r}")  # fmt: skip
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    if verbose:
        file_size = os.path.getsize(path)
        print(f"recognised {found.describe()}")
        print(f"wrote {output} and {names_path} ({found.num_classes} class names) in {seconds:.1f} s; peak memory "
              f"{peak / 2**20:.0f} MiB ({peak / file_size:.2f}x the {file_size / 2**20:.0f} MiB weight file)")
        print(f"self-check: the reloaded {os.path.basename(output)} equals the imported model on a "
              f"{size[0]}x{size[1]} probe "
              f"(max |difference| {max_abs_diff:.3g})")
    return {"recognised": found, "output": output, "class_names": names_path, "seconds": seconds,
            "peak_rss_bytes": peak, "max_abs_diff": max_abs_diff}  # fmt: skip
