"""FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once on VGG16, as functional Keras models.

Layer names follow the reference (shelhamer/fcn.berkeleyvision.org, `voc-fcn*/net.py`): the backbone keeps
Keras's VGG16 names, then `fc6 fc7 score_fr`, and the skip/upsampling layers `upscore2 score_pool4
score_pool4c fuse_pool4 upscore_pool4 score_pool3 score_pool3c fuse_pool3` and the final `upscore` (32s),
`upscore16` (16s) or `upscore8` (8s). The last layer, `score`, crops to the input's height and width.

Two geometries:
- "aligned" (default): the preprocessed image is zero-padded at the bottom/right to a multiple of 32, all
  convolutions are 'same', pooling halves exactly, and each upsampling is a 'same' transposed convolution
  (kernel 2f, stride f). A location of a stride-s map is centred on input pixel s*(i + 0.5) - 0.5 at every
  stage, so skips add without cropping and the final crop starts at 0. It costs at most 31 pixels of
  padding instead of the reference's 200.
- "caffe": the reference exactly (conv1_1 padded by 100, ceil-mode pooling, fc6 7x7 'valid', 'valid'
  deconvolutions), with crop offsets derived from the layers' coordinate maps (19 for 32s; 5 and 27 for
  16s; 5, 9 and 31 for 8s). Use it for weights trained in Caffe.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_fcn import surgery
from keras_fcn.backbone import VGG16_FC_UNITS, VGG16_FILTERS, check_filters, vgg16_features
from keras_fcn.gemm_conv import GEMMConv2D
from keras_fcn.layers import BilinearUpsampling, CaffePreprocessing, CropToReference, PadToMultiple
from keras_fcn.variants import GEOMETRIES, STRIDE, VARIANTS
from keras_fcn.vgg16 import CAFFE_BGR_MEAN
from keras_fcn.weights import load_backbone_weights, transfer_weights

# The network's total stride: five 2x2 poolings.
# At-once training scales the skip features so that their scores start small next to the coarse ones.
AT_ONCE_POOL4_SCALE = 0.01
AT_ONCE_POOL3_SCALE = 0.0001


def _layer_coord_map(layer: keras.layers.Layer) -> tuple[float, float]:
    """The coordinate map of one Keras layer, from its configuration (see `surgery.coord_map`)."""
    if isinstance(layer, keras.layers.ZeroPadding2D):
        (top, _), (left, _) = layer.padding
        if top != left:
            raise ValueError(f"Expected equal padding on both axes. Received: {layer.name}.padding={layer.padding}")
        return surgery.coord_map("pad", pad=top)
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.MaxPooling2D, keras.layers.Conv2DTranspose)):
        kernel = layer.kernel_size if hasattr(layer, "kernel_size") else layer.pool_size
        (k, kw), (s, sw) = kernel, layer.strides
        if (k, s) != (kw, sw):
            raise ValueError(f"Expected square kernels and strides. Received: layer {layer.name!r}")
        # Padding before the map, as TensorFlow splits 'same' padding (the extra pixel goes after).
        if layer.padding == "valid":
            pad = 0
        elif isinstance(layer, keras.layers.Conv2DTranspose):
            pad = (k - s) // 2
        else:
            pad = max(k - s, 0) // 2
        kind = "deconv" if isinstance(layer, keras.layers.Conv2DTranspose) else "conv"
        return surgery.coord_map(kind, kernel=k, stride=s, pad=pad)
    if isinstance(layer, CropToReference):
        return 1.0, -float(layer.offset)
    return surgery.coord_map("identity")


def _coord_path(tensor: keras.KerasTensor, start: keras.KerasTensor) -> list[tuple[float, float]]:
    """Coordinate maps of the layers from `start` to `tensor`, following each layer's first input.

    The graph is read through Keras's public API: a functional model from `start` to `tensor` lists
    its layers, and each layer's `output` and `input` are the tensors of its (single) call.
    """
    if tensor is start:
        return []
    producers = {id(layer.output): layer for layer in keras.Model(start, tensor).layers}
    maps = []
    while tensor is not start:
        layer = producers.get(id(tensor))
        if layer is None or isinstance(layer, keras.layers.InputLayer):
            raise ValueError(f"{start.name!r} is not upstream of {tensor.name!r}")
        maps.append(_layer_coord_map(layer))
        inputs = layer.input
        tensor = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
    return maps[::-1]


class _Head:
    """Builds the score/upsampling/fusion layers of one model (keeps the per-model settings in one place)."""

    def __init__(self, num_classes: int, geometry: str, images: keras.KerasTensor):
        self.num_classes = num_classes
        self.geometry = geometry
        self.images = images

    def score(self, features, name):
        # Score layers start at zero (Caffe's default constant filler): a fresh model predicts all-zero
        # logits and the skips add nothing until trained.
        return keras.layers.Conv2D(self.num_classes, 1, kernel_initializer="zeros", name=name)(features)

    def upsample(self, scores, factor, name, trainable=True):
        return keras.layers.Conv2DTranspose(
            self.num_classes,
            2 * factor,
            strides=factor,
            padding="same" if self.geometry == "aligned" else "valid",
            use_bias=False,
            kernel_initializer=BilinearUpsampling(),
            trainable=trainable,
            name=name,
        )(scores)

    def crop(self, tensor, reference, name, **kwargs):
        offset = surgery.crop_offset(_coord_path(tensor, self.images), _coord_path(reference, self.images))
        if self.geometry == "aligned" and offset != 0:
            raise AssertionError(f"aligned geometry should need no crop offset, {name} needs {offset}")
        return CropToReference(offset, name=name, **kwargs)([tensor, reference])

    def fuse(self, upsampled, skip_scores, name, crop_name):
        """Adds a skip's scores to the upsampled coarse scores (cropped to them in the Caffe geometry)."""
        if self.geometry == "caffe":
            skip_scores = self.crop(skip_scores, upsampled, name=crop_name)
        return keras.layers.Add(name=name)([upsampled, skip_scores])


def fcn_features(
    preprocessed: keras.KerasTensor,
    backbone_filters: Sequence[int],
    fc_units: int,
    geometry: str,
    dropout: float,
) -> tuple[dict[str, keras.KerasTensor], keras.KerasTensor]:
    """The VGG16 stem and fc6/fc7 as convolutions, on preprocessed (BGR, mean-subtracted) images.

    Returns:
        The pooled maps by the reference's names ("pool1" … "pool5") and drop7's output `(N, H/32, W/32, fc_units)`.
    """
    x = preprocessed
    if geometry == "aligned":
        x = PadToMultiple(STRIDE, name="pad_to_stride")(x)  # (N, 32*ceil(H/32), 32*ceil(W/32), 3)
    pools = vgg16_features(x, backbone_filters, geometry)
    # A 7x7 convolution over a small map: patches x kernel matrix (one GEMM) is several times faster
    # than the direct convolution; same weights and config as a Conv2D.
    x = GEMMConv2D(
        fc_units, 7, padding="same" if geometry == "aligned" else "valid", activation="relu", name="fc6"
    )(pools["pool5"])  # (N, H/32, W/32, 4096)
    x = keras.layers.Dropout(dropout, name="drop6")(x)
    x = keras.layers.Conv2D(fc_units, 1, activation="relu", name="fc7")(x)
    x = keras.layers.Dropout(dropout, name="drop7")(x)
    return pools, x


def fcn_head(
    variant: str,
    num_classes: int,
    images: keras.KerasTensor,
    pools: dict[str, keras.KerasTensor],
    features: keras.KerasTensor,
    geometry: str,
    learn_final_upsampling: bool = False,
) -> keras.KerasTensor:
    """The score, upsampling and skip layers of `variant` on `fcn_features`' outputs.

    `images` is the graph's input: the crops are derived from the layers between it and each map, and the
    output is cropped to its height and width.

    Returns:
        The `score` layer's float32 logits `(N, H, W, num_classes)`.
    """
    head = _Head(num_classes, geometry, images)
    scores = head.score(features, "score_fr")  # (N, H/32, W/32, C)
    if variant == "fcn32s":
        upscored = head.upsample(scores, 32, "upscore", trainable=learn_final_upsampling)
    else:
        pool4, pool3 = pools["pool4"], pools["pool3"]
        if variant == "fcn8s_at_once":
            pool4 = keras.layers.Rescaling(AT_ONCE_POOL4_SCALE, name="scale_pool4")(pool4)
            pool3 = keras.layers.Rescaling(AT_ONCE_POOL3_SCALE, name="scale_pool3")(pool3)
        upscored = head.upsample(scores, 2, "upscore2")  # (N, H/16, W/16, C)
        fused = head.fuse(upscored, head.score(pool4, "score_pool4"), "fuse_pool4", "score_pool4c")
        if variant == "fcn16s":
            upscored = head.upsample(fused, 16, "upscore16", trainable=learn_final_upsampling)
        else:
            upscored = head.upsample(fused, 2, "upscore_pool4")  # (N, H/8, W/8, C)
            fused = head.fuse(upscored, head.score(pool3, "score_pool3"), "fuse_pool3", "score_pool3c")
            upscored = head.upsample(fused, 8, "upscore8", trainable=learn_final_upsampling)
    # Logits stay float32 under a mixed-precision policy: losses and argmax need the range.
    return head.crop(upscored, images, name="score", dtype="float32")  # (N, H, W, C)


def check_backbone_arguments(backbone_filters, fc_units, geometry: str, dropout: float) -> tuple[int, ...]:
    """Checks the arguments of the features (the functional builders' and `FCNBackbone`'s); returns the filters.

    Raises:
        ValueError: naming the argument and the value received.
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"Expected geometry in {GEOMETRIES}. Received: geometry={geometry!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"Expected 0 <= dropout < 1. Received: dropout={dropout}")
    if int(fc_units) != fc_units or fc_units < 1:
        raise ValueError(f"Expected a positive integer fc_units. Received: fc_units={fc_units}")
    backbone_filters = check_filters(backbone_filters)
    return backbone_filters


def build_fcn(
    variant: str,
    num_classes: int = 21,
    *,
    backbone_weights: str | None = None,
    geometry: str = "aligned",
    learn_final_upsampling: bool = False,
    dropout: float = 0.5,
    backbone_filters: Sequence[int] = VGG16_FILTERS,
    fc_units: int = VGG16_FC_UNITS,
    init_from: keras.Model | None = None,
    name: str | None = None,
    mean: Sequence[float] = CAFFE_BGR_MEAN,
) -> keras.Model:
    """Builds an FCN on VGG16 (see `fcn32s` for the arguments).

    Args:
        variant: one of `VARIANTS`: "fcn32s", "fcn16s", "fcn8s" or "fcn8s_at_once".
    """
    if variant not in VARIANTS:
        raise ValueError(f"Expected variant in {VARIANTS}. Received: variant={variant!r}")
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"Expected a positive integer number of classes. Received: num_classes={num_classes}")
    backbone_filters = check_backbone_arguments(backbone_filters, fc_units, geometry, dropout)
    if init_from is not None and not isinstance(init_from, keras.Model):
        raise ValueError(f"Expected init_from to be a keras.Model. Received: init_from={init_from!r}")
    num_classes = int(num_classes)

    images = keras.Input((None, None, 3), name="images")  # RGB, 0..255; uint8 arrays are cast
    x = CaffePreprocessing(mean, name="preprocess")(images)
    pools, features = fcn_features(x, backbone_filters, fc_units, geometry, dropout)
    logits = fcn_head(variant, num_classes, images, pools, features, geometry, learn_final_upsampling)
    model = keras.Model(images, logits, name=name or variant)

    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights)
    if init_from is not None:
        transfer_weights(init_from, model)
    return model


def fcn32s(num_classes: int = 21, **kwargs) -> keras.Model:
    """FCN-32s: VGG16, fc6/fc7 as convolutions, class scores upsampled 32x in one step.

    Args:
        num_classes: number of classes (21 for PASCAL VOC, background included).
        backbone_weights: None (random), "imagenet" (Keras's download and cache of the VGG16 weights),
            a path to Keras's VGG16 `.h5` file with its top (fc1/fc2 become fc6/fc7), or a path to a file
            written by `keras-fcn convert`.
        geometry: "aligned" (default; any input size, no 100-pixel padding) or "caffe" (the reference's
            padding, pooling and crop offsets, for weights trained in Caffe).
        learn_final_upsampling: make the final upsampling trainable (fixed bilinear by default, as in
            the reference; the 2x upsamplings of 16s/8s are trainable, as in the paper).
        dropout: rate of the Dropout after fc6 and fc7.
        backbone_filters: widths of the five VGG blocks (narrower nets of the same topology for tests).
        fc_units: width of fc6 and fc7.
        init_from: a trained model whose layers are copied by name (staged training: 32s → 16s → 8s).
        name: model name (defaults to the variant).
        mean: the BGR mean pixel the model subtracts (Keras's VGG16 mean by default;
            `keras_fcn.layers.REFERENCE_BGR_MEAN` for the reference's VOC models). Padding in the aligned
            geometry comes after the subtraction, so it pads with this mean.

    Returns:
        A functional model: input `images` `(N, H, W, 3)` RGB in [0, 255], any H and W; output `score`,
        float32 logits `(N, H, W, num_classes)`.

    Example:
    >>> model = fcn32s(21, backbone_weights="imagenet")
    >>> model(np.zeros((1, 375, 500, 3), "uint8")).shape
    TensorShape([1, 375, 500, 21])
    """
    return build_fcn("fcn32s", num_classes, **kwargs)


def fcn16s(num_classes: int = 21, **kwargs) -> keras.Model:
    """FCN-16s: FCN-32s plus pool4's scores, fused at stride 16 then upsampled 16x.

    Same arguments as `fcn32s`. The reference trains it from a trained FCN-32s: pass `init_from=fcn32s`.
    """
    return build_fcn("fcn16s", num_classes, **kwargs)


def fcn8s(num_classes: int = 21, **kwargs) -> keras.Model:
    """FCN-8s: FCN-16s plus pool3's scores, fused at stride 8 then upsampled 8x.

    Same arguments as `fcn32s`. The reference trains it from a trained FCN-16s: pass `init_from=fcn16s`.
    """
    return build_fcn("fcn8s", num_classes, **kwargs)


def fcn8s_at_once(num_classes: int = 21, **kwargs) -> keras.Model:
    """FCN-8s trained in one stage: pool4 is scaled by 0.01 and pool3 by 0.0001 before scoring.

    Same arguments as `fcn32s`.
    """
    return build_fcn("fcn8s_at_once", num_classes, **kwargs)
