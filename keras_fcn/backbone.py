"""VGG16 feature extractor with Keras's layer names (`block1_conv1` … `block5_pool`).

The layer names are those of `keras.applications.VGG16`, so ImageNet weights load by name. Widths are
arguments: the default is VGG16; narrower nets of the same topology keep tests and CPU demos small.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_fcn.variants import GEOMETRIES
from keras_fcn.vgg16 import VGG16_BLOCK_DEPTHS, VGG16_FC_UNITS, VGG16_FILTERS

__all__ = ["GEOMETRIES", "VGG16_BLOCK_DEPTHS", "VGG16_FC_UNITS", "VGG16_FILTERS", "vgg16_classifier", "vgg16_features"]

# The reference pads conv1_1 by 100 so that fc6's 7x7 'valid' window fits any input and every output
# pixel has a score after cropping.
CAFFE_CONV1_PAD = 100


def check_filters(filters: Sequence[int]) -> tuple[int, ...]:
    filters = tuple(filters)
    if len(filters) != 5 or any(int(f) != f or f < 1 for f in filters):
        raise ValueError(
            "Expected five positive filter counts, one per VGG16 block. "
            f"Received: backbone_filters={filters}"
        )
    return tuple(int(f) for f in filters)


def vgg16_features(
    images: keras.KerasTensor,
    filters: Sequence[int] = VGG16_FILTERS,
    geometry: str = "aligned",
) -> dict[str, keras.KerasTensor]:
    """Applies VGG16's five convolutional blocks to preprocessed images.

    Args:
        images: preprocessed (BGR, mean-subtracted) images `(N, H, W, 3)`; in the "aligned" geometry
            H and W must already be multiples of 32.
        filters: the width of each block.
        geometry: "aligned": 'same' convolutions and exact 2x2 pooling; "caffe": the reference's
            conv1_1 padding of 100 and ceil-mode pooling (Keras 'same' pooling pads at the end only,
            which is Caffe's rounding up for 2x2/2 windows).

    Returns:
        The pooled maps by the reference's names: "pool1" … "pool5" (`(N, H/32, W/32, filters[4])` for
        pool5 in the aligned geometry).
    """
    filters = check_filters(filters)
    if geometry not in GEOMETRIES:
        raise ValueError(f"Expected geometry in {GEOMETRIES}. Received: geometry={geometry!r}")
    x = images
    if geometry == "caffe":
        x = keras.layers.ZeroPadding2D(CAFFE_CONV1_PAD, name="conv1_1_pad")(x)
    pools = {}
    for block, (width, depth) in enumerate(zip(filters, VGG16_BLOCK_DEPTHS, strict=True), start=1):
        for conv in range(1, depth + 1):
            padding = "valid" if (geometry == "caffe" and block == 1 and conv == 1) else "same"
            x = keras.layers.Conv2D(
                width, 3, padding=padding, activation="relu", name=f"block{block}_conv{conv}"
            )(x)
        pool_padding = "same" if geometry == "caffe" else "valid"
        x = keras.layers.MaxPooling2D(2, strides=2, padding=pool_padding, name=f"block{block}_pool")(x)
        pools[f"pool{block}"] = x
    return pools


def vgg16_classifier(
    filters: Sequence[int] = VGG16_FILTERS,
    fc_units: int = VGG16_FC_UNITS,
    classes: int = 1000,
    input_size: int = 224,
) -> keras.Model:
    """The VGG16 ImageNet classifier topology, with Keras's layer names and any widths.

    With the defaults it has exactly the layers and weight shapes of
    `keras.applications.VGG16(include_top=True)`; narrower widths give a small model of the same shape
    of graph (used by the converter to rebuild a classifier from any VGG16-topology weight file).
    Its input is preprocessed images (as for Keras's VGG16), not raw pixels.
    """
    images = keras.Input((input_size, input_size, 3), name="input_layer")
    x = vgg16_features(images, filters)["pool5"]
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(fc_units, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(fc_units, activation="relu", name="fc2")(x)
    x = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(images, x, name="vgg16")
