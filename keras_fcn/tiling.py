"""Sliding-window inference: images of any size in tiles, blended scores, memory bounded by a strip of tiles.

The image is cut into tiles of `tile_size` that overlap by `overlap`; the last tile of each row and column is
snapped to the image's edge (mmsegmentation's grid), so no tile reaches past the image, and an image smaller
than a tile is one tile of its own size (an FCN takes any size). Each tile's class probabilities are added
into the image's, weighted per pixel (`"mean"`: all 1, mmsegmentation's count map; `"gaussian"`: MONAI's
importance map, a Gaussian of `sigma_scale` times the tile's sides, clamped at 1e-3 so edges still count),
then divided by the summed weights and reduced to class ids.

Probabilities, not logits, are averaged: each tile's softmax is a distribution over the classes whatever
the scale of that tile's logits, so a tile that sees little context (large, flat logits) does not outvote
its neighbours by the size of its numbers.

Test-time augmentation (`tta=("hflip",)`, `scales=(0.75, 1.0, 1.25)`) runs each tile once per flip and
scale (bilinear resize of the tile, then of its probabilities back) and averages the probabilities, for the
same reason; tiles and augmentation combine.

The module loads TensorFlow only for what needs it (a Keras model, resizing for scales, a progress bar), so
that a client blending a served model's tiles (`FCNClient.predict_tiled`) stays light.

Tiles run row of tiles by row of tiles. Once a row of tiles is done, the image rows above the next row of
tiles are final: their class ids are written out and their buffer reused, so the scores held at any time
are one strip `tile_height x image_width x classes`, whatever the image's height.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np

from keras_fcn.variants import STRIDE

BLENDS = ("mean", "gaussian")
FLIPS = {"hflip": 2, "vflip": 1}  # test-time flips: the axis of (N, H, W, C) each reverses
MIN_GAUSSIAN_WEIGHT = 1e-3  # MONAI's clamp: a tile's border pixels still count a little

# A reader of windows of an image too large for memory: (top, bottom, left, right) -> (bottom - top, right - left, 3).
WindowReader = Callable[[int, int, int, int], np.ndarray]


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if np.isscalar(value) else tuple(value)
    if len(pair) != 2 or not all(float(v).is_integer() and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive integer or a (height, width) pair. Received: {name}={value!r}")
    return int(pair[0]), int(pair[1])


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts along one axis: every `stride` pixels, the last window snapped to the edge.

    >>> tile_starts(10, 4, 3)
    [0, 3, 6]
    >>> tile_starts(11, 4, 3)
    [0, 3, 6, 7]
    """
    if length <= tile:
        return [0]
    count = -(-(length - tile) // stride) + 1  # ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(count)})


def tile_strides(tile: tuple[int, int], overlap: float | int) -> tuple[int, int]:
    """Steps between tiles: `overlap` is a fraction of the tile in [0, 1), or a whole number of pixels."""
    if isinstance(overlap, float) or overlap == 0:
        if not 0 <= overlap < 1:
            raise ValueError(
                f"overlap must be a fraction in [0, 1) or pixels fewer than the tile. Received: overlap={overlap!r}"
            )
        return tuple(max(1, round(side * (1 - overlap))) for side in tile)
    if overlap < 0 or overlap >= min(tile):
        raise ValueError(
            f"overlap in pixels must be at least 0 and less than the tile's sides {tile}. Received: overlap={overlap!r}"
        )
    return tuple(side - int(overlap) for side in tile)


def blend_weights(tile: tuple[int, int], blend: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """Per-pixel weights `(h, w)` float32 of one tile's scores.

    `"mean"`: all 1. `"gaussian"`: exp(-d^2 / 2 sigma^2) per axis from the tile's centre, sigma =
    `sigma_scale` x the side, scaled to 1 at the centre and clamped at 1e-3.
    """
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}. Received: blend={blend!r}")
    if blend == "mean":
        return np.ones(tile, np.float32)
    axes = []
    for side in tile:
        centre, sigma = (side - 1) / 2, sigma_scale * side
        axes.append(np.exp(-((np.arange(side) - centre) ** 2) / (2 * sigma**2)))
    weights = np.outer(*axes)
    return np.maximum(weights / weights.max(), MIN_GAUSSIAN_WEIGHT).astype(np.float32)


def probabilities_fn(model):
    """`tiles (N, h, w, 3) float32 -> softmax (N, h, w, C) float32`, traced once for any tile size.

    Build it once and pass it to `predict_tiled` in place of the model when predicting many images: each
    call with the model itself traces a new graph function.
    """
    keras = sys.modules.get("keras")  # not imported yet: the model cannot be a Keras model
    if keras is None or not isinstance(model, keras.Model):
        return lambda tiles: np.asarray(model(tiles), np.float32)  # a plain callable: already probabilities
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)], reduce_retracing=True)
    def probabilities(tiles):
        return tf.nn.softmax(tf.cast(model(tiles, training=False), tf.float32), axis=-1)

    return lambda tiles: probabilities(tf.convert_to_tensor(tiles)).numpy()


def with_tta(probabilities, tta: Sequence[str] = (), scales: Sequence[float] = (1.0,)):
    """`probabilities` averaged over the identity and each flip in `tta`, at each scale in `scales`.

    At a scale s the tiles are resized (bilinear) to s times their size, predicted, and the probabilities
    resized back; a flipped tile's probabilities are flipped back before they are averaged.
    """
    unknown = [name for name in tta if name not in FLIPS]
    if unknown:
        raise ValueError(f"tta must name flips among {sorted(FLIPS)}. Received: tta={tuple(tta)!r}")
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive factors. Received: scales={tuple(scales)!r}")
    if tuple(tta) == () and tuple(scales) == (1.0,):
        return probabilities

    def averaged(tiles: np.ndarray) -> np.ndarray:
        size = tiles.shape[1:3]
        total = 0.0
        for scale in scales:
            scaled = tiles if scale == 1 else _resize(tiles, [max(1, round(side * scale)) for side in size])
            for axis in (None, *(FLIPS[name] for name in tta)):
                flipped = scaled if axis is None else np.flip(scaled, axis)
                answer = probabilities(np.ascontiguousarray(flipped))
                answer = answer if axis is None else np.flip(answer, axis)
                total = total + (answer if scale == 1 else _resize(answer, size))
        return (total / (len(scales) * (1 + len(tta)))).astype(np.float32)

    return averaged


def _resize(images: np.ndarray, size) -> np.ndarray:
    import tensorflow as tf

    return tf.image.resize(images, size, method="bilinear").numpy()


def _reader(image, image_shape) -> tuple[WindowReader, tuple[int, int]]:
    if callable(image):
        if image_shape is None:
            raise ValueError("A window reader needs the image's size: pass image_shape=(height, width). "
                             "Received: image_shape=None")  # fmt: skip
        return image, _pair(image_shape, "image_shape")
    if isinstance(image, str):
        from keras_fcn.data.files import read_image

        image = read_image(image)
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"image must be (height, width, 3) RGB pixels. Received: image.shape={pixels.shape}")
    return (lambda top, bottom, left, right: pixels[top:bottom, left:right]), pixels.shape[:2]


def predict_tiled(
    model,
    image: np.ndarray | str | WindowReader,
    tile_size: int | Sequence[int] | None = 512,
    overlap: float | int = 0.25,
    blend: str = "gaussian",
    batch_size: int = 4,
    return_probabilities: bool = False,
    image_shape: Sequence[int] | None = None,
    out: np.ndarray | None = None,
    sigma_scale: float = 0.125,
    tta: Sequence[str] = (),
    scales: Sequence[float] = (1.0,),
    verbose: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Class ids of an image of any size, predicted tile by tile with blended scores.

    Args:
        model: a Keras FCN (logits `(N, H, W, C)`), or any callable taking float32 tiles `(N, h, w, 3)` and
            returning probabilities `(N, h, w, C)`.
        image: RGB pixels `(H, W, 3)`, an image file, or a reader `(top, bottom, left, right) -> pixels` of
            windows of an image too large for memory (with `image_shape`).
        tile_size: the tiles' side, or `(height, width)`; at least the network's stride (32). Tiles are cut
            to the image where it is smaller; None: the whole image as one tile.
        overlap: a fraction of the tile in [0, 1), or pixels (an int).
        blend: `"gaussian"` or `"mean"` weights of each tile's scores.
        batch_size: tiles per model call.
        return_probabilities: also return the blended probabilities `(H, W, C)` float32 (as large as the
            image times the classes: this gives up the memory bound).
        image_shape: `(height, width)` of the image a reader reads.
        out: an `(H, W)` array to write the class ids into, e.g. `np.lib.format.open_memmap(...)` for a class
            map too large for memory.
        sigma_scale: the Gaussian's sigma as a fraction of the tile's sides.
        tta: flips to average over, among `"hflip"` and `"vflip"`.
        scales: resize factors to average over, e.g. `(0.75, 1.0, 1.25)`.
        verbose: a progress bar over the tiles.

    Returns:
        Class ids `(H, W)` int32 (`out` when given), and the probabilities when asked for.

    Raises:
        ValueError: a tile smaller than the stride, an overlap outside [0, 1) or not less than the tile, an
            unknown blend, an image that is not RGB, a reader without `image_shape`, an `out` of another shape.

    Example:

    >>> model = keras_fcn.fcn8s(21)  # doctest: +SKIP
    >>> class_ids = predict_tiled(model, "aerial.png", tile_size=512, overlap=0.25)  # doctest: +SKIP
    """
    read, (height, width) = _reader(image, image_shape)
    tile = (height, width) if tile_size is None else _pair(tile_size, "tile_size")
    if tile_size is not None and min(tile) < STRIDE:
        raise ValueError(
            f"tile_size must be at least the network's stride, {STRIDE} pixels. Received: tile_size={tile_size!r}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1. Received: batch_size={batch_size!r}")
    tile, rows, columns = tile_grid((height, width), tile, overlap)
    weights_all = blend_weights(tile, blend, sigma_scale)
    if out is None:
        out = np.empty((height, width), np.int32)
    elif tuple(out.shape) != (height, width):
        raise ValueError(f"out must have the image's shape {(height, width)}. Received: out.shape={tuple(out.shape)}")
    probabilities = with_tta(probabilities_fn(model), tta, scales)
    full = None
    progress = _progress_bar(len(rows) * len(columns), verbose)

    strip_scores, strip_weights, top = None, np.zeros((tile[0], width), np.float32), 0  # the strip's first row
    for index, row in enumerate(rows):
        windows = [(row, column) for column in columns]
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            tiles = np.stack([read(y, y + tile[0], x, x + tile[1]) for y, x in batch]).astype(np.float32)
            scores = probabilities(tiles)  # (n, h, w, C)
            if strip_scores is None:
                strip_scores = np.zeros((tile[0], width, scores.shape[-1]), np.float32)  # (h, W, C)
            for (y, x), score in zip(batch, scores, strict=True):
                strip_scores[y - top : y - top + tile[0], x : x + tile[1]] += score * weights_all[..., None]
                strip_weights[y - top : y - top + tile[0], x : x + tile[1]] += weights_all
            progress.add(len(batch))
        # Rows above the next row of tiles are final: write them, then move the strip down.
        done = rows[index + 1] if index + 1 < len(rows) else height
        final = strip_scores[: done - top] / strip_weights[: done - top, :, None]  # (rows, W, C)
        out[top:done] = np.argmax(final, axis=-1)
        if return_probabilities:
            if full is None:
                full = np.empty((height, width, final.shape[-1]), np.float32)
            full[top:done] = final
        kept = top + tile[0] - done  # rows of the strip the next row of tiles adds to
        strip_scores[:kept] = strip_scores[done - top : done - top + kept]
        strip_weights[:kept] = strip_weights[done - top : done - top + kept]
        strip_scores[kept:] = 0
        strip_weights[kept:] = 0
        top = done
    return (out, full) if return_probabilities else out


def _progress_bar(total: int, verbose: bool):
    if not verbose:
        return _NoProgress()
    import keras

    return keras.utils.Progbar(total, unit_name="tile")


class _NoProgress:
    def add(self, count: int) -> None:
        pass


def tile_count(image_shape: Sequence[int], tile_size: int | Sequence[int], overlap: float | int) -> int:
    """How many tiles `predict_tiled` runs on an image of `image_shape` `(height, width)`."""
    _, rows, columns = tile_grid(image_shape, tile_size, overlap)
    return len(rows) * len(columns)


def tile_grid(
    image_shape: Sequence[int], tile_size: int | Sequence[int], overlap: float | int
) -> tuple[tuple[int, int], list[int], list[int]]:
    """The tile `predict_tiled` cuts from an image of `image_shape` `(height, width)`, and its grid.

    Returns:
        `((tile height, tile width), row starts, column starts)`: the tile cut to the image where the image
        is smaller, the steps taken from the tile asked for.
    """
    height, width = _pair(image_shape, "image_shape")
    tile = _pair(tile_size, "tile_size")
    strides = tile_strides(tile, overlap)
    tile = (min(tile[0], height), min(tile[1], width))
    return tile, tile_starts(height, tile[0], strides[0]), tile_starts(width, tile[1], strides[1])
