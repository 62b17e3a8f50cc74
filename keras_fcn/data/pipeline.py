"""The tf.data input pipeline: decode in parallel, cache, shuffle, augment on the graph, batch, prefetch.

Augmentation moves image and mask together (the same scale, crop offsets and flip for both):
random scale in `scale_range` (bilinear for the image, nearest for the mask), padding up to the crop size
with the mean pixel of the model's preprocessing (`mean=`, BGR; by default `keras_fcn.layers.CAFFE_BGR_MEAN`,
Keras's "caffe" mean: exactly zero after the model subtracts it) and label 255, a random crop, a random
horizontal flip. Random numbers come from stateless ops seeded per element from `tf.data.Dataset.random`,
so a pipeline built with a seed yields the same batches every time, and different ones every epoch.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import tensorflow as tf

from keras_fcn.data.files import IGNORE_LABEL, DataError
from keras_fcn.data.sources import IndexedSource, Source, check_shard
from keras_fcn.vgg16 import CAFFE_BGR_MEAN

# The mean pixel `CaffePreprocessing` subtracts by default (Keras's VGG16 "caffe" mean, BGR 103.939, 116.779,
# 123.68), in RGB order: padding with it gives exactly zero after the model's own mean subtraction.
MEAN_RGB = tuple(reversed(CAFFE_BGR_MEAN))
# Cache decoded examples in memory when they take less than this ("cache where it fits").
CACHE_LIMIT_BYTES = 2 * 1024**3


def augment(
    image: tf.Tensor,
    mask: tf.Tensor,
    seed: tf.Tensor,
    crop_size: tuple[int, int] | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    mean: tuple[float, float, float] = CAFFE_BGR_MEAN,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale, pad, crop and flip applied identically to an image and its mask.

    Args:
        image: `(H, W, 3)` image, any real or uint8 dtype (pixel values 0..255).
        mask: `(H, W)` uint8 class ids.
        seed: int32/int64 tensor of shape `(2,)` for the stateless random ops.
        crop_size: `(height, width)` of the output, or None to keep the scaled size.
        scale_range: `(low, high)` of the random scale factor; `(1, 1)` turns scaling off.
        flip: random horizontal flip.
        mean: the BGR mean pixel the model subtracts; padding uses it (zero after the subtraction).

    Returns:
        `(image float32 (h, w, 3), mask uint8 (h, w))`.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=4)
    image = tf.cast(image, tf.float32)
    mask = tf.cast(mask, tf.uint8)[..., None]  # (H, W, 1) for the image ops
    low, high = scale_range
    scaling = (low, high) != (1.0, 1.0)
    size = tf.shape(image)[:2]
    if scaling:
        scale = tf.random.stateless_uniform((), seeds[0], low, high)
        size = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), 1)
        if crop_size is None:
            image = tf.image.resize(image, size, method="bilinear")
            mask = tf.image.resize(mask, size, method="nearest")
    if crop_size is not None:
        # A random window of the (scaled) image padded at the bottom and right up to the crop size.
        crop_h, crop_w = crop_size
        top = tf.random.stateless_uniform((), seeds[1], 0, tf.maximum(size[0], crop_h) - crop_h + 1, tf.int32)
        left = tf.random.stateless_uniform((), seeds[2], 0, tf.maximum(size[1], crop_w) - crop_w + 1, tf.int32)
        if scaling:
            # Only the window of the scaled image is computed: the pixels of scaling all of it and cropping
            # (up to float rounding), at the cost of the crop rather than of an image up to 4x larger.
            image, mask = _scaled_window(image, mask, size, (top, left), crop_size, mean)
        else:
            image, mask = _pad_to(image, mask, crop_h, crop_w, mean)
            image = tf.ensure_shape(image[top : top + crop_h, left : left + crop_w], (crop_h, crop_w, 3))
            mask = tf.ensure_shape(mask[top : top + crop_h, left : left + crop_w], (crop_h, crop_w, 1))
    return _flip(image, mask[..., 0], seeds[3], flip)


def _flip(image, mask, seed, flip: bool):
    """A horizontal flip of both, with probability 1/2 drawn from `seed` (when `flip`)."""
    if flip:
        do_flip = tf.random.stateless_uniform((), seed) < 0.5
        image = tf.cond(do_flip, lambda: tf.reverse(image, [1]), lambda: image)
        mask = tf.cond(do_flip, lambda: tf.reverse(mask, [1]), lambda: mask)
    return image, mask


def _source_rows(start, count, in_size, out_size):
    """For the `count` output rows from `start` of a resize from `in_size` to `out_size` rows: the bilinear
    neighbours `(lower, upper)` and weight `lerp`, the nearest row, and whether the row exists (rows past
    `out_size` are padding). TensorFlow's resize kernels with half-pixel centres, in graph ops."""
    rows = start + tf.range(count)
    inside = rows < out_size
    rows = tf.cast(tf.minimum(rows, out_size - 1), tf.float32)
    scale = tf.cast(in_size, tf.float32) / tf.cast(out_size, tf.float32)
    position = (rows + 0.5) * scale - 0.5
    floor = tf.floor(position)
    last = in_size - 1
    lower = tf.clip_by_value(tf.cast(floor, tf.int32), 0, last)
    upper = tf.clip_by_value(tf.cast(tf.math.ceil(position), tf.int32), 0, last)
    nearest = tf.clip_by_value(tf.cast(tf.floor((rows + 0.5) * scale), tf.int32), 0, last)
    return lower, upper, position - floor, nearest, inside


def _scaled_window(image, mask, new_size, offset, crop_size, mean=CAFFE_BGR_MEAN):
    """The `crop_size` window at `offset` of the image resized to `new_size` (bilinear) and of the mask
    (nearest), padded past the resized size with the mean pixel and label 255, as `_pad_to` pads.

    Args:
        image: `(H, W, 3)` float32; mask: `(H, W, 1)` uint8.

    Returns:
        `(image (crop_h, crop_w, 3) float32, mask (crop_h, crop_w, 1) uint8)`.
    """
    shape = tf.shape(image)
    (crop_h, crop_w), (top, left) = crop_size, offset
    y0, y1, y_lerp, y_near, y_in = _source_rows(top, crop_h, shape[0], new_size[0])
    x0, x1, x_lerp, x_near, x_in = _source_rows(left, crop_w, shape[1], new_size[1])
    rows_above, rows_below = tf.gather(image, y0), tf.gather(image, y1)  # (crop_h, W, 3)
    x_lerp = x_lerp[None, :, None]
    # The kernel's order of operations: along x within each of the two rows, then along y.

    def along_x(rows):
        left_pixels = tf.gather(rows, x0, axis=1)
        return left_pixels + (tf.gather(rows, x1, axis=1) - left_pixels) * x_lerp

    above, below = along_x(rows_above), along_x(rows_below)
    window = above + (below - above) * y_lerp[:, None, None]
    labels = tf.gather(tf.gather(mask, y_near), x_near, axis=1)
    inside = tf.logical_and(y_in[:, None], x_in[None, :])[..., None]  # (crop_h, crop_w, 1)
    window = tf.where(inside, window, tf.constant(mean[::-1], tf.float32))
    labels = tf.where(inside, labels, tf.constant(IGNORE_LABEL, tf.uint8))
    return tf.ensure_shape(window, (crop_h, crop_w, 3)), tf.ensure_shape(labels, (crop_h, crop_w, 1))


def _pad_to(image, mask, height, width, mean=CAFFE_BGR_MEAN):
    """Pads at the bottom and right up to `(height, width)`: image with the mean pixel, mask with 255."""
    shape = tf.shape(image)
    pad_h = tf.maximum(height - shape[0], 0)
    pad_w = tf.maximum(width - shape[1], 0)
    paddings = [[0, pad_h], [0, pad_w], [0, 0]]
    mean = tf.constant(mean[::-1], tf.float32)  # RGB
    image = tf.pad(image - mean, paddings) + mean  # pads with 0, i.e. the mean after shifting back
    mask = tf.pad(mask, paddings, constant_values=IGNORE_LABEL)
    return image, mask


def make_dataset(
    source: Source,
    batch_size: int = 1,
    crop_size: int | tuple[int, int] | None = None,
    augment_data: bool = True,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    shuffle: bool = True,
    repeat: bool = False,
    cache: bool | str = "auto",
    seed: int | None = None,
    shuffle_buffer: int = 1000,
    mean: tuple[float, float, float] = CAFFE_BGR_MEAN,
    shard: tuple[int, int] | None = None,
) -> tf.data.Dataset:
    """Batches of `(images float32 (N, h, w, 3), masks uint8 (N, h, w))` ready for `model.fit`.

    Args:
        source: a `keras_fcn.data` source.
        batch_size: images per batch.
        crop_size: train on random crops of this size (int or `(h, w)`); None keeps full images: with
            `batch_size > 1` they are padded to the largest in the batch (mean pixel, label 255).
        augment_data: random scale, crop and flip; False for evaluation (crops then come from the
            top-left corner, padded as needed).
        scale_range, flip: augmentation settings.
        shuffle: shuffle the examples (reshuffled every epoch).
        repeat: repeat forever (use with `steps_per_epoch`).
        cache: True (memory), a file path, False, or "auto": memory when the decoded data fits in
            `CACHE_LIMIT_BYTES`.
        seed: makes shuffling and augmentation deterministic; None draws a fresh seed.
        shuffle_buffer: shuffle buffer size (decoded examples held in memory) when shuffling after the
            cache, or a source that cannot shuffle by index (TFDS).
        mean: the BGR mean pixel of the model to train (its `preprocess` layer's `mean`): padding uses it,
            so padded pixels are zero after the model subtracts it.
        shard: `(index, count)`: the share of input pipeline `index` of `count` (a worker of a multi-worker
            run), chosen before decoding, so each worker decodes only its own examples; `batch_size` is then
            that worker's batch. Every worker must give the same `seed`: they shuffle alike, then worker
            `index` takes the examples at positions `index`, `index + count`, ..., each with the
            augmentation it would have had without sharding. TF's auto-sharding is turned off.

    Returns:
        A `tf.data.Dataset`, prefetched.

    Raises:
        ValueError: bad arguments, or `shard` without a `seed`.

    Example:
    >>> from keras_fcn.data import synthetic
    >>> ds = make_dataset(synthetic(num_examples=4, image_size=(48, 48)), batch_size=2, crop_size=32, seed=0)
    >>> [tuple(t.shape) for t in next(iter(ds))]
    [(2, 32, 32, 3), (2, 32, 32)]
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1. Received: batch_size={batch_size}")
    if crop_size is not None:
        crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(int(c) for c in crop_size)
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise ValueError(
                f"`crop_size` must be a positive int or (height, width). Received: crop_size={crop_size}"
            )
    if shard is not None:
        shard = check_shard(shard)
        if seed is None:
            raise ValueError(
                "`shard` needs a `seed` shared by all workers, so that they shuffle alike. Received: seed=None"
            )
    if seed is None:
        seed = int(tf.random.uniform((), 0, 2**31 - 1, dtype=tf.int64))
    if cache == "auto":
        size = source.decoded_bytes()
        cache = size is not None and size // (shard[1] if shard else 1) <= CACHE_LIMIT_BYTES

    if cache:
        dataset = source.dataset(shuffle=False, shard=shard)
        dataset = dataset.cache() if cache is True else dataset.cache(str(cache))
        if shuffle:
            dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    else:
        dataset = source.dataset(shuffle=shuffle, seed=seed, shard=shard)
        if shuffle and not isinstance(source, IndexedSource):
            # An indexed source shuffles all its indices; others (TFDS) shuffle at most the order of
            # their files, so the examples within a file would always come in the same order.
            dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    if augment_data:
        # One (2,) int64 seed per element; re-drawn each epoch, fixed by `seed` across runs.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        if shard is not None:
            seeds = seeds.shard(shard[1], shard[0])  # the seeds of this worker's examples
        dataset = tf.data.Dataset.zip(dataset, seeds)
        dataset = dataset.map(
            lambda example, element_seed: augment(*example, element_seed, crop_size, scale_range, flip, mean),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    else:
        dataset = dataset.map(
            lambda image, mask: _no_augment(image, mask, crop_size, mean),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    if crop_size is not None or batch_size == 1:
        dataset = dataset.batch(batch_size, drop_remainder=crop_size is not None and repeat)
    else:
        dataset = dataset.ragged_batch(batch_size).map(
            lambda images, masks: _pad_ragged_batch(images, masks, mean), num_parallel_calls=tf.data.AUTOTUNE
        )

    options = tf.data.Options()
    options.deterministic = True
    # Sharded above, before decoding; otherwise examples are produced from indices, not from files:
    # tf.distribute then shards by element across workers (each worker decodes every example).
    policy = tf.data.experimental.AutoShardPolicy
    options.experimental_distribute.auto_shard_policy = policy.OFF if shard is not None else policy.DATA
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def _no_augment(image, mask, crop_size, mean=CAFFE_BGR_MEAN):
    image = tf.cast(image, tf.float32)
    if crop_size is None:
        return image, mask
    crop_h, crop_w = crop_size
    image, mask = _pad_to(image, mask[..., None], crop_h, crop_w, mean)
    return image[:crop_h, :crop_w], mask[:crop_h, :crop_w, 0]


def _pad_ragged_batch(images: tf.RaggedTensor, masks: tf.RaggedTensor, mean=CAFFE_BGR_MEAN):
    """Pads a batch of different-size images to the largest: mean pixel and label 255."""
    images = images.to_tensor(default_value=tf.constant(mean[::-1], tf.float32))
    masks = masks.to_tensor(default_value=tf.constant(IGNORE_LABEL, tf.uint8))
    return images, masks


def data_error_from(error: tf.errors.OpError) -> DataError | None:
    """The `DataError` raised inside a tf.data function, recovered from TensorFlow's wrapped message."""
    match = re.search(r"DataError: (.*)", error.message or "")
    return DataError(match.group(1).strip()) if match else None


# TensorFlow's image decoders fail with these op names in the message (and without the file's name).
DECODE_OPS = re.compile(r"Decode(Jpeg|Png|Image)")


@contextlib.contextmanager
def data_errors(*sources: Source) -> Iterator[None]:
    """Turns a `DataError` raised inside a tf.data function (which TensorFlow wraps in an `OpError`) back
    into a `DataError` naming the file; other errors pass unchanged.

    Args:
        *sources: the sources being read. When TensorFlow's image decoder fails (its message names no
            file), their images are decoded again one by one to find the bad one and name it.

    Example:
    >>> with data_errors(source):  # doctest: +SKIP
    ...     model.fit(make_dataset(source), epochs=1)
    """
    try:
        yield
    except tf.errors.OpError as error:
        data_error = data_error_from(error)
        if data_error is None and DECODE_OPS.search(error.message or ""):
            data_error = next(filter(None, (source.find_undecodable() for source in sources)), None)
        if data_error is None:
            raise
        raise data_error from None
