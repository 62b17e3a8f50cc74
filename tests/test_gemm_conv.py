"""GEMMConv2D equals the convolution it replaces, and keeps Conv2D's weights and files."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from testing import TINY, he_init, relative_error, to_numpy

import keras_fcn
from keras_fcn.gemm_conv import GEMMConv2D, as_gemm_conv, wants_gemm


def numpy_conv2d(x, kernel, bias, stride, padding):
    """Direct convolution in float64 by loops over the kernel taps, TensorFlow's 'same' padding split."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    kh, kw, _, filters = kernel.shape
    n, h, w, _ = x.shape
    if padding == "same":
        out_h, out_w = -(-h // stride), -(-w // stride)
        pad_h, pad_w = max((out_h - 1) * stride + kh - h, 0), max((out_w - 1) * stride + kw - w, 0)
        x = np.pad(x, [(0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)])
    else:
        out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
    out = np.zeros((n, out_h, out_w, filters))
    for i in range(kh):
        for j in range(kw):
            window = x[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride, :]
            out += window @ kernel[i, j]
    return out + bias


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("size,kernel,stride", [((9, 13), 7, 1), ((11, 8), 7, 1), ((10, 15), 5, 2), ((6, 7), 1, 1)])
def test_equals_the_convolution_at_odd_sizes(padding, size, kernel, stride):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *size, 12)).astype("float32")
    layer = GEMMConv2D(20, kernel, strides=stride, padding=padding)
    layer.build(x.shape)
    weights = [rng.standard_normal(w.shape).astype("float32") * np.float32(1 / np.sqrt(kernel * kernel * 12))
               for w in layer.get_weights()]  # fmt: skip
    layer.set_weights(weights)
    got = to_numpy(layer(x))
    reference = numpy_conv2d(x, *weights, stride, padding)
    assert got.shape == reference.shape
    assert relative_error(got, reference) < 1e-5
    assert relative_error(got, tf.nn.conv2d(x, weights[0], stride, padding.upper()) + weights[1]) < 1e-5


@pytest.mark.parametrize("geometry,size", [("aligned", (20, 28)), ("caffe", (19, 27))])
def test_fc6_equals_plain_conv2d_in_both_geometries(geometry, size):
    model = he_init(keras_fcn.fcn8s(5, geometry=geometry, **TINY))
    fc6 = model.get_layer("fc6")
    assert isinstance(fc6, GEMMConv2D) and tuple(fc6.kernel.shape) == (7, 7, 16, 16)
    features = keras.Model(model.input, fc6.input)
    x = to_numpy(features(np.random.default_rng(1).uniform(0, 255, (2, *size, 3)).astype("float32")))
    plain = keras.layers.Conv2D.from_config(fc6.get_config())
    plain.build(x.shape)
    plain.set_weights(fc6.get_weights())
    # ReLU after the convolution: compare the pre-activation too (via a linear copy) so zeros hide nothing.
    linear = {**fc6.get_config(), "activation": "linear"}
    gemm_linear, plain_linear = GEMMConv2D.from_config(linear), keras.layers.Conv2D.from_config(linear)
    for layer in (gemm_linear, plain_linear):
        layer.build(x.shape)
        layer.set_weights(fc6.get_weights())
    assert relative_error(fc6(x), plain(x)) < 1e-5
    assert relative_error(gemm_linear(x), plain_linear(x)) < 1e-5


def test_config_and_weights_are_conv2d_s():
    layer = GEMMConv2D(8, 7, padding="valid", activation="relu", name="fc6")
    plain = keras.layers.Conv2D(8, 7, padding="valid", activation="relu", name="fc6")
    for each in (layer, plain):
        each.build((None, None, None, 4))
    assert layer.get_config() == plain.get_config()
    assert [(w.path, w.shape) for w in layer.weights] == [(w.path, w.shape) for w in plain.weights]
    copy = GEMMConv2D.from_config(layer.get_config())
    assert copy.get_config() == layer.get_config()


def _plain_fc6_model(**kwargs):
    """The model as the package built it before fc6 was a GEMMConv2D: same layers, plain Conv2D fc6."""
    model = keras_fcn.fcn8s(5, **kwargs, **TINY)
    plain = keras.models.clone_model(
        model,
        clone_function=lambda layer: keras.layers.Conv2D.from_config(layer.get_config())
        if isinstance(layer, GEMMConv2D)
        else layer.__class__.from_config(layer.get_config()),
    )
    assert type(plain.get_layer("fc6")) is keras.layers.Conv2D
    return he_init(plain)


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_files_saved_with_a_plain_conv2d_fc6_load_into_the_new_model(tmp_path, suffix):
    old = _plain_fc6_model()
    path = str(tmp_path / f"old{suffix}")
    old.save(path) if suffix == ".keras" else old.save_weights(path)
    new = keras_fcn.fcn8s(5, **TINY)
    new.load_weights(path)
    x = np.random.default_rng(2).integers(0, 256, (1, 40, 36, 3)).astype("float32")
    assert relative_error(new(x), old(x)) < 1e-5
    if suffix == ".keras":  # the old file itself still loads, as the plain Conv2D it was saved with
        assert type(keras.saving.load_model(path).get_layer("fc6")) is keras.layers.Conv2D


def test_backbone_weight_files_load_into_gemm_fc6(tmp_path):
    source = _plain_fc6_model()
    path = str(tmp_path / "fcn.weights.h5")
    source.save_weights(path)
    model = keras_fcn.fcn8s(5, **TINY)
    loaded = keras_fcn.load_backbone_weights(model, path)
    assert "fc6" in loaded
    np.testing.assert_array_equal(to_numpy(model.get_layer("fc6").kernel), to_numpy(source.get_layer("fc6").kernel))


def test_keras_file_round_trip_keeps_gemm_fc6(tmp_path):
    model = he_init(keras_fcn.fcn32s(3, geometry="caffe", **TINY))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("fc6")) is GEMMConv2D
    x = np.random.default_rng(3).integers(0, 256, (1, 33, 29, 3)).astype("float32")
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))


def test_mixed_bfloat16_computes_in_bfloat16():
    layer = GEMMConv2D(6, 7, padding="same", dtype="mixed_bfloat16")
    x = np.random.default_rng(4).standard_normal((1, 9, 9, 5)).astype("float32")
    y = layer(x)
    assert y.dtype == "bfloat16" and layer.kernel.dtype == "float32"
    reference = tf.nn.conv2d(x, to_numpy(layer.kernel), 1, "SAME") + to_numpy(layer.bias)
    assert relative_error(tf.cast(y, tf.float32), reference) < 2e-2  # 8-bit mantissas


def test_wants_gemm_picks_large_plain_kernels_only():
    assert wants_gemm(keras.layers.Conv2D(4, 7))
    assert not wants_gemm(keras.layers.Conv2D(4, 3))
    assert not wants_gemm(keras.layers.Conv2D(4, 7, dilation_rate=2))
    assert not wants_gemm(GEMMConv2D(4, 7))
    swapped = as_gemm_conv(keras.layers.Conv2D(4, 7, padding="same", name="fc6"))
    assert type(swapped) is GEMMConv2D and swapped.name == "fc6" and swapped.padding == "same"


@pytest.mark.parametrize("padding, stride", [("valid", 1), ("same", 1), ("same", 2)])
def test_gradients_are_the_convolutions(padding, stride):
    rng = np.random.default_rng(7)
    x = tf.constant(rng.standard_normal((2, 11, 9, 5)).astype("float32"))
    kernel = rng.standard_normal((4, 3, 5, 6)).astype("float32")
    layer = GEMMConv2D(6, (4, 3), strides=stride, padding=padding, use_bias=False)
    layer.build(x.shape)
    layer.kernel.assign(kernel)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        got = layer(x)
        want = tf.nn.conv2d(x, kernel, stride, padding.upper())
        upstream = tf.constant(rng.standard_normal(want.shape).astype("float32"))
        got_loss, want_loss = tf.reduce_sum(got * upstream), tf.reduce_sum(want * upstream)
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-4)
    np.testing.assert_allclose(tape.gradient(got_loss, x), tape.gradient(want_loss, x), atol=1e-4)
    kernel_grad = tape.gradient(got_loss, layer.kernel)
    # the kernel's gradient from the definition: sum over outputs of upstream * input window
    want_kernel = tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=kernel.shape, out_backprop=upstream, strides=[1, stride, stride, 1],
        padding=padding.upper(),
    )  # fmt: skip
    np.testing.assert_allclose(to_numpy(kernel_grad), to_numpy(want_kernel), atol=1e-3)
