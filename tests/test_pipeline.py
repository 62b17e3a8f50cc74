"""The tf.data pipeline: augmentation keeps image and mask aligned; seeded pipelines repeat exactly."""

import numpy as np
import pytest
import tensorflow as tf

from keras_fcn import data
from keras_fcn.data.sources import IndexedSource

# Class k is painted with COLOURS[k]; the third channel is not linear in k, so a bilinear blend of two
# class colours at an edge never equals a third class's colour.
COLOURS = np.array([[10 + 40 * k, 230 - 40 * k, c] for k, c in enumerate((13, 200, 60, 240, 110))], np.float32)


class Painted(IndexedSource):
    """Masks of random rectangles; the image is the mask painted with COLOURS (mask = f(image))."""

    def __init__(self, count=6, size=(30, 44)):
        self.count, self.size, self.num_classes, self.name = count, size, 5, "painted"
        self.class_names = tuple("abcde")

    def __len__(self):
        return self.count

    def decoded_bytes(self):
        return 1000

    def load(self, index):
        rng = np.random.default_rng(index)
        h, w = self.size
        mask = np.zeros((h, w), np.uint8)
        for _ in range(4):
            top, left = rng.integers(0, h - 6), rng.integers(0, w - 6)
            mask[top : top + rng.integers(5, 15), left : left + rng.integers(5, 20)] = rng.integers(1, 5)
        mask[:, -3:] = np.arange(3)[None]  # an asymmetric stripe: a flip of the image alone would show
        return COLOURS[mask].astype(np.uint8), mask


def derived_mask(image):
    """The class whose colour a pixel has exactly, or -1 (blended edge) / 255 (mean-pixel padding)."""
    distance = np.abs(image[..., None, :] - COLOURS).max(-1)  # (..., 5)
    out = np.where(distance.min(-1) < 0.5, distance.argmin(-1), -1)
    padding = np.abs(image - np.asarray(data.MEAN_RGB, np.float32)).max(-1) < 1e-3
    return np.where(padding, 255, out)


@pytest.mark.parametrize("crop", [None, 24, (40, 60)])
def test_augmentation_keeps_image_and_mask_aligned(crop):
    source = Painted()
    dataset = data.make_dataset(source, batch_size=1, crop_size=crop, seed=7, scale_range=(0.5, 2.0))
    exact_pixels = 0
    for _ in range(3):  # three epochs: new scales, crops and flips each time
        for image, mask in dataset:
            image, mask = image.numpy()[0], mask.numpy()[0]
            if crop is not None:
                assert mask.shape == ((crop, crop) if isinstance(crop, int) else crop)
            derived = derived_mask(image)
            exact = derived >= 0
            np.testing.assert_array_equal(derived[exact], mask[exact])
            exact_pixels += exact.sum()
            assert exact.mean() > 0.5  # most pixels are inside a region, not on a blended edge
    assert exact_pixels > 0


def test_without_scaling_every_pixel_matches():
    dataset = data.make_dataset(Painted(), batch_size=2, crop_size=(36, 50), seed=1, scale_range=(1.0, 1.0))
    for images, masks in dataset:
        np.testing.assert_array_equal(derived_mask(images.numpy()), masks.numpy())


def test_flip_and_crop_follow_a_reference():
    """With scale 1 and crop = image size, the output is the image or its mirror, mask alike."""
    source = Painted(count=8)
    dataset = data.make_dataset(source, crop_size=(30, 44), shuffle=False, seed=3, scale_range=(1.0, 1.0))
    flipped = 0
    for i, (image, mask) in enumerate(dataset):
        want_image, want_mask = source.load(i)
        if np.array_equal(mask[0].numpy(), want_mask[:, ::-1]):
            flipped += 1
            np.testing.assert_array_equal(image[0].numpy(), want_image[:, ::-1])
        else:
            np.testing.assert_array_equal(mask[0].numpy(), want_mask)
            np.testing.assert_array_equal(image[0].numpy(), want_image)
    assert 0 < flipped < 8


def batches(dataset, count=3):
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(count)]


def test_seeded_pipeline_is_deterministic_and_epochs_differ():
    source = data.synthetic(num_examples=8, image_size=(40, 40), seed=2)
    make = lambda seed: data.make_dataset(source, batch_size=4, crop_size=24, seed=seed, repeat=True)
    first, again, other = batches(make(11)), batches(make(11)), batches(make(12))
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0], other[0][0])
    finite = data.make_dataset(source, batch_size=8, crop_size=24, seed=11)
    epoch1, epoch2 = batches(finite, 1), batches(finite, 1)
    assert not np.array_equal(epoch1[0][0], epoch2[0][0])  # reshuffled and re-augmented


def test_full_size_batches_pad_with_mean_and_ignore():
    class TwoSizes(Painted):
        def load(self, index):
            image, mask = super().load(index)
            return (image[:20, :30], mask[:20, :30]) if index % 2 else (image, mask)

    dataset = data.make_dataset(TwoSizes(count=2), batch_size=2, augment_data=False, shuffle=False)
    images, masks = next(iter(dataset))
    assert images.shape == (2, 30, 44, 3) and masks.shape == (2, 30, 44)
    np.testing.assert_allclose(images[1, 20:].numpy(), np.broadcast_to(data.MEAN_RGB, (10, 44, 3)), atol=1e-4)
    assert np.all(masks[1, 20:].numpy() == 255) and np.all(masks[1, :, 30:].numpy() == 255)
    np.testing.assert_array_equal(masks[1, :20, :30].numpy(), TwoSizes().load(1)[1])
    single = data.make_dataset(TwoSizes(count=2), batch_size=1, augment_data=False, shuffle=False)
    assert [tuple(x.shape) for x, _ in single] == [(1, 30, 44, 3), (1, 20, 30, 3)]


def _assert_window_equals_whole_resize_then_crop(image, mask, new_size, offset, crop):
    """`_scaled_window` against TensorFlow's own resize of the whole image, padded and cropped: equal up to
    float rounding (pixel values 0..255), class ids exactly."""
    from keras_fcn.data.pipeline import _pad_to, _scaled_window

    whole, whole_mask = _pad_to(
        tf.image.resize(image, new_size, "bilinear"), tf.image.resize(mask, new_size, "nearest"), *crop
    )
    got, got_mask = _scaled_window(image, mask, tf.constant(new_size), offset, crop)
    window = np.s_[offset[0] : offset[0] + crop[0], offset[1] : offset[1] + crop[1]]
    np.testing.assert_allclose(got.numpy(), whole[window].numpy(), atol=1e-4)
    np.testing.assert_array_equal(got_mask.numpy(), whole_mask[window].numpy())


@pytest.mark.parametrize(
    "in_size, new_size, offset, crop",
    [
        ((30, 44), (60, 88), (0, 0), (24, 24)),  # 2x up, top-left corner
        ((30, 44), (47, 71), (21, 40), (24, 31)),  # odd up-scale, bottom-right corner
        ((375, 500), (188, 250), (57, 101), (96, 96)),  # VOC-sized, down to half
        ((30, 44), (17, 23), (0, 0), (24, 31)),  # scaled smaller than the crop: padding below and right
        ((30, 44), (29, 50), (5, 19), (24, 31)),  # one axis down, the other up
        ((1, 7), (3, 2), (0, 0), (4, 4)),
    ],
)
def test_the_scaled_window_equals_scaling_the_whole_image_then_cropping(in_size, new_size, offset, crop):
    rng = np.random.default_rng(sum(in_size + new_size))
    image = tf.constant(rng.uniform(0, 255, in_size + (3,)).astype(np.float32))
    mask = tf.constant(rng.integers(0, 21, in_size + (1,)).astype(np.uint8))
    _assert_window_equals_whole_resize_then_crop(image, mask, new_size, offset, crop)


def test_the_scaled_window_matches_the_whole_resize_at_random_sizes_scales_and_offsets():
    rng = np.random.default_rng(0)
    for _ in range(40):
        (height, width), scale = rng.integers(1, 80, 2), rng.uniform(0.5, 2.0)
        new_size = (max(round(height * scale), 1), max(round(width * scale), 1))
        crop = tuple(int(c) for c in rng.integers(1, 60, 2))
        top, left = (int(rng.integers(0, max(n, c) - c + 1)) for n, c in zip(new_size, crop, strict=True))
        image = tf.constant(rng.uniform(0, 255, (height, width, 3)).astype(np.float32))
        mask = tf.constant(rng.integers(0, 21, (height, width, 1)).astype(np.uint8))
        _assert_window_equals_whole_resize_then_crop(image, mask, new_size, (top, left), crop)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: batch_size=0"):
        data.make_dataset(Painted(), batch_size=0)
    with pytest.raises(ValueError, match="Received: crop_size=\\(0, 4\\)"):
        data.make_dataset(Painted(), crop_size=(0, 4))


def test_augment_is_a_graph_function():
    fn = tf.function(lambda x, y, s: data.augment(x, y, s, crop_size=(8, 8)))
    image, mask = fn(tf.zeros((10, 12, 3), tf.uint8), tf.zeros((10, 12), tf.uint8), tf.constant([1, 2]))
    assert image.shape == (8, 8, 3) and mask.dtype == tf.uint8


def test_padding_is_zero_after_the_models_preprocessing():
    import keras

    from keras_fcn.layers import CaffePreprocessing

    class Small(Painted):
        def load(self, index):
            image, mask = super().load(index)
            return (image[:20, :30], mask[:20, :30]) if index % 2 else (image, mask)

    cropped = data.make_dataset(Small(count=2), batch_size=2, crop_size=(36, 50), augment_data=False, shuffle=False)
    full = data.make_dataset(Small(count=2), batch_size=2, augment_data=False, shuffle=False)  # ragged → padded
    for images, masks in (next(iter(cropped)), next(iter(full))):
        padded = masks.numpy() == 255
        assert padded.sum() > 0
        np.testing.assert_array_equal(CaffePreprocessing()(images).numpy()[padded], 0.0)
        # Keras's own VGG16 preprocessing, as an independent reference
        reference = keras.applications.vgg16.preprocess_input(images.numpy().copy())
        np.testing.assert_allclose(reference[padded], 0.0, atol=1e-4)


def test_data_errors_recovers_the_data_error_from_a_tf_data_function():
    wrapped = tf.errors.InvalidArgumentError(None, None, "Error in py_call: DataError: Mask m.png is bad\n")
    with pytest.raises(data.DataError, match=r"^Mask m\.png is bad$"):
        with data.data_errors():
            raise wrapped
    other = tf.errors.InvalidArgumentError(None, None, "shapes differ")
    with pytest.raises(tf.errors.InvalidArgumentError, match="shapes differ"):
        with data.data_errors():
            raise other


def test_padding_uses_the_mean_it_is_given():
    from keras_fcn.layers import REFERENCE_BGR_MEAN, CaffePreprocessing

    class Small(Painted):
        def load(self, index):
            image, mask = super().load(index)
            return (image[:20, :30], mask[:20, :30]) if index % 2 else (image, mask)

    for options in (dict(crop_size=(36, 50)), dict()):  # crops padded, then ragged batches padded
        dataset = data.make_dataset(Small(count=2), batch_size=2, augment_data=False, shuffle=False,
                                    mean=REFERENCE_BGR_MEAN, **options)  # fmt: skip
        images, masks = next(iter(dataset))
        padded = masks.numpy() == 255
        assert padded.sum() > 0
        np.testing.assert_allclose(CaffePreprocessing(REFERENCE_BGR_MEAN)(images).numpy()[padded], 0.0, atol=1e-4)


class Counted(Painted):
    """Painted examples that record which indices were loaded (decoded)."""

    def __init__(self, count=10):
        super().__init__(count=count)
        self.loaded = []

    def load(self, index):
        self.loaded.append(index)
        return super().load(index)


@pytest.mark.parametrize("repeat", [False, True])
def test_shards_decode_only_their_share_and_together_make_the_unsharded_epoch(repeat):
    settings = dict(batch_size=1, crop_size=24, seed=5, cache=False, repeat=repeat)
    whole = batches(data.make_dataset(Counted(count=9), **settings), 9)
    order = list(Counted(count=9).indices(shuffle=True, seed=5).as_numpy_iterator())
    assert sorted(order) == list(range(9)) and order != list(range(9))
    for k in range(3):
        source = Counted(count=9)
        share = batches(data.make_dataset(source, shard=(k, 3), **settings), 3)
        # The examples at positions k, k + 3, k + 6 of the unsharded epoch, with their augmentation.
        for (x, y), (want_x, want_y) in zip(share, whole[k::3], strict=True):
            np.testing.assert_array_equal(x, want_x)
            np.testing.assert_array_equal(y, want_y)
        if not repeat:  # (a repeating pipeline may read ahead into its next epoch)
            assert sorted(source.loaded) == sorted(order[k::3])


def test_cached_shards_decode_and_yield_their_share_once():
    for k in range(2):
        source = Counted(count=7)
        dataset = data.make_dataset(source, batch_size=1, augment_data=False, seed=1, shard=(k, 2), cache=True)
        first, second = batches(dataset, 7), batches(dataset, 7)
        assert sorted(source.loaded) == list(range(k, 7, 2))  # decoded once, then read from the cache
        want = sorted(Painted(count=7).load(i)[1].tobytes() for i in range(k, 7, 2))
        for epoch in (first, second):
            assert sorted(y[0].tobytes() for _, y in epoch) == want
        assert [y.tobytes() for _, y in first] != [y.tobytes() for _, y in second]  # reshuffled


def test_shard_arguments():
    with pytest.raises(ValueError, match=r"Received: shard=\(2, 2\)"):
        data.make_dataset(Painted(), shard=(2, 2), seed=0)
    with pytest.raises(ValueError, match="Received: shard=3"):
        data.make_dataset(Painted(), shard=3, seed=0)
    with pytest.raises(ValueError, match="Received: seed=None"):
        data.make_dataset(Painted(), shard=(0, 2))
