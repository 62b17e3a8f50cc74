"""Forward FLOPs of a built Keras model at a given input size, counted from its layers' configs and shapes.

A multiply-add counts as 2 FLOPs; only convolutions, transposed convolutions and dense layers are
counted (bias adds, activations, pooling, additions and crops are under 1% of an FCN's work). FCN-8s on
VGG16 at 512x512 in the aligned geometry: 222.6 GFLOP, of which fc6 is 52.6.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras

from keras_fcn.functional import ends, wiring


def layer_flops(layer: keras.layers.Layer, input_shape: Sequence[int], output_shape: Sequence[int]) -> int:
    """FLOPs of one call of `layer` (2 per multiply-add) for concrete input and output shapes.

    Conv2D: 2·N·H'·W'·kh·kw·(C/groups)·F. Conv2DTranspose: 2·N·H·W·kh·kw·C·F (each input pixel
    scatters the whole kernel). Dense: 2·(elements / C)·C·F. Other layers: 0.
    """
    if isinstance(layer, keras.layers.Conv2DTranspose):
        kh, kw = layer.kernel_size
        return 2 * math.prod(input_shape[:-1]) * kh * kw * input_shape[-1] * layer.filters
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw = layer.kernel_size
        return 2 * math.prod(output_shape[:-1]) * kh * kw * (input_shape[-1] // layer.groups) * layer.filters
    if isinstance(layer, keras.layers.Dense):
        return 2 * math.prod(input_shape[:-1]) * input_shape[-1] * layer.units
    return 0


def forward_flops(model: keras.Model, input_shape: Sequence[int]) -> dict[str, int]:
    """FLOPs of each layer of a functional `model` for one input of `input_shape`, batch included.

    Shapes are propagated with each layer's `compute_output_shape`, so nothing is run or allocated.

    Args:
        model: a functional model with one input.
        input_shape: the concrete input shape, e.g. `(1, 512, 512, 3)`.

    Returns:
        `{layer name: FLOPs}` in the model's layer order (layers without FLOPs included, at 0).

    Raises:
        ValueError: if the model has several inputs or `input_shape` does not fit its input.

    Example:
    >>> sum(forward_flops(keras_fcn.fcn8s(21), (1, 512, 512, 3)).values()) / 1e9  # doctest: +SKIP
    222.6...
    """
    if len(model.inputs) != 1:
        raise ValueError(f"Expected a model with one input. Received: model.inputs={model.inputs}")
    declared = model.inputs[0].shape
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != len(declared) or any(
        d is not None and d != s for d, s in zip(declared, input_shape, strict=True)
    ):
        raise ValueError(f"Expected an input shape matching {declared}. Received: input_shape={input_shape}")
    (input_name,), _ = ends(model)
    shapes = {input_name: input_shape}  # each layer's output shape, by layer name
    flops = {}
    for name, taken in wiring(model):
        if name == input_name:
            continue
        layer = model.get_layer(name)
        inputs = [shapes[n] for n in taken]
        argument = inputs[0] if len(inputs) == 1 else inputs
        shapes[name] = output = tuple(int(d) for d in layer.compute_output_shape(argument))
        flops[name] = layer_flops(layer, inputs[0], output)
    return flops
