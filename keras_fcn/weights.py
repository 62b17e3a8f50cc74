"""Weight files in: Keras's VGG16 `.h5` (legacy layout), converter output (`.weights.h5`), other models.

Two HDF5 layouts are read by layer name:
- Keras's legacy layout (the ImageNet file `vgg16_weights_tf_dim_ordering_tf_kernels.h5`, `model.save("x.h5")`):
  root attribute `layer_names`, one group per layer whose attribute `weight_names` lists its arrays in order.
- Keras 3's `.weights.h5` (written by `model.save_weights`, hence by `keras-fcn convert`): groups
  `layers/<class>/vars` whose attribute `name` is the layer's name, holding arrays `0`, `1`, …
"""

from __future__ import annotations

import os
from collections.abc import Callable

import h5py
import keras
import numpy as np

from keras_fcn import keras_internals
from keras_fcn.vgg16 import VGG16_CONV_LAYERS

# Keras's own download location and checksum for VGG16 with its top (keras/src/applications/vgg16.py).
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
    "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
)
IMAGENET_WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
IMAGENET_WEIGHTS_MD5 = "64373286793e3c8b2b4e3219cbf3544b"

# Where each FCN layer's weights come from, for each kind of source file.
_FROM_CLASSIFIER = {**{n: n for n in VGG16_CONV_LAYERS}, "fc6": "fc1", "fc7": "fc2"}
_FROM_CONVERTED = {**{n: n for n in VGG16_CONV_LAYERS}, "fc6": "fc6", "fc7": "fc7"}


class WeightFileError(ValueError):
    """A weight file that cannot be read or does not fit: the message names the file and the problem."""


def _decode(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def read_h5_weights(
    path: str | os.PathLike,
    on_layer: Callable[[str, int], None] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Reads every layer's weights from a Keras HDF5 file, in either layout, by layer name.

    Args:
        path: the `.h5` or `.weights.h5` file.
        on_layer: called as `on_layer(name, nbytes)` after each layer is read (for progress bars).

    Returns:
        `{layer_name: [array, ...]}` in the file's order (kernel before bias), layers without weights left out.

    Raises:
        WeightFileError: missing file, not HDF5, truncated, or neither Keras layout.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightFileError(f"Weight file not found. Received: path={path!r}")
    if not h5py.is_hdf5(path):
        raise WeightFileError(f"Not an HDF5 file. Received: path={path!r}")
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f  # a whole model saved with model.save
            if "layer_names" in root.attrs:
                return _read_legacy(root, on_layer)
            if "layers" in root:
                return keras_internals.read_weights_h5_layers(root["layers"], on_layer)
    except (OSError, KeyError, RuntimeError) as error:
        raise WeightFileError(f"Could not read the weight file (truncated or corrupt?): {error}. "
                              f"Received: path={path!r}") from None
    raise WeightFileError(
        "Not a Keras weight file: no 'layer_names' attribute (legacy .h5) and no 'layers' group (.weights.h5). "
        f"Received: path={path!r}"
    )


def _read_legacy(root, on_layer):
    weights = {}
    for name in (_decode(n) for n in root.attrs["layer_names"]):
        group = root[name]
        arrays = [np.asarray(group[_decode(w)]) for w in group.attrs.get("weight_names", [])]
        if arrays:
            weights[name] = arrays
            if on_layer:
                on_layer(name, sum(a.nbytes for a in arrays))
    return weights


def imagenet_weights_path(cache_dir: str | None = None) -> str:
    """Keras's cached copy of the VGG16 ImageNet weights (with top), downloaded on first use.

    Args:
        cache_dir: Keras's cache folder (default `~/.keras`, or `$KERAS_HOME`); the file is kept in its
            `models/` subfolder, where `keras.applications.VGG16` keeps it too.
    """
    try:
        return keras.utils.get_file(
            IMAGENET_WEIGHTS_FILE,
            IMAGENET_WEIGHTS_URL,
            cache_subdir="models",
            file_hash=IMAGENET_WEIGHTS_MD5,
            cache_dir=cache_dir,
        )
    except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
        raise WeightFileError(
            f"Could not download the VGG16 ImageNet weights from {IMAGENET_WEIGHTS_URL} ({error}). "
            f"Without network access, copy {IMAGENET_WEIGHTS_FILE} to this machine and pass its path: "
            "backbone_weights='/path/to/vgg16_weights_tf_dim_ordering_tf_kernels.h5' (--backbone-weights PATH), "
            "or a file written by `keras-fcn convert`; backbone_weights=None (--backbone-weights none) starts "
            "from random weights. Received: backbone_weights='imagenet'"
        ) from None


def load_backbone_weights(model: keras.Model, backbone_weights: str | os.PathLike) -> list[str]:
    """Loads VGG16 weights into an FCN's backbone and fc6/fc7, checking every name and shape.

    Args:
        model: a model from `keras_fcn.models` (or any model with VGG16's conv names and fc6/fc7).
        backbone_weights: "imagenet", a Keras VGG16 `.h5` file with its top (fc1/fc2 are reshaped into
            fc6/fc7), or a file written by `keras-fcn convert` (fc6/fc7 already convolutional).

    Returns:
        The names of the layers that were loaded.

    Raises:
        WeightFileError: unreadable file, a missing layer, or a shape that does not fit (both shapes named).
    """
    path = imagenet_weights_path() if backbone_weights == "imagenet" else os.fspath(backbone_weights)
    source = read_h5_weights(path)
    mapping = _FROM_CONVERTED if "fc6" in source else _FROM_CLASSIFIER
    missing = [src for src in mapping.values() if src not in source]
    if missing:
        raise WeightFileError(
            f"The weight file lacks VGG16 layers {missing} (it holds {list(source)}). "
            f"Received: backbone_weights={path!r}"
        )
    arrays_by_layer = {}
    for target_name, source_name in mapping.items():
        layer = model.get_layer(target_name)
        arrays = []
        for have, want in zip(source[source_name], layer.get_weights(), strict=True):
            # fc1 (25088, 4096) holds the same numbers as fc6 (7, 7, 512, 4096) in C order.
            fits = have.shape == want.shape or (source_name != target_name and have.size == want.size)
            if not fits:
                raise WeightFileError(
                    f"Layer {target_name!r}: the file's {source_name!r} has shape {have.shape}, the model needs "
                    f"{want.shape}. Received: backbone_weights={path!r}"
                )
            arrays.append(have.reshape(want.shape))
        arrays_by_layer[target_name] = arrays
    for target_name, arrays in arrays_by_layer.items():  # only once every layer has been checked
        model.get_layer(target_name).set_weights(arrays)
    return list(arrays_by_layer)


def transfer_weights(source: keras.Model, target: keras.Model) -> list[str]:
    """Copies weights from `source` to every layer of `target` with the same name (staged training).

    As in the reference (FCN-16s from FCN-32s, FCN-8s from FCN-16s), the layers both models share —
    backbone, fc6, fc7, score_fr, and the skips already trained — are copied; the rest keep their
    initialisation (zero scores, bilinear upsampling).

    Returns:
        The names of the copied layers.

    Raises:
        ValueError: a layer present in both with different weight shapes (names the layer and shapes),
            or no layer in common.
    """
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    copied = []
    for layer in target.layers:
        if not layer.weights or layer.name not in source_layers:
            continue
        have = source_layers[layer.name].get_weights()
        want = layer.get_weights()
        if [w.shape for w in have] != [w.shape for w in want]:
            raise ValueError(
                f"Layer {layer.name!r} has weight shapes {[w.shape for w in have]} in {source.name!r} but "
                f"{[w.shape for w in want]} in {target.name!r}. Received: source={source.name!r}"
            )
        layer.set_weights(have)
        copied.append(layer.name)
    if not copied:
        raise ValueError(f"The models share no layer with weights. Received: source={source.name!r}")
    return copied
