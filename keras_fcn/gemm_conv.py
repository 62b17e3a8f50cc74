"""A Conv2D computed as image patches times the kernel matrix (one GEMM): fc6 in the FCNs.

fc6 is a 7x7x512 -> 4096 convolution over a map 32 times smaller than the image (16x16 for 512x512).
TensorFlow's direct convolution runs it at a fraction of the machine's matrix-multiply speed; the same
sum written as `extract_patches` (N*H'*W' rows of 7*7*512 values) times the kernel reshaped to
(7*7*512, 4096) is one large matrix multiply, 1.3-3x faster on a CPU (see README, Performance).

`GEMMConv2D` is a `keras.layers.Conv2D` with the same constructor, weights (`kernel` (kh, kw, C, F),
`bias` (F,)) and config; only `call` differs. Weight files and `.keras` files of models with a plain
Conv2D in its place load into it, and `as_gemm_conv` swaps the layer class of a built model.
"""

from __future__ import annotations

import keras
import tensorflow as tf

# A kernel at least this many taps (rows x columns) is worth the patch copy: 3x3 convolutions over large
# maps are faster in oneDNN's direct/Winograd kernels, where patches would copy the map nine times.
MIN_GEMM_TAPS = 16


@keras.saving.register_keras_serializable(package="keras_fcn")
class GEMMConv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` computed as patches x kernel matrix: one matrix multiply.

    Same arguments, weights and config as `Conv2D`. Channels-last, undilated, ungrouped convolutions
    take the GEMM form; other settings fall back to `Conv2D.call`. The result equals `tf.nn.conv2d`
    up to float rounding (summation order differs).

    Example:
    >>> layer = GEMMConv2D(4096, 7, padding="valid", activation="relu", name="fc6")
    >>> layer(np.zeros((1, 22, 22, 512), "float32")).shape
    TensorShape([1, 16, 16, 4096])
    """

    def _gemm_form(self) -> bool:
        return self.data_format == "channels_last" and tuple(self.dilation_rate) == (1, 1) and self.groups == 1

    def call(self, inputs):
        if not self._gemm_form():
            return super().call(inputs)
        # The kernel as a tensor (under mixed precision its autocast value), read outside the custom gradient.
        kernel = tf.convert_to_tensor(self.kernel)
        outputs = _gemm_conv(inputs, kernel, self.strides, self.padding.upper())  # (N, H', W', F)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


def wants_gemm(layer: keras.layers.Layer) -> bool:
    """Whether `layer` is a plain Conv2D with a large kernel (>= `MIN_GEMM_TAPS` taps) that the GEMM
    form computes faster: fc6's 7x7, not the 3x3 convolutions of the VGG blocks."""
    return (
        type(layer) is keras.layers.Conv2D
        and layer.kernel_size[0] * layer.kernel_size[1] >= MIN_GEMM_TAPS
        and layer.data_format == "channels_last"
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
    )


def as_gemm_conv(layer: keras.layers.Layer) -> GEMMConv2D:
    """A `GEMMConv2D` with `layer`'s config (weights are not copied; the caller sets them)."""
    return GEMMConv2D.from_config(layer.get_config())


# Keras's `.keras` and `.weights.h5` files address each layer's variables by its snake-cased class name
# and rank among layers of that class ("layers/conv2d_5/vars/0"), not by its name. Reporting Conv2D's
# class name keeps those paths: files saved with a plain Conv2D in fc6's place load into models with a
# GEMMConv2D and back. Configs still deserialize to this class through its registered name
# "keras_fcn>GEMMConv2D".
GEMMConv2D.__name__ = GEMMConv2D.__qualname__ = "Conv2D"


def _gemm_conv(inputs, kernel, strides, padding: str):
    """A convolution computed as patches times the kernel: one GEMM, `(N, H', W', F)`.

    The gradient is the convolution's own (`Conv2DBackpropInput` / `Conv2DBackpropFilter`): the gradient of
    `extract_patches` is a scatter-add, several times slower than the direct convolution's backward
    pass, so training keeps the speed of a plain `Conv2D` and gains the faster forward pass.
    """
    (kh, kw, channels, filters), (sh, sw) = kernel.shape, strides
    window = [1, sh, sw, 1]

    @tf.custom_gradient
    def conv(x, k):
        if (kh, kw, sh, sw) == (1, 1, 1, 1):
            patches = x  # a 1x1 convolution is already a GEMM over pixels
        else:
            # (N, H', W', kh*kw*C), taps in (row, column, channel) order: the kernel's C order.
            patches = tf.image.extract_patches(x, [1, kh, kw, 1], window, [1, 1, 1, 1], padding)
        shape = tf.shape(patches)
        y = tf.matmul(tf.reshape(patches, [-1, kh * kw * channels]), tf.reshape(k, [kh * kw * channels, filters]))
        y = tf.reshape(y, tf.concat([shape[:3], [filters]], axis=0))

        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=k, out_backprop=dy, strides=window, padding=padding
            )
            dk = tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=tf.shape(k), out_backprop=dy, strides=window, padding=padding
            )
            return dx, dk

        return y, grad

    return conv(inputs, kernel)


def with_plain_convolutions(model: keras.Model) -> keras.Model:
    """`model` with every `GEMMConv2D` rebuilt as a plain `Conv2D` (same config and weights).

    For converters whose operator sets lack `extract_patches` and the custom gradient (ONNX, TFLite
    built-ins): the answers are the same within float rounding. A model without one is returned as is.
    """
    if not any(isinstance(layer, GEMMConv2D) for layer in model.layers):
        return model

    def clone(layer):
        if isinstance(layer, GEMMConv2D):
            return keras.layers.Conv2D.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())

    plain = keras.models.clone_model(model, clone_function=clone)
    for source, target in zip(model.layers, plain.layers, strict=True):
        target.set_weights(source.get_weights())
    return plain
