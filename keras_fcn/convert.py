"""VGG16 ImageNet weights (Keras `.h5`, legacy layout) → FCN weights (`.weights.h5`).

fc1 (25088, 4096) becomes fc6 (7, 7, 512, 4096), fc2 becomes fc7 (1, 1, 4096, 4096) and predictions becomes
fc8 (1, 1, 4096, 1000): the written file is the convolutionalized VGG16, which every FCN model loads
(`backbone_weights=`) and `convolutionalize(keras.applications.VGG16()).load_weights(...)` loads too; with
fc8 it computes the ImageNet class heatmap. Every size is read from the file, so a narrower file of the same
topology converts as well.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import keras
import numpy as np

from keras_fcn.atomic import replacing
from keras_fcn.backbone import VGG16_BLOCK_DEPTHS, vgg16_classifier
from keras_fcn.fully_convolutional import convolutionalize
from keras_fcn.vgg16 import VGG16_CONV_LAYERS
from keras_fcn.weights import WeightFileError, read_h5_weights

FC_NAMES = {"fc1": "fc6", "fc2": "fc7", "predictions": "fc8"}
WEIGHTS_SUFFIX = ".weights.h5"


@dataclass(frozen=True)
class VGG16Shape:
    """The sizes of a VGG16-topology weight file."""

    filters: tuple[int, ...]
    fc_units: int
    classes: int
    window: int  # pool5 is window x window in the classifier (7 for 224x224 inputs)

    @property
    def input_size(self) -> int:
        return 32 * self.window


def inspect_vgg16(weights: dict[str, list[np.ndarray]], path: str = "") -> VGG16Shape:
    """Checks that `weights` hold a VGG16 classifier (any widths) and returns its sizes.

    Raises:
        WeightFileError: a missing layer, or a shape that does not chain (the layer and shapes are named).
    """
    missing = [name for name in (*VGG16_CONV_LAYERS, *FC_NAMES) if name not in weights]
    if missing:
        raise WeightFileError(
            f"Not a VGG16 weight file with its top: missing layers {missing}. Received: path={path!r}"
        )

    def expect(name, arrays, shape):
        kernel_shape = tuple(arrays[0].shape)
        if len(arrays) != 2 or kernel_shape != shape or arrays[1].shape != (shape[-1],):
            raise WeightFileError(
                f"Layer {name!r} has weights {[a.shape for a in arrays]}, expected kernel {shape} and bias "
                f"({shape[-1]},). Received: path={path!r}"
            )

    channels, filters, layer = 3, [], iter(VGG16_CONV_LAYERS)
    for depth in VGG16_BLOCK_DEPTHS:
        width = weights[f"block{len(filters) + 1}_conv1"][0].shape[-1]
        for _ in range(depth):
            name = next(layer)
            expect(name, weights[name], (3, 3, channels, width))
            channels = width
        filters.append(width)
    fc1 = weights["fc1"][0]
    window = math.isqrt(fc1.shape[0] // channels) if fc1.ndim == 2 else 0
    if window < 1:
        raise WeightFileError(
            f"Layer 'fc1' has kernel shape {fc1.shape}, not (h*w*{channels}, units). Received: path={path!r}"
        )
    fc_units = fc1.shape[-1]
    expect("fc1", weights["fc1"], (window * window * channels, fc_units))
    expect("fc2", weights["fc2"], (fc_units, fc_units))
    classes = weights["predictions"][0].shape[-1]
    expect("predictions", weights["predictions"], (fc_units, classes))
    return VGG16Shape(tuple(filters), int(fc_units), int(classes), int(window))


def vgg16_from_weights(weights: dict[str, list[np.ndarray]], shape: VGG16Shape) -> keras.Model:
    """The VGG16 classifier of `shape` holding `weights` (input: caffe-preprocessed images)."""
    classifier = vgg16_classifier(shape.filters, shape.fc_units, shape.classes, shape.input_size)
    for name in (*VGG16_CONV_LAYERS, *FC_NAMES):
        classifier.get_layer(name).set_weights(weights[name])
    return classifier


def probe_image(size: int, seed: int = 0) -> np.ndarray:
    """A smooth, seeded RGB test image in [0, 255], preprocessed as Keras's VGG16 expects."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (1, 8, 8, 3)).astype("float32")
    image = keras.ops.convert_to_numpy(keras.ops.image.resize(coarse, (size, size)))
    return keras.applications.vgg16.preprocess_input(image)


def convert_vgg16_weights(input_path: str | os.PathLike, output_path: str | os.PathLike, *, force: bool = False,
                          verbose: bool = True) -> dict:
    """Converts a Keras VGG16 weight file into the FCN (convolutional) weight file.

    The output is written to a temporary file beside it, reloaded into a fresh convolutional VGG16 and
    compared with the source classifier on a probe image; only then is it renamed to `output_path`.

    Args:
        input_path: Keras's `vgg16_weights_tf_dim_ordering_tf_kernels.h5` (or any VGG16-topology file in
            the legacy layout, with its top).
        output_path: where to write; must end in `.weights.h5`.
        force: overwrite an existing `output_path`.
        verbose: show a progress bar and print the check.

    Returns:
        `{"shape": VGG16Shape, "max_abs_diff": float, "output": str}`.

    Raises:
        WeightFileError: bad input file; FileExistsError: output exists and `force` is False;
        ValueError: bad output name.
    """
    input_path, output_path = os.fspath(input_path), os.fspath(output_path)
    if not output_path.endswith(WEIGHTS_SUFFIX):
        raise ValueError(f"Expected an output path ending in {WEIGHTS_SUFFIX!r}. Received: output={output_path!r}")
    if os.path.exists(output_path) and not force:
        raise FileExistsError(f"The output exists; pass --force to overwrite it. Received: output={output_path!r}")
    if not os.path.isfile(input_path):
        raise WeightFileError(f"Input file not found. Received: input={input_path!r}")

    progress = keras.utils.Progbar(os.path.getsize(input_path), unit_name="byte", verbose=int(verbose))
    weights = read_h5_weights(input_path, on_layer=lambda name, nbytes: progress.add(nbytes))
    shape = inspect_vgg16(weights, input_path)
    classifier = vgg16_from_weights(weights, shape)
    converted = convolutionalize(classifier, names=FC_NAMES)

    with replacing(output_path) as tmp:
        converted.save_weights(tmp)
        # A freshly initialised network, so that every number compared below comes from the file.
        reloaded = convolutionalize(
            vgg16_classifier(shape.filters, shape.fc_units, shape.classes, shape.input_size), names=FC_NAMES
        )
        reloaded.load_weights(tmp)
        probe = probe_image(shape.input_size)
        expected = keras.ops.convert_to_numpy(classifier(probe))
        got = keras.ops.convert_to_numpy(reloaded(probe))[:, 0, 0, :]
        max_abs_diff = float(np.max(np.abs(expected - got)))
    if verbose:
        print(f"VGG16 blocks {shape.filters}, fc {shape.fc_units}, {shape.classes} classes, "
              f"pool5 window {shape.window}x{shape.window}")
        print(f"wrote {output_path}: fc1 -> fc6 {tuple(converted.get_layer('fc6').kernel.shape)}, "
              f"fc2 -> fc7, predictions -> fc8")
        size = shape.input_size
        print(f"max |classifier - converted| on a {size}x{size} probe image: {max_abs_diff:.3g}")
    return {"shape": shape, "max_abs_diff": max_abs_diff, "output": output_path}
