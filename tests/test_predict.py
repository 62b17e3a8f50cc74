"""Prediction on image files: class ids beyond 255 survive, outputs never overwrite each other."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

from keras_fcn import cli
from keras_fcn.predict import predict_files, predict_masks


def constant_model(num_classes, winner):
    """A 1x1 convolution whose logits are highest for class `winner` at every pixel."""
    inputs = keras.Input((None, None, 3))
    layer = keras.layers.Conv2D(num_classes, 1)
    model = keras.Model(inputs, layer(inputs))
    bias = np.zeros(num_classes, "float32")
    bias[winner] = 1.0
    layer.set_weights([np.zeros((1, 1, 3, num_classes), "float32"), bias])
    return model


def test_class_ids_beyond_255_are_kept(tmp_path):
    model = constant_model(300, winner=299)
    image = np.zeros((5, 7, 3), np.uint8)
    (mask,) = predict_masks(model, [image])
    assert mask.dtype == np.int32 and mask.shape == (5, 7)
    np.testing.assert_array_equal(mask, np.full((5, 7), 299))
    Image.fromarray(image).save(tmp_path / "x.png")
    ((classes_png, _),) = predict_files(model, [str(tmp_path / "x.png")], str(tmp_path / "out"))
    np.testing.assert_array_equal(np.asarray(Image.open(classes_png)), np.full((5, 7), 299))  # 16-bit PNG


def test_inputs_with_the_same_stem_are_refused(tmp_path, capsys):
    for sub, ext in (("a", "jpg"), ("b", "png")):
        os.makedirs(tmp_path / sub)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / sub / f"x.{ext}")
    paths = [str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.png")]
    with pytest.raises(ValueError, match=r"a/x\.jpg and .*b/x\.png would both be written to x_classes\.png"):
        predict_files(constant_model(3, 1), paths, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")  # refused before writing anything
    model_path = str(tmp_path / "m.keras")
    constant_model(3, 1).save(model_path)
    assert cli.main(["predict", "--model", model_path, *paths, "--output", str(tmp_path / "out")]) == 2
    assert "would both be written" in capsys.readouterr().err
