"""Long verbs show a progress bar on stdout (Keras's Progbar; `query` its own, free of Keras); `--quiet` hides it."""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest
from PIL import Image
from testing import TINY, he_init, randomize_heads, write_legacy_h5

import keras_fcn
from keras_fcn.backbone import vgg16_classifier
from keras_fcn.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved tiny FCN and two image files."""
    folder = tmp_path_factory.mktemp("progress")
    model = randomize_heads(keras_fcn.fcn32s(5, **TINY), std=0.5)
    model.save(folder / "m.keras")
    rng = np.random.default_rng(0)
    paths = []
    for name, size in (("a.png", (30, 41)), ("b.png", (37, 25))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)
        paths.append(str(folder / name))
    return folder, str(folder / "m.keras"), paths


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return re.sub(r"\x1b\[[0-9;]*m", "", out)  # Progbar's colours


def test_evaluate_shows_images_done_and_the_running_mean_iu(files, capsys):
    _, model, _ = files
    argv = ["evaluate", "--model", model, "--data", "synthetic:3", "--data-option", "image_size=[36,36]"]
    out = run(capsys, argv)
    assert re.search(r"3/3 .*mean_iu: [0-9.]+", out), out
    assert "mean IU" in out  # the final table
    quiet = run(capsys, [*argv, "--quiet"])
    assert "3/3" not in quiet and "mean_iu:" not in quiet and "mean IU" in quiet


def test_predict_shows_files_done(files, capsys):
    folder, model, paths = files
    argv = ["predict", "--model", model, *paths, "--output", str(folder / "pred")]
    assert "2/2" in run(capsys, argv)
    assert run(capsys, [*argv, "--quiet"]) == ""
    assert (folder / "pred" / "b_overlay.png").exists()


def test_query_shows_files_done(files, capsys):
    from keras_fcn.serving.server import ModelServer

    folder, model_path, paths = files
    model = keras.saving.load_model(model_path, compile=False)
    keras_fcn.export_saved_model(model, str(folder / "served"), verbose=False)
    with ModelServer("fcn", str(folder / "served"), port=0, rest_port=None) as server:
        argv = ["query", "--address", server.grpc_address, "--model", "fcn", *paths, "--output", str(folder / "q")]
        out = run(capsys, argv)
        assert "2/2" in out and "a_class_ids.png" in out
        assert run(capsys, [*argv, "--quiet"]) == ""


def test_convert_shows_bytes_read(tmp_path, capsys):
    classifier = he_init(vgg16_classifier(TINY["backbone_filters"], TINY["fc_units"], classes=10), seed=0)
    source = write_legacy_h5(classifier, tmp_path / "vgg16.h5")
    argv = ["convert", "--input", source, "--output", str(tmp_path / "fcn.weights.h5")]
    assert re.search(r"\d+/\d+ .*byte", run(capsys, argv))
    assert run(capsys, [*argv, "--force", "--quiet"]) == ""
