import keras
import numpy as np
import pytest
import tensorflow as tf
from testing import TINY, randomize_heads, to_numpy

import keras_fcn
from keras_fcn import surgery

HEAD_LAYERS = {
    "fcn32s": ["fc6", "fc7", "score_fr", "upscore"],
    "fcn16s": ["fc6", "fc7", "score_fr", "upscore2", "score_pool4", "upscore16"],
    "fcn8s": ["fc6", "fc7", "score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3", "upscore8"],
}
HEAD_LAYERS["fcn8s_at_once"] = HEAD_LAYERS["fcn8s"] + ["scale_pool4", "scale_pool3"]
# The reference nets' crop offsets (voc-fcn*/net.py, as caffe.coord_map computes them).
CAFFE_OFFSETS = {
    "fcn32s": {"score": 19},
    "fcn16s": {"score_pool4c": 5, "score": 27},
    "fcn8s": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
    "fcn8s_at_once": {"score_pool4c": 5, "score_pool3c": 9, "score": 31},
}
SIZES = [(1, 1), (31, 33), (64, 64), (37, 100), (101, 47), (224, 224)]


def tiny(variant, **kwargs):
    return keras_fcn.build_fcn(variant, 3, **{**TINY, **kwargs})


@pytest.mark.parametrize("geometry", ["aligned", "caffe"])
@pytest.mark.parametrize("variant", keras_fcn.VARIANTS)
def test_output_has_the_input_size_and_fresh_logits_are_zero(variant, geometry):
    model = tiny(variant, geometry=geometry)
    rng = np.random.default_rng(0)
    for h, w in SIZES:
        images = rng.integers(0, 256, (2, h, w, 3)).astype("uint8")
        logits = to_numpy(model(images))
        assert logits.shape == (2, h, w, 3), (h, w)
        assert logits.dtype == np.float32
        np.testing.assert_array_equal(logits, 0.0)  # zero-initialised score layers


@pytest.mark.parametrize("variant", keras_fcn.VARIANTS)
def test_layer_names_follow_the_reference(variant):
    model = tiny(variant)
    names = {layer.name for layer in model.layers}
    vgg = {layer.name for layer in keras.applications.VGG16(weights=None, include_top=False).layers[1:]}
    assert vgg <= names
    assert set(HEAD_LAYERS[variant]) <= names
    assert model.input.name == "images" and model.get_layer("score").dtype_policy.name == "float32"


@pytest.mark.parametrize("variant", keras_fcn.VARIANTS)
def test_caffe_geometry_crop_offsets_equal_the_reference(variant):
    model = tiny(variant, geometry="caffe")
    crops = {layer.name: layer.offset for layer in model.layers if isinstance(layer, keras_fcn.CropToReference)}
    assert crops == CAFFE_OFFSETS[variant]
    assert model.get_layer("block1_conv1").padding == "valid"
    assert model.get_layer("conv1_1_pad").padding == ((100, 100), (100, 100))
    assert model.get_layer("fc6").padding == "valid"


@pytest.mark.parametrize("variant", keras_fcn.VARIANTS)
def test_initialisation_follows_the_reference(variant):
    model = tiny(variant)
    for layer in model.layers:
        if layer.name.startswith("score_"):
            assert all(np.all(w == 0) for w in layer.get_weights()), layer.name
        if isinstance(layer, keras.layers.Conv2DTranspose):
            k = layer.kernel_size[0]
            np.testing.assert_allclose(to_numpy(layer.kernel), surgery.bilinear_kernel(k, 3))
            assert not layer.use_bias
            final = layer.name in ("upscore", "upscore16", "upscore8")
            assert layer.trainable is not final, layer.name
    assert [model.get_layer(n).rate for n in ("drop6", "drop7")] == [0.5, 0.5]
    learnable = tiny(variant, learn_final_upsampling=True)
    assert all(layer.trainable for layer in learnable.layers if isinstance(layer, keras.layers.Conv2DTranspose))


def test_at_once_scales_pool4_and_pool3():
    model = tiny("fcn8s_at_once")
    images = np.random.default_rng(0).integers(0, 256, (1, 64, 96, 3)).astype("float32")
    probe = keras.Model(model.input, [model.get_layer(n).output for n in
                                      ("block4_pool", "scale_pool4", "block3_pool", "scale_pool3")])
    pool4, scaled4, pool3, scaled3 = map(to_numpy, probe(images))
    np.testing.assert_allclose(scaled4, pool4 * 0.01, rtol=1e-6)
    np.testing.assert_allclose(scaled3, pool3 * 0.0001, rtol=1e-6)


def test_fcn32s_output_is_bilinear_interpolation_of_score_fr():
    """In the aligned geometry the final scores are score_fr resized with half-pixel centres (tf.image.resize)
    away from the borders: the geometry is exact, with no shift."""
    model = randomize_heads(tiny("fcn32s"))
    images = np.random.default_rng(1).integers(0, 256, (1, 160, 224, 3)).astype("float32")
    score_fr = to_numpy(keras.Model(model.input, model.get_layer("score_fr").output)(images))
    expected = to_numpy(tf.image.resize(score_fr, (160, 224), method="bilinear"))
    np.testing.assert_allclose(to_numpy(model(images))[:, 32:-32, 32:-32], expected[:, 32:-32, 32:-32], atol=1e-5)


def test_mixed_precision_keeps_float32_logits():
    keras.config.set_dtype_policy("mixed_float16")
    model = randomize_heads(tiny("fcn8s"))
    assert model.get_layer("fc6").compute_dtype == "float16"
    logits = model(np.random.default_rng(0).integers(0, 256, (1, 50, 70, 3)).astype("uint8"))
    assert logits.dtype == "float32" and np.isfinite(to_numpy(logits)).all()
    assert np.abs(to_numpy(logits)).max() > 0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"variant": "fcn4s"}, "Received: variant='fcn4s'"),
        ({"num_classes": 0}, "Received: num_classes=0"),
        ({"geometry": "same"}, "Received: geometry='same'"),
        ({"dropout": 1.0}, "Received: dropout=1.0"),
        ({"backbone_filters": (4, 8)}, r"Received: backbone_filters=\(4, 8\)"),
        ({"fc_units": -1}, "Received: fc_units=-1"),
        ({"init_from": "fcn32s.keras"}, "Received: init_from='fcn32s.keras'"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = {"variant": "fcn8s", "num_classes": 3, **TINY, **kwargs}
    with pytest.raises(ValueError, match=message):
        keras_fcn.build_fcn(args.pop("variant"), args.pop("num_classes"), **args)


@pytest.mark.parametrize(
    "variant,geometry",
    [(v, "aligned") for v in keras_fcn.VARIANTS] + [("fcn8s", "caffe")],
)
def test_keras_file_round_trip_gives_identical_outputs(variant, geometry, tmp_path):
    model = randomize_heads(tiny(variant, geometry=geometry), seed=3)
    images = np.random.default_rng(2).integers(0, 256, (2, 45, 61, 3)).astype("uint8")
    expected = to_numpy(model(images))
    path = tmp_path / f"{variant}.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert [layer.name for layer in reloaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(to_numpy(reloaded(images)), expected)
    assert np.abs(expected).max() > 0


def test_staged_training_carries_weights_by_name():
    fcn32 = randomize_heads(tiny("fcn32s"), seed=4)
    fcn16 = tiny("fcn16s", init_from=fcn32)
    for name in ("block1_conv1", "block5_conv3", "fc6", "fc7", "score_fr"):
        for a, b in zip(fcn32.get_layer(name).get_weights(), fcn16.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    assert all(np.all(w == 0) for w in fcn16.get_layer("score_pool4").get_weights())
    fcn16 = randomize_heads(fcn16, seed=5)
    fcn8 = keras_fcn.fcn8s(3, init_from=fcn16, **TINY)
    np.testing.assert_array_equal(fcn8.get_layer("score_pool4").get_weights()[0],
                                  fcn16.get_layer("score_pool4").get_weights()[0])
    copied = keras_fcn.transfer_weights(fcn16, tiny("fcn8s"))
    assert "upscore2" in copied and "score_pool3" not in copied and "upscore16" not in copied


def test_transfer_weights_names_a_shape_mismatch():
    wide = keras_fcn.fcn32s(3, backbone_filters=(4, 8, 8, 16, 16), fc_units=32)
    with pytest.raises(ValueError, match="Layer 'fc6' has weight shapes"):
        keras_fcn.transfer_weights(wide, tiny("fcn16s"))
