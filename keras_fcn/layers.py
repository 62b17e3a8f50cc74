"""Registered Keras layers and initializers used by the FCN models.

Each one round-trips through `get_config` and `.keras` save/load once `keras_fcn` is imported.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_fcn import surgery
from keras_fcn.vgg16 import CAFFE_BGR_MEAN, REFERENCE_BGR_MEAN  # noqa: F401 - importable from here too


@keras.saving.register_keras_serializable(package="keras_fcn")
class BilinearUpsampling(keras.initializers.Initializer):
    """Initializes a Conv2DTranspose kernel to per-channel bilinear interpolation.

    The kernel `(k, k, C, C)` holds the reference's `upsample_filt(k)` on its channel diagonal and zeros
    elsewhere, so no class feeds another.

    Example:
    >>> layer = keras.layers.Conv2DTranspose(21, 64, strides=32, use_bias=False,
    ...                                      kernel_initializer=BilinearUpsampling())
    """

    def __call__(self, shape, dtype=None):
        if len(shape) != 4 or shape[0] != shape[1] or shape[2] != shape[3]:
            raise ValueError(
                "BilinearUpsampling needs a square kernel with as many outputs as inputs, shape "
                f"(k, k, C, C). Received: shape={tuple(shape)}"
            )
        kernel = surgery.bilinear_kernel(shape[0], shape[2])
        return keras.ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="keras_fcn")
class CaffePreprocessing(keras.layers.Layer):
    """Turns RGB pixels in [0, 255] into the input Caffe-trained VGG weights expect: BGR, mean subtracted.

    The same arithmetic as `keras.applications.vgg16.preprocess_input`, inside the graph, so that an
    exported model takes raw pixels (uint8 or float).

    Args:
        mean: per-channel mean in BGR order.

    Example:
    >>> CaffePreprocessing()(np.full((1, 2, 2, 3), 128, "uint8")).shape
    TensorShape([1, 2, 2, 3])
    """

    def __init__(self, mean: Sequence[float] = CAFFE_BGR_MEAN, **kwargs):
        super().__init__(**kwargs)
        if len(mean) != 3:
            raise ValueError(f"Expected three channel means (B, G, R). Received: mean={mean}")
        self.mean = tuple(float(m) for m in mean)

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        bgr = images[..., ::-1]
        return bgr - keras.ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": list(self.mean)}


@keras.saving.register_keras_serializable(package="keras_fcn")
class PadToMultiple(keras.layers.Layer):
    """Zero-pads the bottom and right of a feature map so that its height and width divide by `multiple`.

    In the default ("aligned") geometry the input is padded to a multiple of the network's stride (32),
    so that every pooling halves the map exactly and the upsampled scores line up pixel for pixel. After
    `CaffePreprocessing`, zero is the mean pixel.

    Args:
        multiple: the height and width of the output are the smallest multiples of this at least as
            large as the input's.
    """

    def __init__(self, multiple: int = 32, **kwargs):
        super().__init__(**kwargs)
        if int(multiple) != multiple or multiple < 1:
            raise ValueError(f"Expected a positive integer multiple. Received: multiple={multiple}")
        self.multiple = int(multiple)

    def call(self, inputs):
        shape = tf.shape(inputs)
        # (m - h % m) % m rather than (-h) % m: the same in TF, but ONNX converters turn a modulo of a
        # negative number into a C-style remainder (negative padding), which would crop the image.
        pad_h = (self.multiple - shape[1] % self.multiple) % self.multiple
        pad_w = (self.multiple - shape[2] % self.multiple) % self.multiple
        padded = tf.pad(inputs, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
        # Padding computed at run time leaves every traced dimension unknown, the channels too; the
        # TFLite converter needs them to lower the convolutions that follow, and a reshape to a shape
        # whose last entry is a constant tells it.
        channels = inputs.shape[-1] if inputs.shape[-1] is not None else shape[3]
        return tf.reshape(padded, tf.stack([shape[0], shape[1] + pad_h, shape[2] + pad_w, channels]))

    def compute_output_shape(self, input_shape):
        def padded(d):
            return None if d is None else -(-d // self.multiple) * self.multiple

        return (input_shape[0], padded(input_shape[1]), padded(input_shape[2]), input_shape[3])

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="keras_fcn")
class CropToReference(keras.layers.Layer):
    """Crops `inputs[0]` to the height and width of `inputs[1]`, starting at `offset` (Caffe's `Crop`).

    The offset comes from the layers' coordinate maps (`keras_fcn.surgery.crop_offset`); it is the same
    for both spatial axes, as in the reference nets.

    Args:
        offset: rows and columns skipped at the top and left.

    Example:
    >>> CropToReference(19)([scores, images])   # FCN-32s, Caffe geometry
    """

    def __init__(self, offset: int = 0, **kwargs):
        super().__init__(**kwargs)
        if int(offset) != offset or offset < 0:
            raise ValueError(f"Expected a non-negative integer offset. Received: offset={offset}")
        self.offset = int(offset)

    def call(self, inputs):
        x, reference = inputs
        x_shape, ref_shape = tf.shape(x), tf.shape(reference)
        tf.debugging.assert_greater_equal(
            x_shape[1:3] - self.offset,
            ref_shape[1:3],
            message=f"{self.name}: the map to crop is smaller than the reference plus offset {self.offset}",
        )
        begin = tf.stack([0, self.offset, self.offset, 0])
        size = tf.stack([-1, ref_shape[1], ref_shape[2], -1])
        return keras.ops.cast(tf.slice(x, begin, size), self.compute_dtype)

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])

    def get_config(self):
        return {**super().get_config(), "offset": self.offset}
