"""The reference's VOC recipes: what they hold, and two steps of each on generated SBD/VOC trees."""

import json
import os

import keras
import numpy as np
import pytest
from data_trees import make_sbd, make_voc
from testing import TINY, he_init, write_legacy_h5

import keras_fcn
from keras_fcn import cli
from keras_fcn.backbone import vgg16_classifier
from keras_fcn.data.sources import SEG11VALID
from keras_fcn.optimizers import CaffeSGD
from keras_fcn.recipes import RECIPES, recipe_config, train_recipe

with open(SEG11VALID) as handle:
    VALID_IDS = handle.read().split()[:2]  # two real seg11valid ids: in VOC's list and in SBD train
SBD_ONLY = ["2008_900001", "2008_900002", "2008_900003", "2008_900004"]
LEARNING_RATES = {"voc-fcn32s": 1e-10, "voc-fcn16s": 1e-12, "voc-fcn8s": 1e-14, "voc-fcn8s-atonce": 1e-10}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_voc(str(root / "VOC2012"), {"seg11valid": VALID_IDS}, size=(20, 28))
    make_sbd(str(root / "sbd"), {"train": VALID_IDS + SBD_ONLY}, size=(18, 22))
    classifier = he_init(vgg16_classifier(TINY["backbone_filters"], TINY["fc_units"], classes=10))
    weights = write_legacy_h5(classifier, root / "vgg16_tiny.h5")
    return {"sbd": f"sbd:{root / 'sbd'}", "voc": f"voc:{root / 'VOC2012'}", "weights": weights, "vgg": classifier}


def two_steps(trees, tmp_path, **overrides):
    """The overrides a test run needs: the generated data, tiny widths, two iterations, a temp output."""
    return {
        "train_data": trees["sbd"], "val_data": trees["voc"], "epochs": 1, "steps_per_epoch": 2,
        "output_dir": str(tmp_path / "run"), "verbose": 2, **TINY, **overrides,
    }  # fmt: skip


def check_reference_run(result, name, out):
    """What every recipe run must have done: the reference's solver, loss, geometry and data."""
    model, config = result.train.model, result.train.config
    optimizer = model.optimizer
    assert isinstance(optimizer, CaffeSGD)
    assert (optimizer.momentum, optimizer.l2_weight_decay, optimizer.bias_lr_mult, optimizer.bias_decay_mult) == (
        0.99, 5e-4, 2.0, 0.0,
    )  # fmt: skip
    assert float(optimizer.learning_rate) == pytest.approx(LEARNING_RATES[name])
    assert int(optimizer.iterations) == 2
    assert model.loss.normalize is False  # the summed (unnormalized) loss
    assert model.get_layer("conv1_1_pad").padding == ((100, 100), (100, 100))  # the Caffe geometry
    upsampling = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2DTranspose)]
    assert upsampling and not any(layer.trainable for layer in upsampling)
    assert model.get_layer("drop6").rate == 0.5
    # SBD train less the two seg11valid ids; seg11valid to validate and score.
    assert f"{len(SBD_ONLY)} training examples from sbd:train without seg11valid (2 left out)" in out
    assert f"{len(VALID_IDS)} validation examples from voc:seg11valid" in out
    assert result.scores["num_images"] == len(VALID_IDS)
    assert f"{RECIPES[name].paper_mean_iu:8.1f}" in out.split("final model on voc:seg11valid")[1]
    with open(os.path.join(config.output_dir, "config.json")) as handle:
        saved = json.load(handle)
    assert (saved["batch_size"], saved["crop_size"], saved["flip"]) == (1, None, False)


def assert_copied(source, target, names, atol=1e-6):
    """Layers of `target` hold `source`'s weights (two steps at a rate of 1e-10 or less move them < atol)."""
    for name in names:
        for have, want in zip(target.get_layer(name).get_weights(), source.get_layer(name).get_weights(), strict=True):
            np.testing.assert_allclose(have, want, atol=atol, err_msg=name)


def test_recipes_hold_the_reference_solver_and_length():
    for name, recipe in RECIPES.items():
        config = recipe_config(name)
        assert (config.optimizer, config.momentum, config.weight_decay, config.weight_decay_mode) == (
            "sgd", 0.99, 5e-4, "caffe",
        )  # fmt: skip
        assert config.learning_rate == LEARNING_RATES[name] and config.normalize_loss is False
        assert (config.batch_size, config.crop_size, config.scale_range, config.flip) == (1, None, (1.0, 1.0), False)
        iterations = config.epochs * config.steps_per_epoch
        assert iterations == (300_000 if name == "voc-fcn8s-atonce" else 100_000)
        assert (config.train_split, config.train_exclude, config.val_split) == ("train", "seg11valid", "seg11valid")
        staged = recipe.starts_from is not None
        assert (config.backbone_weights is None) == staged and bool(config.init_from) == staged
    assert recipe_config("voc-fcn8s").init_from == recipe_config("voc-fcn16s").output_dir + "/final.keras"
    with pytest.raises(ValueError, match="Received: recipe='voc-fcn4s'"):
        recipe_config("voc-fcn4s")


@pytest.mark.parametrize("name", ["voc-fcn32s", "voc-fcn8s-atonce"])
def test_recipe_from_imagenet_weights_runs_two_steps(trees, tmp_path, capsys, name):
    result = train_recipe(name, **two_steps(trees, tmp_path, backbone_weights=trees["weights"]))
    out = capsys.readouterr().out
    check_reference_run(result, name, out)
    assert f"recipe {name}:" in out and "(recipe: 'imagenet')" in out  # printed, with the override marked
    model = result.train.model
    assert_copied(trees["vgg"], model, ["block1_conv1", "block5_conv3"])
    fc6 = trees["vgg"].get_layer("fc1").get_weights()[0].reshape(model.get_layer("fc6").get_weights()[0].shape)
    np.testing.assert_allclose(model.get_layer("fc6").get_weights()[0], fc6, atol=1e-6)
    if name == "voc-fcn8s-atonce":
        assert (model.get_layer("scale_pool4").scale, model.get_layer("scale_pool3").scale) == (0.01, 0.0001)


def staged_source(tmp_path, variant):
    """A saved model of the previous stage with random (seeded, non-zero) weights in every layer."""
    model = he_init(keras_fcn.build_fcn(variant, 21, geometry="caffe", **TINY), seed=3)
    path = str(tmp_path / f"{variant}.keras")
    model.save(path)
    return model, path


def test_voc_fcn16s_recipe_from_the_command_line_starts_from_a_32s(trees, tmp_path, capsys):
    source, path = staged_source(tmp_path, "fcn32s")
    flags = ["--train-data", trees["sbd"], "--val-data", trees["voc"], "--init-from", path, "--epochs", "1",
             "--steps-per-epoch", "2", "--backbone-filters", *map(str, TINY["backbone_filters"]), "--fc-units",
             str(TINY["fc_units"]), "--output-dir", str(tmp_path / "run"), "--verbose", "2"]  # fmt: skip
    assert cli.main(["train", "--recipe", "voc-fcn16s", *flags]) == 0
    out = capsys.readouterr().out
    assert "  epochs             1   (recipe: 25)" in out and "  learning_rate      1e-12\n" in out
    model = keras.saving.load_model(str(tmp_path / "run" / "final.keras"), compile=False)
    assert_copied(source, model, ["block1_conv1", "block4_conv3", "fc6", "fc7", "score_fr"])
    # score_pool4 is new in FCN-16s: it starts at zero (two tiny steps leave it there).
    assert np.max(np.abs(model.get_layer("score_pool4").get_weights()[0])) < 1e-6


def test_voc_fcn8s_recipe_starts_from_a_16s(trees, tmp_path, capsys):
    source, path = staged_source(tmp_path, "fcn16s")
    result = train_recipe("voc-fcn8s", **two_steps(trees, tmp_path, init_from=path))
    check_reference_run(result, "voc-fcn8s", capsys.readouterr().out)
    assert_copied(source, result.train.model, ["block3_conv3", "fc7", "score_fr", "score_pool4"])
    assert np.max(np.abs(result.train.model.get_layer("score_pool3").get_weights()[0])) < 1e-6


def test_staged_recipe_without_its_previous_model_is_one_line_exit_2(tmp_path, capsys):
    missing = str(tmp_path / "none" / "final.keras")
    code = cli.main(["train", "--recipe", "voc-fcn8s", "--init-from", missing, "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "keras-fcn train --recipe voc-fcn16s" in err and f"Received: init_from={missing!r}" in err
    assert not os.path.exists(tmp_path / "o")
    assert cli.main(["train", "--recipe", "voc-fcn32s", "--config", str(tmp_path / "c.json")]) == 2


def test_without_leaves_listed_ids_out(trees, tmp_path):
    from keras_fcn import data

    sbd = data.from_spec(trees["sbd"], "train")
    kept = data.without(sbd, "seg11valid")
    assert [os.path.basename(image) for image, _ in kept.pairs] == [f"{i}.jpg" for i in SBD_ONLY]
    listed = tmp_path / "all.txt"
    listed.write_text("\n".join(VALID_IDS + SBD_ONLY) + "\n")
    with pytest.raises(data.DataError, match="No examples of sbd:train are left"):
        data.without(sbd, str(listed))
    with pytest.raises(ValueError, match="Only file sources"):
        data.without(data.synthetic(num_examples=2), "seg11valid")
