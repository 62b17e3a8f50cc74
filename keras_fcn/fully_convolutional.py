"""Turns a classifier with a Flatten → Dense head into a fully convolutional network."""

from __future__ import annotations

from collections.abc import Mapping

import keras

from keras_fcn import surgery

# Head layers that act on each location alone, so they carry over unchanged after Flatten.
_POINTWISE_HEAD_LAYERS = (keras.layers.Dropout, keras.layers.Activation)


def _clone(layer: keras.layers.Layer) -> keras.layers.Layer:
    return layer.__class__.from_config(layer.get_config())


def _chain(classifier: keras.Model) -> list[keras.layers.Layer]:
    """The classifier's layers in order, checking that each one feeds the next and nothing else."""
    if len(classifier.inputs) != 1 or len(classifier.outputs) != 1:
        raise ValueError(
            "Expected a classifier with one input and one output. "
            f"Received: {len(classifier.inputs)} inputs, {len(classifier.outputs)} outputs"
        )
    layers = [layer for layer in classifier.layers if not isinstance(layer, keras.layers.InputLayer)]
    # `layer.input` / `layer.output` are the tensors of the layer's first call: a layer called twice, or
    # first called in another graph, breaks the chain below and is refused.
    previous = classifier.inputs[0]
    for layer in layers:
        if layer.input is not previous:
            raise ValueError(
                "Expected a classifier whose layers form a single chain (as VGG16's do). "
                f"Received: layer {layer.name!r} does not take the output of the layer before it"
            )
        previous = layer.output
    if previous is not classifier.outputs[0]:
        raise ValueError(
            "Expected a classifier whose layers form a single chain ending at its output. "
            f"Received: the chain ends at {previous.name!r}, the output is {classifier.outputs[0].name!r}"
        )
    return layers


def convolutionalize(classifier: keras.Model, names: Mapping[str, str] | None = None) -> keras.Model:
    """Rewrites a Flatten → Dense classifier as a fully convolutional model with the same weights.

    The layers before `Flatten` are copied with their weights. The first Dense layer becomes a 'valid'
    Conv2D whose kernel covers the whole feature map that was flattened (for VGG16, 7x7 over pool5), the
    following Dense layers become 1x1 Conv2Ds; activations are kept, and Dropout/Activation layers between
    them are copied. The result takes images of any size `(None, None, C)`:

    - on the classifier's input size it computes the classifier (output `(N, 1, 1, classes)`);
    - on a larger input, location (i, j) is the classifier's Dense head applied to the window of the
      pre-Flatten feature map at (i, j): a sliding-window classifier in one pass. When all the
      classifier's convolutions are 'valid', that window is the classifier on an image window too; with
      'same' padding (VGG), windows differ near their borders.

    Args:
        classifier: a single-chain Keras model whose head is `Flatten` followed by `Dense` layers, such as
            `keras.applications.VGG16(include_top=True)`.
        names: optional new names for the converted Dense layers, e.g.
            `{"fc1": "fc6", "fc2": "fc7", "predictions": "fc8"}` for the FCN paper's names.

    Returns:
        A functional `keras.Model` sharing no state with `classifier`.

    Raises:
        ValueError: when the model has no Flatten → Dense head, is not a chain of layers, or has a layer
            after Flatten that cannot act on every location (named in the message).

    Example:
    >>> fcn = convolutionalize(keras.applications.VGG16(weights=None))
    >>> fcn(np.zeros((1, 256, 288, 3))).shape
    TensorShape([1, 2, 3, 1000])
    """
    names = dict(names or {})
    layers = _chain(classifier)
    flatten_at = next((i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Flatten)), None)
    if flatten_at is None:
        raise ValueError(
            "Expected a classifier with a Flatten → Dense head (such as VGG16 with include_top=True). "
            f"Received: model {classifier.name!r} has no Flatten layer"
        )
    head = layers[flatten_at + 1:]
    for layer in head:
        if not isinstance(layer, (keras.layers.Dense, *_POINTWISE_HEAD_LAYERS)):
            raise ValueError(
                "Expected only Dense, Dropout and Activation layers after Flatten. "
                f"Received: layer {layer.name!r} of type {type(layer).__name__}"
            )
    if not any(isinstance(layer, keras.layers.Dense) for layer in head):
        raise ValueError(
            "Expected at least one Dense layer after Flatten. "
            f"Received: model {classifier.name!r} with head {[layer.name for layer in head]}"
        )
    flatten = layers[flatten_at]
    if flatten.data_format != "channels_last":
        raise ValueError(f"Expected a channels_last Flatten. Received: data_format={flatten.data_format!r}")
    feature_shape = tuple(flatten.input.shape[1:])
    if len(feature_shape) != 3 or None in feature_shape:
        raise ValueError(
            "Expected Flatten to receive a fully defined (h, w, c) feature map. "
            f"Received: {flatten.name!r} input shape {flatten.input.shape}"
        )

    channels = classifier.inputs[0].shape[-1]
    inputs = keras.Input((None, None, channels), name=classifier.inputs[0].name)
    x = inputs
    for layer in layers[:flatten_at]:
        clone = _clone(layer)
        x = clone(x)
        clone.set_weights(layer.get_weights())

    window = feature_shape  # the first Dense sees the whole map, the others one location
    for layer in head:
        if not isinstance(layer, keras.layers.Dense):
            x = _clone(layer)(x)
            continue
        kernel, *bias = layer.get_weights()
        conv = keras.layers.Conv2D(
            layer.units,
            window[:2],
            padding="valid",
            activation=layer.activation,
            use_bias=layer.use_bias,
            dtype=layer.dtype_policy,
            name=names.get(layer.name, layer.name),
        )
        x = conv(x)
        conv.set_weights([surgery.dense_to_conv_kernel(kernel, window), *bias])
        window = (1, 1, layer.units)
    return keras.Model(inputs, x, name=f"{classifier.name}_convolutional")
