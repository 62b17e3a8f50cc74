import os
import re
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
from testing import TINY, he_init, relative_error, to_numpy, write_legacy_h5

import keras_fcn
from keras_fcn.backbone import vgg16_classifier
from keras_fcn.cli import main
from keras_fcn.convert import probe_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FC_NAMES = {"fc1": "fc6", "fc2": "fc7", "predictions": "fc8"}


@pytest.fixture
def narrow(tmp_path):
    classifier = he_init(vgg16_classifier(TINY["backbone_filters"], TINY["fc_units"], classes=10), seed=0)
    return classifier, write_legacy_h5(classifier, tmp_path / "vgg16_narrow.h5")


def convert(capsys, *args):
    code = main(["convert", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def reported_difference(out):
    return float(re.search(r"max \|classifier - converted\| .*: (\S+)", out).group(1))


def test_narrow_file_converts_and_loads_everywhere(narrow, tmp_path, capsys):
    classifier, source = narrow
    output = tmp_path / "fcn.weights.h5"
    code, out, _ = convert(capsys, "--input", source, "--output", output)
    assert code == 0 and output.exists()
    assert reported_difference(out) < 1e-4

    # A convolutionalized VGG16 of the same widths loads the file with Keras's own load_weights ...
    conv = keras_fcn.convolutionalize(vgg16_classifier(TINY["backbone_filters"], TINY["fc_units"], 10), FC_NAMES)
    conv.load_weights(output)
    image = probe_image(224, seed=3)
    assert relative_error(to_numpy(conv(image))[:, 0, 0], to_numpy(classifier(image))) <= 1e-5
    # ... and every FCN takes it as its backbone.
    model = keras_fcn.fcn8s(3, backbone_weights=output, **TINY)
    np.testing.assert_array_equal(model.get_layer("fc6").get_weights()[0],
                                  classifier.get_layer("fc1").get_weights()[0].reshape(7, 7, 16, 16))
    assert sorted(os.listdir(tmp_path)) == ["fcn.weights.h5", "vgg16_narrow.h5"]  # no temporary file left


def test_the_tool_script_takes_the_same_flags(narrow, tmp_path):
    _, source = narrow
    output = tmp_path / "tool.weights.h5"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "convert_vgg16_weights.py"), "--input", source,
         "--output", output], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert reported_difference(result.stdout) < 1e-4 and output.exists()


@pytest.mark.slow
def test_full_size_vgg16_file_in_the_real_keras_layout(tmp_path):
    vgg16 = he_init(keras.applications.VGG16(weights=None), seed=1)
    source = write_legacy_h5(vgg16, tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5")
    del vgg16
    # Keras's own loader reads the file: it has the layout of the ImageNet download.
    reference = keras.applications.VGG16(weights=source)
    output = tmp_path / "vgg16_fcn.weights.h5"
    result = subprocess.run([sys.executable, "-m", "keras_fcn.cli", "convert", "--input", source,
                             "--output", output], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert reported_difference(result.stdout) < 1e-5
    assert "byte" in result.stdout  # the progress bar over the ~530 MB file

    conv = keras_fcn.convolutionalize(keras.applications.VGG16(weights=None), FC_NAMES)
    conv.load_weights(output)
    assert tuple(conv.get_layer("fc6").kernel.shape) == (7, 7, 512, 4096)
    image = probe_image(224, seed=4)
    expected = to_numpy(reference(image))
    assert relative_error(to_numpy(conv(image))[:, 0, 0], expected) <= 1e-5
    del conv
    fcn = keras_fcn.fcn32s(21, backbone_weights=output)
    np.testing.assert_array_equal(fcn.get_layer("fc7").get_weights()[1], reference.get_layer("fc2").get_weights()[1])


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _wrong_shape(path):
    with h5py.File(path, "a") as f:
        group = f["block2_conv1"]
        name = group.attrs["weight_names"][0].decode()
        del group[name]
        group.create_dataset(name, data=np.zeros((3, 3, 5, 8), "float32"))


def _not_vgg(path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Dense(2, name="predictions")(keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inputs)))
    write_legacy_h5(keras.Model(inputs, x), path)


@pytest.mark.parametrize(
    "damage,message",
    [
        (os.remove, "Input file not found"),
        (lambda p: open(p, "w").write("just text"), "Not an HDF5 file"),
        (_truncate, "truncated or corrupt"),
        (_not_vgg, "Not a VGG16 weight file with its top: missing layers"),
        (_wrong_shape, r"Layer 'block2_conv1' has weights \[\(3, 3, 5, 8\), \(8,\)\], expected kernel \(3, 3, 4, 8\)"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(narrow, tmp_path, capsys, damage, message):
    _, source = narrow
    damage(source)
    output = tmp_path / "out.weights.h5"
    code, _, err = convert(capsys, "--input", source, "--output", output)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("keras-fcn convert: error: ")
    assert re.search(message, err)
    assert not output.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".convert-")]


def test_existing_output_needs_force(narrow, tmp_path, capsys):
    _, source = narrow
    output = tmp_path / "out.weights.h5"
    output.write_bytes(b"precious")
    code, _, err = convert(capsys, "--input", source, "--output", output)
    assert code == 2 and "pass --force to overwrite" in err and output.read_bytes() == b"precious"
    code, _, _ = convert(capsys, "--input", source, "--output", output, "--force", "--quiet")
    assert code == 0 and h5py.is_hdf5(output)


@pytest.mark.parametrize("name,message", [("out.h5", "ending in '.weights.h5'"), ("missing/out.weights.h5", "No such")])
def test_bad_output_paths(narrow, tmp_path, capsys, name, message):
    _, source = narrow
    code, _, err = convert(capsys, "--input", source, "--output", tmp_path / name)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_console_exit_code_for_a_missing_input(tmp_path):
    result = subprocess.run([sys.executable, "-m", "keras_fcn.cli", "convert", "--input", tmp_path / "nope.h5",
                             "--output", tmp_path / "o.weights.h5"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("keras-fcn convert: error: Input file not found")
