"""Image files decoded by TensorFlow ops inside tf.data, pixel for pixel what Pillow gives.

JPEG (libjpeg's accurate integer DCT, the one Pillow uses; TensorFlow's default fast DCT differs by up to
8 levels) and PNG of 8 bits or fewer per sample (gray, gray + alpha, RGB, RGBA, palette) are decoded by
`tf.io.decode_jpeg` / `tf.io.decode_png` as RGB, alpha dropped, as `PIL.Image.convert("RGB")` does.
Everything else goes to Pillow in a `tf.numpy_function`: TIFF and WebP (no TensorFlow decoder), BMP and GIF
(TensorFlow reads palette BMPs and GIF transparency differently from Pillow), 16-bit PNG (Pillow clips
16-bit samples at 255, TensorFlow scales them), and any file that does not start and end as a whole JPEG
or PNG does (a truncated file): Pillow then reads it or raises a `DataError` naming the file.
"""

from __future__ import annotations

import tensorflow as tf

from keras_fcn.data.files import read_image

JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"  # end-of-image marker
PNG_START = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC
PNG_BIT_DEPTH_OFFSET = 24  # signature (8), IHDR length (4), "IHDR" (4), width (4), height (4)


def decode_image(contents: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
    """Decodes the bytes of an image file as uint8 RGB `(H, W, 3)`; graph-compatible.

    Args:
        contents: scalar string tensor, the file's bytes.
        path: scalar string tensor, the file's name (for Pillow's error messages).

    Returns:
        A uint8 tensor `(H, W, 3)` equal to `keras_fcn.data.read_image(path)`.
    """
    length = tf.strings.length(contents)
    # The header padded with zeros, so that a short file cannot make `substr` read past its end.
    header = tf.strings.join([tf.strings.substr(contents, 0, PNG_BIT_DEPTH_OFFSET + 1), b"\0" * 32])
    tail = tf.strings.substr(contents, tf.maximum(length - len(PNG_END), 0), len(PNG_END))
    is_jpeg = tf.logical_and(
        tf.equal(tf.strings.substr(header, 0, len(JPEG_START)), JPEG_START),
        tf.equal(tf.strings.substr(tail, len(PNG_END) - len(JPEG_END), len(JPEG_END)), JPEG_END),
    )
    bit_depth = tf.io.decode_raw(tf.strings.substr(header, PNG_BIT_DEPTH_OFFSET, 1), tf.uint8)[0]
    is_png = tf.logical_and(
        tf.logical_and(tf.equal(tf.strings.substr(header, 0, len(PNG_START)), PNG_START), tf.equal(tail, PNG_END)),
        bit_depth <= 8,
    )
    branch = tf.where(is_jpeg, 0, tf.where(is_png, 1, 2))
    image = tf.switch_case(
        branch,
        [
            lambda: tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_png(contents, channels=3, dtype=tf.uint8),
            lambda: tf.numpy_function(_read_with_pil, [contents, path], tf.uint8, stateful=False),
        ],
    )
    return tf.ensure_shape(image, (None, None, 3))


def _read_with_pil(contents: bytes, path: bytes):
    return read_image(path.decode(), contents=contents)
