import hashlib
import shutil

import h5py
import numpy as np
import pytest
from testing import TINY, he_init, write_legacy_h5

import keras_fcn
from keras_fcn import weights
from keras_fcn.backbone import vgg16_classifier
from keras_fcn.weights import WeightFileError


@pytest.fixture
def narrow_vgg16_file(tmp_path):
    classifier = he_init(vgg16_classifier(TINY["backbone_filters"], TINY["fc_units"], classes=10), seed=0)
    return classifier, write_legacy_h5(classifier, tmp_path / "vgg16_narrow.h5")


def test_keras_vgg16_file_loads_into_every_variant(narrow_vgg16_file):
    classifier, path = narrow_vgg16_file
    for variant in keras_fcn.VARIANTS:
        model = keras_fcn.build_fcn(variant, 3, backbone_weights=path, **TINY)
        for name in weights.VGG16_CONV_LAYERS:
            for a, b in zip(model.get_layer(name).get_weights(), classifier.get_layer(name).get_weights(), strict=True):
                np.testing.assert_array_equal(a, b)
        fc6_kernel, fc6_bias = model.get_layer("fc6").get_weights()
        fc1_kernel, fc1_bias = classifier.get_layer("fc1").get_weights()
        assert fc6_kernel.shape == (7, 7, 16, 16)
        np.testing.assert_array_equal(fc6_kernel, fc1_kernel.reshape(7, 7, 16, 16))
        np.testing.assert_array_equal(fc6_bias, fc1_bias)
        fc7_kernel = model.get_layer("fc7").get_weights()[0]
        np.testing.assert_array_equal(fc7_kernel[0, 0], classifier.get_layer("fc2").get_weights()[0])


def test_a_model_saved_by_keras_in_the_legacy_layout_loads_too(narrow_vgg16_file, tmp_path):
    classifier, _ = narrow_vgg16_file
    classifier.save(tmp_path / "classifier.h5")  # Keras's own legacy writer: weights under model_weights/
    model = keras_fcn.fcn32s(3, backbone_weights=tmp_path / "classifier.h5", **TINY)
    np.testing.assert_array_equal(model.get_layer("fc7").get_weights()[1], classifier.get_layer("fc2").get_weights()[1])


def test_shape_mismatch_names_the_layer_and_both_shapes(narrow_vgg16_file):
    _, path = narrow_vgg16_file
    with pytest.raises(WeightFileError, match=r"Layer 'fc6': the file's 'fc1' has shape \(784, 16\), the model needs "
                                              r"\(7, 7, 16, 32\)"):
        keras_fcn.fcn8s(3, backbone_weights=path, backbone_filters=TINY["backbone_filters"], fc_units=32)
    with pytest.raises(WeightFileError, match=r"Layer 'block1_conv1'.*\(3, 3, 3, 4\).*\(3, 3, 3, 8\)"):
        keras_fcn.fcn8s(3, backbone_weights=path, backbone_filters=(8, 8, 8, 16, 16), fc_units=16)


def test_a_failed_load_changes_no_layer(narrow_vgg16_file):
    _, path = narrow_vgg16_file
    model = keras_fcn.fcn8s(3, backbone_filters=TINY["backbone_filters"], fc_units=32)
    before = model.get_layer("block1_conv1").get_weights()[0].copy()
    with pytest.raises(WeightFileError):
        weights.load_backbone_weights(model, path)
    np.testing.assert_array_equal(model.get_layer("block1_conv1").get_weights()[0], before)


def test_missing_layers_are_listed(narrow_vgg16_file, tmp_path):
    _, path = narrow_vgg16_file
    with h5py.File(path, "a") as f:
        f.attrs["layer_names"] = np.array([n for n in f.attrs["layer_names"] if n != b"fc2"])
    with pytest.raises(WeightFileError, match=r"lacks VGG16 layers \['fc2'\]"):
        keras_fcn.fcn32s(3, backbone_weights=path, **TINY)


@pytest.mark.parametrize("content,message", [(None, "Weight file not found"), (b"not hdf5", "Not an HDF5 file")])
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "weights.h5"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(WeightFileError, match=message):
        keras_fcn.fcn32s(3, backbone_weights=path, **TINY)


def test_imagenet_weights_come_from_keras_cache(narrow_vgg16_file, tmp_path, monkeypatch):
    _, path = narrow_vgg16_file
    (tmp_path / "cache" / "models").mkdir(parents=True)
    shutil.copy(path, tmp_path / "cache" / "models" / weights.IMAGENET_WEIGHTS_FILE)
    # get_file checks the cached copy against the MD5 it is given; this stands in for the real file's.
    monkeypatch.setattr(weights, "IMAGENET_WEIGHTS_MD5", hashlib.md5(open(path, "rb").read()).hexdigest())
    monkeypatch.setattr(weights, "IMAGENET_WEIGHTS_URL", "http://127.0.0.1:9/unreachable.h5")
    cached = weights.imagenet_weights_path(cache_dir=str(tmp_path / "cache"))
    assert cached == str(tmp_path / "cache" / "models" / weights.IMAGENET_WEIGHTS_FILE)


def test_imagenet_offline_says_to_pass_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "IMAGENET_WEIGHTS_URL", "http://127.0.0.1:9/vgg16.h5")
    with pytest.raises(WeightFileError, match="pass its path: backbone_weights="):
        weights.imagenet_weights_path(cache_dir=str(tmp_path))
    monkeypatch.setattr(weights, "imagenet_weights_path", lambda: str(tmp_path / "absent.h5"))
    with pytest.raises(WeightFileError, match="absent.h5"):
        keras_fcn.fcn32s(3, backbone_weights="imagenet", **TINY)
