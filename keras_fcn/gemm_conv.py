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
        kh, kw = self.kernel_size
        sh, sw = self.strides
        kernel = self.kernel  # (kh, kw, C, F); under mixed precision the autocast value
        channels, filters = kernel.shape[2], kernel.shape[3]
        if (kh, kw, sh, sw) == (1, 1, 1, 1):
            patches = inputs  # a 1x1 convolution is already a GEMM over pixels
        else:
            # (N, H', W', kh*kw*C), taps in (row, column, channel) order: the kernel's C order.
            patches = tf.image.extract_patches(
                inputs, [1, kh, kw, 1], [1, sh, sw, 1], [1, 1, 1, 1], self.padding.upper()
            )
        shape = tf.shape(patches)
        outputs = tf.matmul(
            tf.reshape(patches, [-1, kh * kw * channels]), tf.reshape(kernel, [kh * kw * channels, filters])
        )  # (N*H'*W', F)
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        outputs = tf.reshape(outputs, tf.concat([shape[:3], [filters]], axis=0))  # (N, H', W', F)
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
