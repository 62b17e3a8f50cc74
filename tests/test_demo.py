"""The demo's chain at a tiny size: train, evaluate on held-out images, overlays and curves on disk."""

import os

import numpy as np
from PIL import Image
from test_metrics import reference_scores

from keras_fcn import cli
from keras_fcn.demo import run_demo

TINY_DEMO = {
    "image_size": 48, "train_examples": 64, "val_examples": 6, "epochs": 2, "steps_per_epoch": 4,
    "batch_size": 4, "crop_size": 32, "backbone_filters": (4, 8, 8, 16, 16), "fc_units": 16, "overlays": 3,
    "verbose": 0,
}  # fmt: skip


def test_run_demo_small(tmp_path, capsys):
    result = run_demo(str(tmp_path / "demo"), **TINY_DEMO)
    printed = capsys.readouterr().out
    assert "narrow VGG16-topology backbone" in printed and "no ImageNet weights" in printed
    for line in ("pixel accuracy", "mean accuracy", "mean IU", "fw IU"):
        assert line in printed
    assert result.images.shape == (6, 48, 48, 3) and result.images.dtype == np.uint8
    assert result.masks.shape == result.predictions.shape == (6, 48, 48)
    assert result.class_names == ("background", "disc", "square", "triangle", "cross")
    # the reported scores are those of the returned model on the returned held-out images
    predictions = result.model.predict(result.images.astype("float32"), verbose=0).argmax(-1)
    np.testing.assert_array_equal(predictions, result.predictions)
    _, expected = reference_scores(result.masks, predictions, 5)
    np.testing.assert_allclose(result.scores["mean_iu"], expected["mean_iu"], rtol=1e-9)
    out = tmp_path / "demo"
    overlays = sorted(os.listdir(out / "overlays"))
    assert overlays == ["heldout_000.png", "heldout_001.png", "heldout_002.png"]
    assert Image.open(out / "overlays" / overlays[0]).width > 2 * 96  # truth | prediction, with legends
    assert Image.open(out / "training_curves.png").size[0] > 0
    assert (out / "metrics.txt").read_text().startswith("6 held-out images")
    assert (out / "train" / "final.keras").exists()
    # The last step: exported, served locally, queried over gRPC, equal to the in-process prediction.
    assert "over gRPC" in printed
    assert os.path.isfile(result.serving["export_path"] + "/saved_model.pb")
    assert result.serving["export_path"].startswith(str(out / "serving"))
    assert result.serving["max_abs_difference"] <= 1e-5 and result.serving["class_agreement"] >= 0.9999


def test_demo_verb_registered():
    import argparse

    parser = argparse.ArgumentParser()
    verbs = parser.add_subparsers(dest="verb")
    cli.add_demo(verbs)
    args = parser.parse_args(["demo", "--output", "x", "--epochs", "3"])
    assert args.run is cli.run_demo and args.epochs == 3 and args.output == "x" and args.serve
    assert not parser.parse_args(["demo", "--no-serve"]).serve
