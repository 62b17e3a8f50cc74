import keras
import numpy as np
import pytest
import tensorflow as tf
from testing import to_numpy

from keras_fcn import surgery
from keras_fcn.layers import BilinearUpsampling, CaffePreprocessing, CropToReference, PadToMultiple


def upsampler(channels, factor, padding):
    return keras.layers.Conv2DTranspose(
        channels, 2 * factor, strides=factor, padding=padding, use_bias=False,
        kernel_initializer=BilinearUpsampling(),
    )


def test_bilinear_initializer_fills_the_reference_kernel():
    layer = upsampler(3, 8, "same")
    layer.build((None, None, None, 3))
    np.testing.assert_allclose(to_numpy(layer.kernel), surgery.bilinear_kernel(16, 3))


def test_bilinear_initializer_rejects_non_square_kernels():
    with pytest.raises(ValueError, match=r"Received: shape=\(4, 4, 3, 2\)"):
        BilinearUpsampling()((4, 4, 3, 2))


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_constant_scores_stay_constant_away_from_the_borders(factor, padding):
    scores = np.full((1, 5, 6, 2), 3.0, "float32")
    scores[..., 1] = -1.5
    out = to_numpy(upsampler(2, factor, padding)(scores))
    margin = 2 * factor  # pixels near the edge see fewer than two input locations
    interior = out[0, margin:-margin, margin:-margin]
    np.testing.assert_allclose(interior[..., 0], 3.0, atol=1e-5)
    np.testing.assert_allclose(interior[..., 1], -1.5, atol=1e-5)


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_same_upsampling_is_half_pixel_bilinear_interpolation(factor):
    """The aligned geometry's 'same' transposed convolution equals tf.image.resize away from the borders,
    so that location i of a stride-f map sits on output pixel f*(i + 0.5) - 0.5."""
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((1, 6, 7, 3)).astype("float32")
    out = to_numpy(upsampler(3, factor, "same")(scores))
    assert out.shape == (1, 6 * factor, 7 * factor, 3)
    resized = to_numpy(tf.image.resize(scores, (6 * factor, 7 * factor), method="bilinear"))
    m = factor  # the first/last half input pixel is extrapolated by resize, faded to zero by the kernel
    np.testing.assert_allclose(out[:, m:-m, m:-m], resized[:, m:-m, m:-m], atol=1e-5)


def test_caffe_preprocessing_equals_keras_vgg16_preprocess_input():
    images = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype("uint8")
    expected = keras.applications.vgg16.preprocess_input(images.astype("float32"))
    np.testing.assert_allclose(to_numpy(CaffePreprocessing()(images)), expected, atol=1e-4)


@pytest.mark.parametrize("size,padded", [(1, 32), (32, 32), (33, 64), (97, 128)])
def test_pad_to_multiple_pads_bottom_right_with_zeros(size, padded):
    x = np.ones((1, size, size + 1, 2), "float32")
    out = to_numpy(PadToMultiple(32)(x))
    assert out.shape == (1, padded, -(-(size + 1) // 32) * 32, 2)
    np.testing.assert_array_equal(out[:, :size, : size + 1], x)
    assert out.sum() == x.sum()


def test_crop_to_reference_matches_numpy_slicing():
    x = np.random.default_rng(0).standard_normal((2, 40, 50, 3)).astype("float32")
    reference = np.zeros((2, 17, 23, 1), "float32")
    np.testing.assert_array_equal(to_numpy(CropToReference(5)([x, reference])), x[:, 5:22, 5:28])


def test_crop_to_reference_refuses_a_map_that_is_too_small():
    x = np.zeros((1, 20, 20, 3), "float32")
    with pytest.raises(tf.errors.InvalidArgumentError, match="smaller than the reference plus offset 5"):
        CropToReference(5)([x, np.zeros((1, 18, 18, 1), "float32")])


@pytest.mark.parametrize(
    "layer",
    [
        CaffePreprocessing(mean=(1.0, 2.0, 3.0), name="pre"),
        PadToMultiple(16, name="pad"),
        CropToReference(9, name="crop"),
    ],
)
def test_layer_configs_round_trip(layer):
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("bad", [{"multiple": 0}, {"multiple": 2.5}])
def test_pad_to_multiple_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match="Received: multiple="):
        PadToMultiple(**bad)


def test_crop_rejects_negative_offsets():
    with pytest.raises(ValueError, match="Received: offset=-1"):
        CropToReference(-1)
