"""The Keras internals keras_fcn relies on: fail loudly, naming what changed, when Keras moves under them."""

import keras
import numpy as np
import pytest

from keras_fcn import keras_internals


def test_installed_keras_is_a_release_the_internals_were_written_for():
    assert keras_internals.keras_minor_version() in keras_internals.KERAS_VERSIONS, (
        f"keras=={keras.__version__} is not one of {keras_internals.KERAS_VERSIONS}: re-check "
        "keras_fcn/keras_internals.py against it, then add it there and to setup.py"
    )


@pytest.mark.parametrize("name", keras_internals.PRIVATE_MODEL_ATTRIBUTES)
def test_private_model_attributes_still_exist(name):
    assert callable(getattr(keras.Model, name, None)), f"keras.Model.{name} is gone in keras=={keras.__version__}"


def test_unknown_keras_release_is_refused(monkeypatch):
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with pytest.raises(RuntimeError, match=r"Received: keras==3\.99\.0"):
        keras_internals.require_known_keras("something")


def test_weights_h5_layout_is_read_by_layer_name(tmp_path):
    import h5py

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="first")(inputs)
    outputs = keras.layers.Dense(2, name="second", use_bias=False)(hidden)
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    with h5py.File(path, "r") as f:
        read = keras_internals.read_weights_h5_layers(f["layers"])
    assert sorted(read) == ["first", "second"]
    for name in read:
        expected = model.get_layer(name).get_weights()
        assert len(read[name]) == len(expected)
        for got, want in zip(read[name], expected, strict=True):
            np.testing.assert_array_equal(got, want)
