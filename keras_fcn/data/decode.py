"""Image files decoded by TensorFlow ops inside tf.data, pixel for pixel what Pillow gives.

JPEG with libjpeg's accurate integer DCT (the one Pillow uses; TensorFlow's default fast DCT differs by up
to 8 levels) and PNG of 8 bits or fewer per sample (gray, gray + alpha, RGB, RGBA, palette) are decoded by
`tf.io.decode_jpeg`, which reads both by their content, as RGB with alpha dropped, as
`PIL.Image.convert("RGB")` does. One op, no `tf.cond`: a map function that chose between decoders with a
`tf.cond` decoded no faster with two parallel calls than with one on a 2-core machine.

Other files are read by Pillow, in the Python step that reads the file's bytes, and handed to TensorFlow
as an uncompressed PNG of the same pixels: BMP, GIF, TIFF and WebP (TensorFlow has no decoder for some and
reads palette BMPs and GIF transparency differently from Pillow), 16-bit PNG (Pillow clips 16-bit samples
at 255, TensorFlow scales them), and any file that does not start and end as a whole JPEG or PNG does (a
truncated file): Pillow then reads it or raises a `DataError` naming the file.
"""

from __future__ import annotations

import io

import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from keras_fcn.data.files import read_bytes, read_image

JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"  # end-of-image marker
PNG_START = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC
PNG_BIT_DEPTH_OFFSET = 24  # signature (8), IHDR length (4), "IHDR" (4), width (4), height (4)


def decodable_by_tensorflow(contents: bytes) -> bool:
    """Whether `decode_image` gives Pillow's pixels: a whole JPEG, or a whole PNG of at most 8-bit samples."""
    if contents.startswith(JPEG_START):
        return contents.endswith(JPEG_END)
    if contents.startswith(PNG_START):
        bit_depth = contents[PNG_BIT_DEPTH_OFFSET] if len(contents) > PNG_BIT_DEPTH_OFFSET else 16
        return bit_depth <= 8 and contents.endswith(PNG_END)
    return False


def read_for_tensorflow(path: str) -> tuple[bytes, tuple[int, int]]:
    """The bytes of an image file and its `(height, width)`, read from its header; for a file TensorFlow
    should not decode, an uncompressed PNG of Pillow's RGB pixels instead of the bytes. Either way
    `decode_image` of the bytes equals `keras_fcn.data.read_image(path)`.

    Raises:
        DataError: if the file is missing, or left to Pillow and unreadable.
    """
    contents = read_bytes(path)
    if decodable_by_tensorflow(contents):
        try:
            with Image.open(io.BytesIO(contents)) as image:  # the header only: nothing is decoded here
                return contents, (image.height, image.width)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            pass  # Pillow names the problem below
    pixels = read_image(path, contents=contents)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue(), pixels.shape[:2]


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG or PNG bytes (from `read_for_tensorflow`) as uint8 RGB `(H, W, 3)`; graph-compatible."""
    image = tf.io.decode_jpeg(contents, channels=3, dct_method="INTEGER_ACCURATE")  # PNG too, by content
    return tf.ensure_shape(image, (None, None, 3))
