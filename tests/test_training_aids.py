"""Defaults that train (ImageNet backbone, a warning on one-class epochs) and training within a disk
(the newest K checkpoints, the printed disk use, median-frequency class weights)."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest
from PIL import Image
from testing import TINY, he_init, randomize_heads

import keras_fcn
from keras_fcn import cli, data, weights
from keras_fcn.class_weights import class_pixel_counts, median_frequency_weights
from keras_fcn.config import TrainConfig
from keras_fcn.training import SingleClassWarning, train

RUN = {
    **TINY,
    "train_data": "synthetic:8",
    "data_options": {"image_size": [32, 32]},
    "batch_size": 2,
    "crop_size": 32,
    "dropout": 0.0,
    "verbose": 0,
}


def test_backbone_weights_default_to_imagenet_for_vgg16_widths_only():
    assert TrainConfig().backbone_weights == "auto"
    assert TrainConfig().resolved_backbone_weights() == "imagenet"
    assert TrainConfig(backbone_filters=(64, 128, 256, 512, 512), fc_units=4096).resolved_backbone_weights() == (
        "imagenet"
    )
    assert TrainConfig(**TINY).resolved_backbone_weights() is None  # no ImageNet weights for narrow widths
    assert TrainConfig(fc_units=1024).resolved_backbone_weights() is None
    assert TrainConfig(backbone_weights=None).resolved_backbone_weights() is None
    assert TrainConfig(init_from="fcn32s.keras").resolved_backbone_weights() is None  # copied from there instead
    assert TrainConfig(**TINY, backbone_weights="w.h5").resolved_backbone_weights() == "w.h5"


def test_offline_default_run_says_how_to_pass_a_local_file(tmp_path, monkeypatch, capsys):
    # An address that refuses connections, and a file name no cache holds: the download must fail.
    monkeypatch.setattr(weights, "IMAGENET_WEIGHTS_URL", "http://127.0.0.1:9/vgg16.h5")
    monkeypatch.setattr(weights, "IMAGENET_WEIGHTS_FILE", f"absent-{os.getpid()}-vgg16.h5")
    out = tmp_path / "run"
    code = cli.main(["train", "--train-data", "synthetic:4", "--epochs", "1", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    for text in ("Could not download the VGG16 ImageNet weights", "--backbone-weights PATH", "keras-fcn convert",
                 "--backbone-weights none", "Received: backbone_weights='imagenet'"):  # fmt: skip
        assert text in err, text
    assert sorted(os.listdir(out)) == ["classes.txt", "config.json"]  # no model; the same command may rerun
    assert "narrower widths have no ImageNet weights" in _help_of_train(capsys)


def _help_of_train(capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_a_run_stuck_on_one_class_warns_each_epoch(tmp_path):
    # A fresh FCN's score layers are zero: every pixel is class 0, and a rate of 1e-9 keeps it there.
    with pytest.warns(SingleClassWarning) as caught:
        train(**RUN, val_data="synthetic:2", epochs=2, steps_per_epoch=2, learning_rate=1e-9,
              output_dir=str(tmp_path / "run"))  # fmt: skip
    messages = [str(w.message) for w in caught if issubclass(w.category, SingleClassWarning)]
    assert len(messages) == 2 and messages[0].startswith("Epoch 1: the model predicted a single class, 0 (background)")
    assert "randomly initialised backbone" in messages[0] and "learning rate" in messages[0] and "255" in messages[0]


def test_all_ignored_masks_warn(tmp_path):
    root = tmp_path / "void"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in "ab":
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.full((32, 32), 255, np.uint8), mode="L").save(root / "masks" / f"{name}.png")
    with pytest.warns(SingleClassWarning, match="no labelled pixel .* all masks 255"):
        train(**{**RUN, "train_data": f"folder:{root}"}, num_classes=3, epochs=1, steps_per_epoch=1,
              output_dir=str(tmp_path / "run"))  # fmt: skip


def test_a_model_predicting_several_classes_does_not_warn(tmp_path):
    start = randomize_heads(he_init(keras_fcn.fcn8s(5, **TINY)), std=0.5)  # many classes from the first step
    start.save(tmp_path / "start.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(**RUN, epochs=1, steps_per_epoch=2, init_from=str(tmp_path / "start.keras"),
                       output_dir=str(tmp_path / "run"))  # fmt: skip
    assert not [w for w in caught if issubclass(w.category, SingleClassWarning)]
    predicted = result.model.predict(np.stack([x for x, _ in data.synthetic(num_examples=2, image_size=(32, 32))]),
                                     verbose=0).argmax(-1)  # fmt: skip
    assert len(np.unique(predicted)) > 1


def test_only_the_newest_checkpoints_remain_and_the_disk_use_is_printed(tmp_path, capsys):
    out = tmp_path / "run"
    train(**{**RUN, "verbose": 2}, epochs=4, steps_per_epoch=1, keep_checkpoints=2, output_dir=str(out))
    assert sorted(os.listdir(out / "checkpoints")) == ["epoch_003.weights.h5", "epoch_004.weights.h5"]
    assert {"best.keras", "final.keras"} <= set(os.listdir(out))
    printed = capsys.readouterr().out
    size = os.path.getsize(out / "checkpoints" / "epoch_004.weights.h5")
    match = re.search(r"one epoch checkpoint .* is ~([0-9.]+) MB; 2 kept, .* up to ~([0-9.]+) MB; .* free", printed)
    assert match, printed
    assert abs(float(match.group(1)) - size / 1e6) <= 0.05 + 0.05 * size / 1e6
    assert abs(float(match.group(2)) - 6 * size / 1e6) <= 0.1 + 0.05 * size / 1e6  # 2 kept + best, final, 2 backups
    kept = [out / "checkpoints" / name for name in os.listdir(out / "checkpoints")] + [out / "best.keras"]
    assert sum(os.path.getsize(path) for path in [*kept, out / "final.keras"]) <= float(match.group(2)) * 1e6
    assert not [name for name in os.listdir(out) if name.startswith(".size-")]  # the measuring file is gone

    train(**RUN, epochs=2, steps_per_epoch=1, keep_checkpoints=0, output_dir=str(tmp_path / "none"))
    assert not (tmp_path / "none" / "checkpoints").exists()
    with pytest.raises(ValueError, match="Received: keep_checkpoints=-1"):
        TrainConfig(keep_checkpoints=-1)


@pytest.fixture
def imbalanced(tmp_path):
    """Masks with known class counts, ignored pixels and a class that never appears (4)."""
    rng = np.random.default_rng(3)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    masks = []
    for i, present in enumerate([(0, 1), (0, 2), (0, 1, 3), (1,)]):
        mask = rng.choice(np.array(present, np.uint8), size=(20 + i, 24), p=None)
        mask[rng.random(mask.shape) < 0.1] = 255
        masks.append(mask)
        Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(mask, mode="L").save(tmp_path / "masks" / f"{i}.png")
    return data.folder(str(tmp_path / "images"), str(tmp_path / "masks"), num_classes=5), masks


def test_median_frequency_weights_match_numpy(imbalanced):
    source, masks = imbalanced
    pixels = np.array([sum(int((m == c).sum()) for m in masks) for c in range(5)])
    image_pixels = np.array([sum(int((m != 255).sum()) for m in masks if (m == c).any()) for c in range(5)])
    counted = class_pixel_counts(source)
    np.testing.assert_array_equal(counted[0], pixels)
    np.testing.assert_array_equal(counted[1], image_pixels)
    freq = pixels[:4] / image_pixels[:4]
    expected = np.append(np.median(freq) / freq, 0.0)
    np.testing.assert_allclose(median_frequency_weights(source), expected, rtol=1e-12)


def test_cli_trains_with_median_frequency_weights(imbalanced, tmp_path, capsys):
    source, _ = imbalanced  # in tmp_path/images and tmp_path/masks
    code = cli.main([
        "train", "--train-data", f"folder:{tmp_path / 'images'},{tmp_path / 'masks'}", "--num-classes", "5",
        "--class-weights", "median-frequency", "--epochs", "1", "--steps-per-epoch", "1", "--crop-size", "16",
        "--backbone-filters", "4", "8", "8", "16", "16", "--fc-units", "16", "--output-dir", str(tmp_path / "run"),
        "--verbose", "2",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    shown = re.search(r"class weights ([0-9., e+-]+)\n", printed).group(1)
    expected = median_frequency_weights(source)
    np.testing.assert_allclose([float(w) for w in shown.split(", ")], expected, rtol=1e-2)
    assert TrainConfig.load(str(tmp_path / "run" / "config.json")).class_weights == "median-frequency"
    assert cli.main(["train", "--class-weights", "inverse", "--output-dir", str(tmp_path / "x")]) == 2
    assert "Received: class_weights='inverse'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="Received: class_weights="):
        TrainConfig(class_weights=["median-frequency", 2.0])
