import keras
import numpy as np
import pytest
from testing import he_init, relative_error, to_numpy

import keras_fcn

# The acceptance bound: max |difference| <= 1e-5 of the output's scale.
RTOL = 1e-5


def split_classifier(classifier):
    """Keras's own layers of a Flatten→Dense classifier, applied by hand: features on any size, head on windows."""
    layers = classifier.layers[1:]
    flatten_at = next(i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Flatten))

    def features(images):
        x = images
        for layer in layers[:flatten_at]:
            x = layer(x)
        return to_numpy(x)

    def head(window):
        x = window.reshape(window.shape[0], -1)  # Keras's Flatten order (C order, channels last)
        for layer in layers[flatten_at + 1:]:
            x = layer(x)
        return to_numpy(x)

    return features, head


def images(shape, seed=0):
    return keras.applications.vgg16.preprocess_input(
        np.random.default_rng(seed).uniform(0, 255, shape).astype("float32"))


def assert_sliding_classifier(classifier, fcn, image, window):
    """Location (i, j) of the FCN equals the Dense head on the window x window pool5 patch at (i, j)."""
    features, head = split_classifier(classifier)
    pool5 = features(image)
    out = to_numpy(fcn(image))
    rows, cols = pool5.shape[1] - window + 1, pool5.shape[2] - window + 1
    assert out.shape[1:3] == (rows, cols)
    expected = np.stack([
        np.stack([head(pool5[:, i:i + window, j:j + window]) for j in range(cols)], axis=1)
        for i in range(rows)], axis=1)
    assert relative_error(out, expected) <= RTOL
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("application", [keras.applications.VGG16, keras.applications.VGG19])
def test_full_size_vgg_equals_the_classifier_and_slides_it(application):
    classifier = he_init(application(weights=None, classifier_activation=None), seed=1)
    fcn = keras_fcn.convolutionalize(classifier)
    assert fcn.input.shape == (None, None, None, 3)
    assert tuple(fcn.get_layer("fc1").kernel.shape) == (7, 7, 512, 4096)
    assert tuple(fcn.get_layer("fc2").kernel.shape) == (1, 1, 4096, 4096)

    image = images((1, 224, 224, 3))
    expected = to_numpy(classifier(image))
    got = to_numpy(fcn(image))
    assert got.shape == (1, 1, 1, 1000)
    assert relative_error(got[:, 0, 0], expected) <= RTOL
    assert np.std(expected) > 0.1  # the outputs are far from constant: the comparison means something

    assert_sliding_classifier(classifier, fcn, images((1, 256, 288, 3), seed=1), window=7)


def test_softmax_vgg16_with_renamed_layers():
    classifier = he_init(keras.applications.VGG16(weights=None), seed=2)
    fcn = keras_fcn.convolutionalize(classifier, names={"fc1": "fc6", "fc2": "fc7", "predictions": "fc8"})
    assert [layer.name for layer in fcn.layers[-3:]] == ["fc6", "fc7", "fc8"]
    image = images((1, 224, 224, 3), seed=3)
    got = to_numpy(fcn(image))[:, 0, 0]
    np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-5)  # softmax over the channel axis
    assert relative_error(got, to_numpy(classifier(image))) <= RTOL


def small_valid_cnn():
    inputs = keras.Input((20, 20, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu")(inputs)  # 18
    x = keras.layers.MaxPooling2D(2)(x)  # 9
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)  # 7
    x = keras.layers.MaxPooling2D(2)(x)  # 3
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(12, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(5)(x)
    x = keras.layers.Activation("softmax")(x)
    return he_init(keras.Model(inputs, x), seed=4)


def test_valid_cnn_equals_the_classifier_on_every_image_window():
    classifier = small_valid_cnn()
    fcn = keras_fcn.convolutionalize(classifier)
    image = np.random.default_rng(5).standard_normal((2, 36, 44, 3)).astype("float32")
    out = to_numpy(fcn(image))
    stride = 4  # two 2x2 poolings
    rows, cols = (36 - 20) // stride + 1, (44 - 20) // stride + 1
    assert out.shape == (2, rows, cols, 5)
    for i in range(rows):
        for j in range(cols):
            window = image[:, stride * i:stride * i + 20, stride * j:stride * j + 20]
            assert relative_error(out[:, i, j], to_numpy(classifier(window))) <= RTOL


def test_sequential_models_work_and_share_no_state():
    classifier = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Conv2D(3, 3, padding="same"), keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(), keras.layers.Dense(4)])
    he_init(classifier, seed=6)
    fcn = keras_fcn.convolutionalize(classifier)
    image = np.random.default_rng(7).standard_normal((1, 8, 8, 2)).astype("float32")
    assert relative_error(to_numpy(fcn(image))[:, 0, 0], to_numpy(classifier(image))) <= RTOL
    fcn.layers[1].set_weights([w * 0 for w in fcn.layers[1].get_weights()])
    assert np.abs(classifier.layers[0].get_weights()[0]).max() > 0


def test_no_dense_head_is_an_error():
    with pytest.raises(ValueError, match="has no Flatten layer"):
        keras_fcn.convolutionalize(keras.applications.VGG16(weights=None, include_top=False))


def test_flatten_without_dense_is_an_error():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Flatten()(inputs)
    with pytest.raises(ValueError, match="at least one Dense layer after Flatten"):
        keras_fcn.convolutionalize(keras.Model(inputs, keras.layers.Activation("relu")(x)))


def test_a_layer_that_cannot_carry_over_is_named():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.BatchNormalization(name="head_bn")(x)
    x = keras.layers.Dense(2)(x)
    with pytest.raises(ValueError, match="Received: layer 'head_bn' of type BatchNormalization"):
        keras_fcn.convolutionalize(keras.Model(inputs, x))


def test_a_branching_model_is_an_error():
    inputs = keras.Input((4, 4, 3))
    a = keras.layers.Conv2D(3, 1, name="branch")(inputs)
    x = keras.layers.Add(name="join")([a, inputs])
    x = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    with pytest.raises(ValueError, match="single chain"):
        keras_fcn.convolutionalize(keras.Model(inputs, x))
