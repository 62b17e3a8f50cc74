"""Training end to end on tiny synthetic data: loss falls, mean IU rises, files are written, config round-trips."""

import json
import os
import re

import keras
import numpy as np
import pytest
from data_trees import make_folder, save_palette_png
from test_metrics import reference_scores

import keras_fcn
from keras_fcn import cli, data
from keras_fcn.evaluation import evaluate
from keras_fcn.training import TrainConfig, train

TINY = {
    "backbone_filters": (4, 8, 8, 16, 16),
    "fc_units": 16,
    "dropout": 0.0,
    "data_options": {"image_size": [48, 48]},
    "batch_size": 4,
    "crop_size": 32,
    "verbose": 0,
}


def test_short_fit_lowers_loss_and_raises_mean_iu(tmp_path):
    held_out = data.synthetic(num_examples=12, image_size=(48, 48), num_classes=3, seed=99)
    small = {**TINY, "backbone_filters": (8, 16, 16, 32, 32), "fc_units": 32}
    fresh = keras_fcn.fcn8s(3, backbone_filters=small["backbone_filters"], fc_units=32)
    before = evaluate(fresh, held_out)  # all-zero logits: everything "background"
    result = train(
        train_data="synthetic:128", num_classes=3, epochs=6, steps_per_epoch=15, optimizer="adam",
        learning_rate=3e-3, output_dir=str(tmp_path / "run"), **small,
    )  # fmt: skip
    after = evaluate(result.model, held_out)
    loss = result.history["loss"]
    assert loss[-1] < 0.7 * loss[0]
    assert after["mean_iu"] > before["mean_iu"] + 0.15
    assert result.history["mean_iu"][-1] > result.history["mean_iu"][0]


def test_outputs_and_config_round_trip(tmp_path):
    out = str(tmp_path / "run")
    result = train(
        train_data="synthetic:16", val_data="synthetic:4", epochs=2, steps_per_epoch=2, optimizer="sgd",
        lr_schedule="poly", output_dir=out, variant="fcn16s", **TINY,
    )  # fmt: skip
    names = sorted(os.listdir(out))
    for expected in ("best.keras", "final.keras", "config.json", "history.csv", "classes.txt", "logs"):
        assert expected in names
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["epoch_001.weights.h5", "epoch_002.weights.h5"]
    assert not os.path.exists(os.path.join(out, "backup"))  # removed after a finished run
    saved = TrainConfig.load(os.path.join(out, "config.json"))
    assert saved == result.config and saved.variant == "fcn16s" and saved.backbone_filters == (4, 8, 8, 16, 16)
    with open(os.path.join(out, "classes.txt")) as handle:
        assert handle.read().split() == ["background", "disc", "square", "triangle", "cross"]
    reloaded = keras.saving.load_model(os.path.join(out, "final.keras"), compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (1, 40, 56, 3)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), result.model.predict(x, verbose=0), atol=1e-5)


def test_config_checks():
    with pytest.raises(ValueError, match="Received: variant='fcn4s'"):
        TrainConfig(variant="fcn4s")
    with pytest.raises(ValueError, match="Received: strategy='tpu'"):
        TrainConfig(strategy="tpu")
    with pytest.raises(ValueError, match=r"Unknown TrainConfig keys \['colour'\]"):
        TrainConfig.from_dict({"colour": 1})
    assert TrainConfig(backbone_filters=[1, 2, 3, 4, 5]).backbone_filters == (1, 2, 3, 4, 5)


def test_bad_mask_during_training_names_the_file(tmp_path):
    make_folder(str(tmp_path), ["a", "b", "c"], size=(40, 40))
    save_palette_png(tmp_path / "masks" / "b.png", np.full((40, 40), 9, np.uint8))
    with pytest.raises(data.DataError, match=r"Mask .*b\.png has values outside \[0, 4\).*values=\[9\]"):
        train(
            train_data=f"folder:{tmp_path}", num_classes=4, epochs=1, steps_per_epoch=3,
            output_dir=str(tmp_path / "run"), **{**TINY, "data_options": {}, "batch_size": 1},
        )  # fmt: skip


def test_cli_train_evaluate_predict(tmp_path, capsys):
    out = str(tmp_path / "run")
    code = cli.main([
        "train", "--train-data", "synthetic:16", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
        "--crop-size", "32", "--backbone-filters", "4", "8", "8", "16", "16", "--fc-units", "16",
        "--data-option", "image_size=[40,40]", "--output-dir", out, "--verbose", "0", "--no-flip",
    ])  # fmt: skip
    assert code == 0
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["flip"] is False and config["data_options"] == {"image_size": [40, 40]}
    model_path = os.path.join(out, "final.keras")

    capsys.readouterr()
    report = str(tmp_path / "m.json")
    code = cli.main(["evaluate", "--model", model_path, "--data", "synthetic:5", "--data-option",
                     "image_size=[40,40]", "--json", report])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "mean IU" in printed and "triangle" in printed
    # the same numbers from the model's own predictions and the reference formulas
    model = keras.saving.load_model(model_path, compile=False)
    source = data.from_spec("synthetic:5", "val", image_size=[40, 40])
    images, masks = (np.stack(a) for a in zip(*source, strict=True))
    predictions = model.predict(images.astype("float32"), verbose=0).argmax(-1)
    _, expected = reference_scores(masks, predictions, 5)
    got = json.load(open(report))
    for key in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-9)

    image_path = str(tmp_path / "shape.png")
    from PIL import Image

    Image.fromarray(images[0]).save(image_path)
    code = cli.main(["predict", "--model", model_path, image_path, "--output", str(tmp_path / "pred")])
    assert code == 0
    classes = np.asarray(Image.open(tmp_path / "pred" / "shape_classes.png"))
    assert Image.open(tmp_path / "pred" / "shape_classes.png").mode == "P"
    np.testing.assert_array_equal(classes, predictions[0])
    overlay_image = Image.open(tmp_path / "pred" / "shape_overlay.png")
    assert overlay_image.width > 40 and overlay_image.height >= 40  # image plus a legend strip


def test_cli_reports_user_errors(tmp_path, capsys):
    code = cli.main(["evaluate", "--model", str(tmp_path / "none.keras"), "--data", "synthetic"])
    assert code == 2 and "Model file not found" in capsys.readouterr().err
    code = cli.main(["train", "--train-data", "voc:" + str(tmp_path / "missing"), "--output-dir", str(tmp_path)])
    assert code == 2 and "PASCAL VOC root folder not found" in capsys.readouterr().err
    code = cli.main(["train", "--optimizer", "rmsprop", "--output-dir", str(tmp_path)])
    assert code == 2 and "Received: optimizer='rmsprop'" in capsys.readouterr().err


@pytest.mark.parametrize("settings", [{"mixed_precision": True}, {"jit_compile": True}])
def test_mixed_precision_and_xla_runs(tmp_path, settings):
    before = keras.mixed_precision.global_policy().name
    result = train(train_data="synthetic:8", epochs=1, steps_per_epoch=2, output_dir=str(tmp_path), **TINY, **settings)
    assert keras.mixed_precision.global_policy().name == before  # the global policy is restored
    assert np.isfinite(result.history["loss"]).all()
    x = np.zeros((1, 32, 32, 3), "float32")
    assert result.model(x).dtype == "float32"  # logits stay float32
    if settings.get("mixed_precision"):
        assert result.model.get_layer("block1_conv1").compute_dtype in ("bfloat16", "float16")


def test_class_weights_must_match_the_classes(tmp_path):
    with pytest.raises(ValueError, match=r"one weight per class \(3\). Received: class_weights=\(1.0, 2.0\)"):
        train(train_data="synthetic:4", num_classes=3, class_weights=(1.0, 2.0), epochs=1,
              output_dir=str(tmp_path / "run"), **TINY)  # fmt: skip
    assert not os.path.exists(tmp_path / "run" / "history.csv")  # refused before training


def test_cli_evaluate_names_a_bad_mask(tmp_path, capsys):
    make_folder(str(tmp_path), ["a", "b"], size=(16, 16))
    save_palette_png(tmp_path / "masks" / "b.png", np.full((16, 16), 9, np.uint8))
    model_path = str(tmp_path / "m.keras")
    keras_fcn.fcn32s(4, backbone_filters=TINY["backbone_filters"], fc_units=16).save(model_path)
    code = cli.main(["evaluate", "--model", model_path, "--data", f"folder:{tmp_path}"])
    assert code == 2 and re.search(r"Mask .*b\.png has values outside \[0, 4\)", capsys.readouterr().err)


def test_a_finished_or_foreign_run_is_refused_unless_overwrite(tmp_path, capsys):
    out = str(tmp_path / "run")
    settings = {"train_data": "synthetic:8", "epochs": 1, "steps_per_epoch": 1, "output_dir": out, **TINY}
    train(**settings)
    before = {name: open(os.path.join(out, name), "rb").read() for name in ("history.csv", "config.json")}
    with pytest.raises(ValueError, match="holds a finished run.*Received: output_dir="):
        train(**{**settings, "epochs": 2})
    after = {name: open(os.path.join(out, name), "rb").read() for name in ("history.csv", "config.json")}
    assert after == before  # nothing touched

    # the saved config, rerun from the command line: refused, then started afresh with --overwrite
    args = ["train", "--config", os.path.join(out, "config.json"), "--epochs", "2"]
    assert cli.main(args) == 2 and "--overwrite" in capsys.readouterr().err
    stale = os.path.join(out, "checkpoints", "epoch_009.weights.h5")
    open(stale, "wb").close()
    assert cli.main([*args, "--overwrite"]) == 0
    with open(os.path.join(out, "history.csv")) as handle:
        assert [row.split(",")[0] for row in handle.read().split()[1:]] == ["0", "1"]
    assert not os.path.exists(stale)  # the old run's outputs were deleted, not mixed with the new ones
    assert TrainConfig.load(os.path.join(out, "config.json")).overwrite is False  # never saved as True

    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"\(todo\.txt\)"):
        train(**{**settings, "output_dir": str(foreign)})
    early = tmp_path / "early"  # a run that failed before its first epoch left only its config
    early.mkdir()
    TrainConfig().save(str(early / "config.json"))
    assert train(**{**settings, "output_dir": str(early)}).initial_epoch == 0
