import keras
import numpy as np
import pytest

from keras_fcn import surgery


def upsample_filt_loops(size):
    """The reference's upsample_filt, written out pixel by pixel."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    out = np.zeros((size, size))
    for y in range(size):
        for x in range(size):
            out[y, x] = (1 - abs(y - center) / factor) * (1 - abs(x - center) / factor)
    return out


def caffe_bilinear_filler(size):
    """Caffe's BilinearFiller: an independent formula that equals upsample_filt when size % 4 == 0."""
    f = np.ceil(size / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    x = np.arange(size)
    w = 1 - np.abs(x / f - c)
    return np.outer(w, w)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 8, 16, 32, 64])
def test_upsample_filt_matches_the_reference_formula(size):
    np.testing.assert_allclose(surgery.upsample_filt(size), upsample_filt_loops(size), atol=1e-12)
    if size % 4 == 0:  # every upsampling kernel of the FCNs (4, 16, 32, 64)
        np.testing.assert_allclose(surgery.upsample_filt(size), caffe_bilinear_filler(size), atol=1e-12)


@pytest.mark.parametrize("size,channels", [(4, 3), (16, 5), (64, 2)])
def test_bilinear_kernel_is_per_channel(size, channels):
    kernel = surgery.bilinear_kernel(size, channels)
    assert kernel.shape == (size, size, channels, channels)
    for out_c in range(channels):
        for in_c in range(channels):
            expected = upsample_filt_loops(size) if out_c == in_c else np.zeros((size, size))
            np.testing.assert_allclose(kernel[:, :, out_c, in_c], expected, atol=1e-7)


def test_dense_to_conv_kernel_follows_keras_flatten_order():
    rng = np.random.default_rng(0)
    feature = rng.standard_normal((1, 3, 4, 5)).astype("float32")
    kernel = rng.standard_normal((60, 6)).astype("float32")
    dense = keras.ops.convert_to_numpy(keras.layers.Flatten()(feature)) @ kernel
    conv_kernel = surgery.dense_to_conv_kernel(kernel, (3, 4, 5))
    np.testing.assert_allclose(np.einsum("nhwc,hwcu->nu", feature, conv_kernel), dense, rtol=1e-5, atol=1e-5)


def test_dense_to_conv_kernel_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match=r"Received: kernel.shape=\(50, 6\), feature_shape=\(3, 4, 5\)"):
        surgery.dense_to_conv_kernel(np.zeros((50, 6)), (3, 4, 5))


def test_caffe_inner_product_becomes_the_same_convolution():
    rng = np.random.default_rng(1)
    blob = rng.standard_normal((5, 3, 4))  # Caffe (c, h, w)
    weight = rng.standard_normal((6, 60))  # InnerProduct (units, c*h*w)
    caffe_out = weight @ blob.reshape(-1)
    kernel = surgery.caffe_fc_to_conv_kernel(weight, (5, 3, 4))
    assert kernel.shape == (3, 4, 5, 6)
    np.testing.assert_allclose(np.einsum("hwc,hwcu->u", blob.transpose(1, 2, 0), kernel), caffe_out, atol=1e-9)


def test_caffe_deconvolution_layout():
    weight = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)  # (in, out, kh, kw)
    kernel = surgery.caffe_deconv_to_keras_kernel(weight)
    assert kernel.shape == (4, 5, 3, 2)
    assert kernel[1, 2, 0, 1] == weight[1, 0, 1, 2]


def _reference_paths():
    """The reference nets' layers from data to each blob, as (kind, kernel, stride, pad) from net.py."""
    conv = lambda k=3, p=1: surgery.coord_map("conv", k, 1, p)
    pool = surgery.coord_map("conv", 2, 2, 0)
    block = lambda n: [conv()] * n + [pool]
    to_pool3 = [conv(3, 100), conv(), pool] + block(2) + block(3)
    to_pool4 = to_pool3 + block(3)
    to_score_fr = to_pool4 + block(3) + [conv(7, 0), conv(1, 0), conv(1, 0)]
    up = lambda k, s: surgery.coord_map("deconv", k, s, 0)
    return to_pool3, to_pool4, to_score_fr, up


def test_crop_offsets_of_the_reference_nets():
    to_pool3, to_pool4, to_score_fr, up = _reference_paths()
    assert surgery.crop_offset(to_score_fr + [up(64, 32)], []) == 19
    upscore2 = to_score_fr + [up(4, 2)]
    assert surgery.crop_offset(to_pool4, upscore2) == 5
    assert surgery.crop_offset(upscore2 + [up(32, 16)], []) == 27
    upscore_pool4 = upscore2 + [up(4, 2)]
    assert surgery.crop_offset(to_pool3, upscore_pool4) == 9
    assert surgery.crop_offset(upscore_pool4 + [up(16, 8)], []) == 31


def test_crop_offset_errors():
    with pytest.raises(ValueError, match="different scales"):
        surgery.crop_offset([surgery.coord_map("conv", 2, 2, 0)], [])
    with pytest.raises(ValueError, match="non-negative integer crop offset"):
        surgery.crop_offset([surgery.coord_map("pad", pad=-3)], [])
