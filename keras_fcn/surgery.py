"""Weight surgery, numpy only: Dense kernels as convolutions, bilinear upsampling kernels, coordinate maps.

Kept apart from the network definitions (as the reference's `surgery.py` is) so that the arithmetic can be
checked on its own and reused by the converter without building a model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dense_to_conv_kernel(kernel: np.ndarray, feature_shape: Sequence[int]) -> np.ndarray:
    """Reshapes a Dense kernel that follows a channels-last `Flatten` into a 'valid' Conv2D kernel.

    Keras's `Flatten` reads an `(h, w, c)` map in C order, so row `(i * w + j) * c + k` of the Dense
    kernel multiplies feature `(i, j, k)`; a plain C-order reshape therefore gives the Conv2D kernel.
    VGG16's fc1 `(25088, 4096)` over a `(7, 7, 512)` pool5 map becomes `(7, 7, 512, 4096)`; a Dense layer
    after another Dense becomes a 1x1 kernel with `feature_shape=(1, 1, units_in)`.

    Args:
        kernel: Dense kernel of shape `(h * w * c, units)`.
        feature_shape: `(h, w, c)`, the shape of the feature map that was flattened.

    Returns:
        The Conv2D kernel, shape `(h, w, c, units)`.

    Raises:
        ValueError: if the kernel's input size is not `h * w * c`.

    Example:
        >>> dense_to_conv_kernel(np.zeros((25088, 4096)), (7, 7, 512)).shape
        (7, 7, 512, 4096)
    """
    kernel = np.asarray(kernel)
    feature_shape = tuple(int(d) for d in feature_shape)
    if kernel.ndim != 2 or len(feature_shape) != 3 or kernel.shape[0] != int(np.prod(feature_shape)):
        raise ValueError(
            "Expected a Dense kernel of shape (h*w*c, units) matching the feature map (h, w, c). "
            f"Received: kernel.shape={kernel.shape}, feature_shape={feature_shape}"
        )
    return kernel.reshape(*feature_shape, kernel.shape[1])


def upsample_filt(size: int) -> np.ndarray:
    """The reference's 2-D bilinear kernel of `size x size` (`surgery.upsample_filt`).

    factor = (size + 1) // 2; the centre is factor - 1 for odd sizes and factor - 0.5 for even ones;
    each weight is (1 - |x - centre| / factor) * (1 - |y - centre| / factor).
    """
    if int(size) != size or size < 1:
        raise ValueError(f"Expected a positive integer kernel size. Received: size={size}")
    size = int(size)
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.ogrid[:size, :size]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


def bilinear_kernel(size: int, channels: int) -> np.ndarray:
    """A Conv2DTranspose kernel `(size, size, channels, channels)` that upsamples each channel bilinearly.

    Channel c is fed only by channel c (the reference's `surgery.interp`): no mixing across classes.
    Keras's Conv2DTranspose kernel layout is `(kh, kw, out_channels, in_channels)`.
    """
    if int(channels) != channels or channels < 1:
        raise ValueError(f"Expected a positive number of channels. Received: channels={channels}")
    kernel = np.zeros((size, size, channels, channels), dtype=np.float32)
    filt = upsample_filt(size).astype(np.float32)
    for c in range(int(channels)):
        kernel[:, :, c, c] = filt
    return kernel


def caffe_fc_to_conv_kernel(weight: np.ndarray, feature_shape: Sequence[int]) -> np.ndarray:
    """Caffe InnerProduct weights `(units, c*h*w)` over a `(c, h, w)` map → Keras Conv2D `(h, w, c, units)`."""
    weight = np.asarray(weight)
    c, h, w = (int(d) for d in feature_shape)
    if weight.ndim != 2 or weight.shape[1] != c * h * w:
        raise ValueError(
            "Expected Caffe InnerProduct weights of shape (units, c*h*w) matching the map (c, h, w). "
            f"Received: weight.shape={weight.shape}, feature_shape={tuple(feature_shape)}"
        )
    return weight.reshape(weight.shape[0], c, h, w).transpose(2, 3, 1, 0)


def caffe_deconv_to_keras_kernel(weight: np.ndarray) -> np.ndarray:
    """Caffe Deconvolution weights `(in, out, kh, kw)` → Keras Conv2DTranspose kernel `(kh, kw, out, in)`."""
    weight = np.asarray(weight)
    if weight.ndim != 4:
        raise ValueError(f"Expected a 4-D Deconvolution weight. Received: weight.shape={weight.shape}")
    return weight.transpose(2, 3, 1, 0)


# --- coordinate maps (the reference's `caffe.coord_map`) -------------------------------------------------
# A map (a, b) sends a coordinate x of a layer's input to a*x + b in its output. Composing the maps along a
# path and reading b gives the offset at which one blob has to be cropped to line up with another.


def coord_map(kind: str, kernel: int = 1, stride: int = 1, pad: int = 0) -> tuple[float, float]:
    """The coordinate map `(scale, shift)` of one layer, output = scale * input + shift.

    Args:
        kind: "conv" (convolution or pooling), "deconv" (transposed convolution), "pad" (`pad` pixels
            added before the map) or "identity".
        kernel, stride, pad: the layer's geometry along one axis; `pad` is the padding before the map.
    """
    if kind == "conv":
        return 1.0 / stride, (pad - (kernel - 1) / 2.0) / stride
    if kind == "deconv":
        return float(stride), (kernel - 1) / 2.0 - pad
    if kind == "pad":
        return 1.0, float(pad)
    if kind == "identity":
        return 1.0, 0.0
    raise ValueError(f"Expected kind in ('conv', 'deconv', 'pad', 'identity'). Received: kind={kind!r}")


def compose(*maps: tuple[float, float]) -> tuple[float, float]:
    """Composes coordinate maps applied in order (first map first)."""
    scale, shift = 1.0, 0.0
    for a, b in maps:
        scale, shift = a * scale, a * shift + b
    return scale, shift


def crop_offset(path_to_crop: Sequence[tuple[float, float]], path_to_reference: Sequence[tuple[float, float]]
                ) -> int:
    """Offset at which the blob at the end of `path_to_crop` is cropped to align with `path_to_reference`.

    Both paths start from the same blob. As in `caffe.coord_map.crop`, the two must have equal scale, and
    the offset (the shift of `reference → crop`) must be a non-negative integer.
    """
    a1, b1 = compose(*path_to_crop)
    a2, b2 = compose(*path_to_reference)
    if not np.isclose(a1, a2):
        raise ValueError(f"Cannot crop between blobs of different scales. Received: scales=({a1}, {a2})")
    offset = b1 - b2
    if offset < 0 or not np.isclose(offset, round(offset)):
        raise ValueError(f"Expected a non-negative integer crop offset. Received: offset={offset}")
    return int(round(offset))
