"""FCN in keras-hub's shape: a `Backbone`, an `ImageSegmenter`, its preprocessor and image converter.

- `FCNBackbone`: VGG16's five blocks and fc6/fc7 as convolutions, on preprocessed images; its
  `pyramid_outputs` are the pool3/pool4 taps the skips need.
- `FCNImageConverter`: RGB pixels in [0, 255] → the network's input: channel order (BGR for Caffe-trained
  weights) and the mean pixel subtracted, optionally resized.
- `FCNImageSegmenterPreprocessor`: the converter, and nearest-neighbour resizing of masks.
- `FCNImageSegmenter`: the FCN-32s/16s/8s/8s-at-once head on the backbone's own tensors, with the class
  names and the palette of its dataset; output float32 logits `(N, H, W, num_classes)`.

All are registered with Keras (package `keras_fcn`), so `keras_hub.models.ImageSegmenter.from_preset(dir)`
returns an `FCNImageSegmenter` once `keras_fcn` and `keras_hub` are imported. The layers keep the functional
builders' names (`block1_conv1` … `fc7`, `score_fr` … `score`): `to_functional(segmenter)` gives the model
`keras_fcn.fcn8s(...)` builds, holding the same weights (the one the CLI verbs, export and serving take),
and `from_functional(model)` goes back. Presets: `keras_fcn.presets`.

This module needs keras-hub (`pip install keras_fcn[hub]`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

try:
    import keras_hub
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        "keras_fcn's presets and keras-hub classes need keras-hub: pip install 'keras_fcn[hub]'"
    ) from error
import keras
import numpy as np

from keras_fcn.layers import CaffePreprocessing
from keras_fcn.metrics import SegmentationLoss
from keras_fcn.models import (
    AT_ONCE_POOL3_SCALE,
    AT_ONCE_POOL4_SCALE,
    build_fcn,
    check_backbone_arguments,
    fcn_features,
    fcn_head,
)
from keras_fcn.variants import VARIANTS
from keras_fcn.vgg16 import CAFFE_BGR_MEAN, VGG16_FC_UNITS, VGG16_FILTERS
from keras_fcn.weights import transfer_weights

CHANNEL_ORDERS = ("bgr", "rgb")
# The final upsampling layer of each variant (fixed bilinear unless `learn_final_upsampling`).
FINAL_UPSAMPLING = {"fcn32s": "upscore", "fcn16s": "upscore16", "fcn8s": "upscore8", "fcn8s_at_once": "upscore8"}


@keras.saving.register_keras_serializable(package="keras_fcn")
class FCNBackbone(keras_hub.models.Backbone):
    """VGG16 with fc6/fc7 as convolutions: the FCN's feature extractor, as a keras-hub `Backbone`.

    Its input is preprocessed images (see `FCNImageConverter`); its output is drop7's map
    `(N, H/32, W/32, fc_units)`, and `pyramid_outputs` holds "pool3" and "pool4" for the skips.

    Args:
        backbone_filters: widths of the five VGG blocks (VGG16's by default).
        fc_units: width of fc6 and fc7.
        geometry: "aligned" (pads to a multiple of 32, no crops) or "caffe" (the reference's 100-pixel
            padding and crops, for weights trained in Caffe).
        dropout: rate of the Dropout after fc6 and fc7.
        image_shape: the input's `(height, width, 3)`; `None` sizes take any image.
        dtype: the dtype policy of the layers.

    Example:
    >>> backbone = FCNBackbone(backbone_filters=(4, 8, 8, 16, 16), fc_units=16)
    >>> backbone(np.zeros((1, 64, 64, 3))).shape
    TensorShape([1, 2, 2, 16])
    """

    def __init__(
        self,
        backbone_filters: Sequence[int] = VGG16_FILTERS,
        fc_units: int = VGG16_FC_UNITS,
        geometry: str = "aligned",
        dropout: float = 0.5,
        image_shape: Sequence[int | None] = (None, None, 3),
        dtype=None,
        **kwargs,
    ):
        backbone_filters = check_backbone_arguments(backbone_filters, fc_units, geometry, dropout)
        image_shape = tuple(image_shape)
        if len(image_shape) != 3 or image_shape[-1] != 3:
            raise ValueError(f"Expected image_shape (height, width, 3). Received: image_shape={image_shape}")

        # === Functional model ===
        images = keras.Input(image_shape, name="images")  # preprocessed: BGR, mean subtracted
        pools, features = fcn_features(images, backbone_filters, int(fc_units), geometry, dropout)
        super().__init__(inputs=images, outputs=features, dtype=dtype, **kwargs)

        # === Config ===
        self.backbone_filters = backbone_filters
        self.fc_units = int(fc_units)
        self.geometry = geometry
        self.dropout = float(dropout)
        self.image_shape = image_shape
        self.pyramid_outputs = {"pool3": pools["pool3"], "pool4": pools["pool4"]}

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `from_preset`, and the built-in names of `keras_fcn.presets.BUILTIN_PRESETS`."""
        return super().from_preset(_resolve(preset, load_weights), load_weights=load_weights, **kwargs)

    def get_config(self):
        return {
            **super().get_config(),
            "backbone_filters": list(self.backbone_filters),
            "fc_units": self.fc_units,
            "geometry": self.geometry,
            "dropout": self.dropout,
            "image_shape": list(self.image_shape),
        }


@keras.saving.register_keras_serializable(package="keras_fcn")
class FCNImageConverter(keras_hub.layers.ImageConverter):
    """RGB pixels in [0, 255] → the FCN's input: optionally resized, channels reordered, mean subtracted.

    With `channel_order="bgr"` it computes what `keras_fcn.layers.CaffePreprocessing` computes inside the
    functional models (the input Caffe-trained VGG weights expect).

    Args:
        mean: the mean pixel subtracted, in `channel_order`'s order.
        channel_order: "bgr" (the reference's and Keras's VGG16 weights) or "rgb".
        image_size: `(height, width)` to resize to, or None (FCNs take any size).
        **kwargs: the other arguments of `keras_hub.layers.ImageConverter` (interpolation, ...).

    Example:
    >>> FCNImageConverter(mean=(104.0, 117.0, 123.0))(np.full((1, 2, 2, 3), 128, "uint8"))[0, 0, 0]
    [24., 11., 5.]
    """

    backbone_cls = FCNBackbone

    def __init__(
        self,
        mean: Sequence[float] = CAFFE_BGR_MEAN,
        channel_order: str = "bgr",
        image_size: Sequence[int] | None = None,
        **kwargs,
    ):
        mean = tuple(float(m) for m in mean)
        if len(mean) != 3:
            raise ValueError(f"Expected three channel means. Received: mean={mean}")
        if channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"Expected channel_order in {CHANNEL_ORDERS}. Received: channel_order={channel_order!r}")
        for name in ("scale", "offset"):  # the mean replaces them
            if kwargs.pop(name, None) is not None:
                raise ValueError(f"FCNImageConverter subtracts `mean`; it takes no {name}. Received: {name}=...")
        super().__init__(image_size=image_size, **kwargs)
        self.mean = mean
        self.channel_order = channel_order

    def call(self, inputs):
        x = super().call(inputs)  # resizing, when image_size is set
        x = keras.ops.cast(x, self.compute_dtype)
        if self.channel_order == "bgr":
            x = x[..., ::-1]
        return x - keras.ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        for name in ("scale", "offset"):
            config.pop(name, None)
        return {**config, "mean": list(self.mean), "channel_order": self.channel_order}


@keras.saving.register_keras_serializable(package="keras_fcn")
class FCNImageSegmenterPreprocessor(keras_hub.models.ImageSegmenterPreprocessor):
    """The FCN's preprocessor: `FCNImageConverter` on the images; masks resized nearest-neighbour with them."""

    backbone_cls = FCNBackbone
    image_converter_cls = FCNImageConverter


@keras.saving.register_keras_serializable(package="keras_fcn")
class FCNImageSegmenter(keras_hub.models.ImageSegmenter):
    """FCN-32s, FCN-16s, FCN-8s or FCN-8s at-once on an `FCNBackbone`, as a keras-hub `ImageSegmenter`.

    The head is built on the backbone's own tensors (pool3, pool4, drop7), so the model's layers are the
    functional builder's, under the same names. `predict` on raw RGB images runs the preprocessor first;
    calling the model directly takes preprocessed images.

    Args:
        backbone: an `FCNBackbone`.
        num_classes: number of output classes.
        variant: one of `keras_fcn.VARIANTS`.
        learn_final_upsampling: make the final upsampling trainable (fixed bilinear by default).
        class_names: the name of each class, in output order (saved with the preset), or None.
        palette: an RGB colour `[r, g, b]` per class for drawing masks, saved with the preset, or None.
        preprocessor: an `FCNImageSegmenterPreprocessor`, or None.

    Example:
    >>> backbone = FCNBackbone(backbone_filters=(4, 8, 8, 16, 16), fc_units=16)
    >>> segmenter = FCNImageSegmenter(backbone, 21, preprocessor=FCNImageSegmenterPreprocessor(FCNImageConverter()))
    >>> segmenter.predict(np.zeros((1, 40, 50, 3), "uint8")).shape
    (1, 40, 50, 21)
    """

    backbone_cls = FCNBackbone
    preprocessor_cls = FCNImageSegmenterPreprocessor

    def __init__(
        self,
        backbone: FCNBackbone,
        num_classes: int,
        variant: str = "fcn8s",
        learn_final_upsampling: bool = False,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        preprocessor=None,
        **kwargs,
    ):
        if not isinstance(backbone, FCNBackbone):
            raise ValueError(f"Expected an FCNBackbone. Received: backbone={backbone!r}")
        if variant not in VARIANTS:
            raise ValueError(f"Expected variant in {VARIANTS}. Received: variant={variant!r}")
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"Expected a positive integer number of classes. Received: num_classes={num_classes}")
        num_classes = int(num_classes)
        if class_names is not None:
            class_names = [str(name) for name in class_names]
            if len(class_names) != num_classes:
                raise ValueError(
                    f"Expected {num_classes} class names, one per output. Received: class_names={class_names}"
                )
        if palette is not None:
            palette = [[int(c) for c in colour] for colour in palette]
            if len(palette) < num_classes or any(len(c) != 3 or not all(0 <= v < 256 for v in c) for c in palette):
                raise ValueError(
                    f"Expected at least {num_classes} RGB colours in [0, 255]. Received: palette={palette}"
                )

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        images = backbone.input
        pools = backbone.pyramid_outputs
        logits = fcn_head(
            variant, num_classes, images, pools, backbone.output, backbone.geometry, learn_final_upsampling
        )

        # === Functional model ===
        super().__init__(inputs=images, outputs=logits, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.variant = variant
        self.learn_final_upsampling = bool(learn_final_upsampling)
        self.class_names = class_names
        self.palette = palette

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """keras-hub's `from_preset` (folder, `kaggle://`, `hf://`), and the built-in names of
        `keras_fcn.presets.BUILTIN_PRESETS` (downloaded and converted once).

        A backbone-only preset (`vgg16_ilsvrc`) needs `num_classes=` (and `variant=`): a new head.

        Raises:
            ValueError: an unknown name, a preset of another model (its class is named), or a backbone-only
                preset without `num_classes`.
        """
        local = _resolve(preset, load_weights)
        backbone_only = "://" not in local and not os.path.isfile(os.path.join(local, "task.json"))
        if backbone_only and "num_classes" not in kwargs:
            raise ValueError(
                "The preset holds a backbone only (no task.json): pass num_classes= (and variant=) for a new "
                f"head. Received: preset={preset!r}"
            )
        return super().from_preset(local, load_weights=load_weights, **kwargs)

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """keras-hub's defaults, except the loss: per-pixel softmax cross-entropy on sparse labels, ignoring 255."""
        if loss == "auto":
            loss = SegmentationLoss()
        if metrics == "auto":
            metrics = []
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "variant": self.variant,
            "learn_final_upsampling": self.learn_final_upsampling,
            "class_names": self.class_names,
            "palette": self.palette,
        }


def _resolve(preset, load_weights: bool = True) -> str:
    from keras_fcn.presets import check_fcn_preset, preset_path

    local = preset_path(preset)
    check_fcn_preset(local, preset, load_weights)
    return local


# --- the functional models of `keras_fcn.models` <-> the keras-hub classes -----------------------------------
def to_functional(segmenter: FCNImageSegmenter) -> keras.Model:
    """The functional model `keras_fcn.build_fcn` builds for `segmenter`, holding its weights.

    Its input is raw RGB pixels (the preprocessing is its first layer), as every CLI verb, export and serving
    expect.

    Raises:
        ValueError: not an FCNImageSegmenter, or a converter the functional model cannot express (RGB order).
    """
    if not isinstance(segmenter, FCNImageSegmenter):
        raise ValueError(f"Expected an FCNImageSegmenter. Received: segmenter={segmenter!r}")
    converter = segmenter.preprocessor.image_converter if segmenter.preprocessor is not None else None
    mean = CAFFE_BGR_MEAN if converter is None else converter.mean
    if converter is not None and converter.channel_order != "bgr":
        raise ValueError(
            "The functional models take RGB pixels and feed BGR to the network; this preset's converter keeps "
            f"RGB. Received: channel_order={converter.channel_order!r}"
        )
    backbone = segmenter.backbone
    model = build_fcn(
        segmenter.variant,
        segmenter.num_classes,
        geometry=backbone.geometry,
        dropout=backbone.dropout,
        backbone_filters=backbone.backbone_filters,
        fc_units=backbone.fc_units,
        learn_final_upsampling=segmenter.learn_final_upsampling,
        mean=mean,
        name=segmenter.variant,
    )
    _copy_all_weights(segmenter, model)
    return model


def _variant_of(model: keras.Model) -> str:
    names = {layer.name for layer in model.layers}
    if "scale_pool4" in names:
        return "fcn8s_at_once"
    for variant in ("fcn8s", "fcn16s", "fcn32s"):
        if FINAL_UPSAMPLING[variant] in names and "score_fr" in names:
            return variant
    raise ValueError(
        "Expected an FCN built by keras_fcn (layers score_fr and upscore, upscore16 or upscore8). "
        f"Received: model={model.name!r} with layers {sorted(names)[:8]}..."
    )


def from_functional(
    model: keras.Model,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> FCNImageSegmenter:
    """The `FCNImageSegmenter` (with its preprocessor) equal to a functional FCN of `keras_fcn.models`.

    Everything is read from the model's layers: variant, widths, geometry, dropout, mean pixel.

    Raises:
        ValueError: not a keras_fcn FCN (names what is missing), or at-once skip scales other than the
            reference's 0.01 and 0.0001.
    """
    variant = _variant_of(model)
    get = model.get_layer
    preprocess = next((layer for layer in model.layers if isinstance(layer, CaffePreprocessing)), None)
    if preprocess is None:
        raise ValueError(f"Expected a CaffePreprocessing layer (raw RGB input). Received: model={model.name!r}")
    if variant == "fcn8s_at_once":
        # An imported at-once net holds the Scale blobs' float32 values (0.01 is 0.0099999998): equal within
        # float32 rounding is the reference's constant.
        scales = (get("scale_pool4").scale, get("scale_pool3").scale)
        if not all(
            np.allclose(np.asarray(scale, "float64"), default, rtol=1e-6, atol=0)
            for scale, default in zip(scales, (AT_ONCE_POOL4_SCALE, AT_ONCE_POOL3_SCALE), strict=True)
        ):
            raise ValueError(
                f"Expected the at-once skip scales ({AT_ONCE_POOL4_SCALE}, {AT_ONCE_POOL3_SCALE}). "
                f"Received: scales={scales}"
            )
    backbone = FCNBackbone(
        backbone_filters=[get(f"block{block}_conv1").filters for block in range(1, 6)],
        fc_units=get("fc6").filters,
        geometry="caffe" if "conv1_1_pad" in {layer.name for layer in model.layers} else "aligned",
        dropout=get("drop6").rate,
    )
    preprocessor = FCNImageSegmenterPreprocessor(FCNImageConverter(mean=preprocess.mean))
    segmenter = FCNImageSegmenter(
        backbone,
        int(model.output_shape[-1]),
        variant=variant,
        learn_final_upsampling=get(FINAL_UPSAMPLING[variant]).trainable,
        class_names=class_names,
        palette=palette,
        preprocessor=preprocessor,
    )
    _copy_all_weights(model, segmenter)
    return segmenter


def _copy_all_weights(source: keras.Model, target: keras.Model) -> None:
    """Copies every weighted layer by name; every weighted layer of `target` must be filled."""
    copied = set(transfer_weights(source, target))
    missing = sorted({layer.name for layer in target.layers if layer.weights} - copied)
    if missing:
        raise ValueError(f"Layers without weights in the source: {missing}. Received: source={source.name!r}")
