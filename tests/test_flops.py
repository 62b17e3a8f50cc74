"""Forward FLOPs from layer configs and shapes, against counts made by hand."""

import keras
import pytest
from testing import TINY

import keras_fcn
from keras_fcn.flops import forward_flops


def test_tiny_model_matches_a_hand_count():
    images = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(images)  # (1, 8, 10, 4)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)  # (1, 4, 5, 4)
    x = keras.layers.Conv2DTranspose(2, 4, strides=2, name="deconv")(x)  # (1, 10, 12, 2)
    x = keras.layers.Conv2D(6, 5, padding="valid", groups=2, name="grouped")(x)  # (1, 6, 8, 6)
    x = keras.layers.Dense(5, name="dense")(x)  # (1, 6, 8, 5)
    flops = forward_flops(keras.Model(images, x), (1, 8, 10, 3))
    assert flops == {
        "conv": 2 * (8 * 10) * (3 * 3 * 3) * 4,
        "pool": 0,
        "deconv": 2 * (4 * 5) * (4 * 4 * 4) * 2,
        "grouped": 2 * (6 * 8) * (5 * 5 * 1) * 6,
        "dense": 2 * (6 * 8) * 6 * 5,
    }


@pytest.mark.parametrize("geometry", ["aligned", "caffe"])
def test_fcn_fc6_count_follows_the_geometry(geometry):
    model = keras_fcn.fcn8s(5, geometry=geometry, **TINY)
    flops = forward_flops(model, (2, 100, 70, 3))
    c, f = TINY["backbone_filters"][-1], TINY["fc_units"]
    # aligned: pad to 128x96, pool5 4x3, 'same' fc6; caffe: conv1_1 pad 100 -> 298x268 -> ceil pools
    # 149x134, 75x67, 38x34, 19x17, 10x9 -> 'valid' 7x7 fc6 gives 4x3.
    fc6_map = 4 * 3
    assert flops["fc6"] == 2 * 2 * fc6_map * 7 * 7 * c * f
    assert flops["block1_conv1"] == 2 * 2 * (128 * 96 if geometry == "aligned" else 298 * 268) * 27 * 4
    assert flops["fc7"] == 2 * 2 * fc6_map * f * f


def test_bad_input_shape_is_named():
    with pytest.raises(ValueError, match="Received: input_shape=\\(1, 8, 8, 4\\)"):
        forward_flops(keras_fcn.fcn32s(3, **TINY), (1, 8, 8, 4))
