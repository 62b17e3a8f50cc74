"""A training process killed with SIGKILL and started again continues from its last finished epoch."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 25


def command(out):
    return [
        sys.executable, "-m", "keras_fcn.cli", "train", "--train-data", "synthetic:16", "--epochs", str(EPOCHS),
        "--steps-per-epoch", "4", "--batch-size", "2", "--crop-size", "32", "--backbone-filters", "4", "8", "8",
        "16", "16", "--fc-units", "16", "--data-option", "image_size=[40,40]", "--optimizer", "adam",
        "--output-dir", out, "--verbose", "2",
    ]  # fmt: skip


@pytest.mark.slow
def test_killed_run_resumes_from_last_epoch(tmp_path):
    out = str(tmp_path / "run")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    metadata = os.path.join(out, "backup", "training_metadata.json")
    process = subprocess.Popen(command(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 90
    backed_up = 0
    while time.time() < deadline and process.poll() is None:
        try:
            with open(metadata) as handle:
                backed_up = json.load(handle)["epoch"]
        except (OSError, ValueError, KeyError):
            pass
        if backed_up >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, "training ended before it could be killed: " + process.communicate()[0][-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    with open(metadata) as handle:
        resume_at = json.load(handle)["epoch"]  # epochs finished and backed up when the process died
    assert 3 <= resume_at < EPOCHS
    assert os.path.exists(os.path.join(out, "checkpoints", f"epoch_{resume_at:03d}.weights.h5"))

    rerun = subprocess.run(command(out), env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f"resuming from the backup after epoch {resume_at}" in rerun.stdout
    with open(os.path.join(out, "history.csv")) as handle:
        epochs = [int(row["epoch"]) for row in csv.DictReader(handle)]
    second_run = epochs[epochs.index(resume_at) :] if resume_at in epochs else []
    assert second_run == list(range(resume_at, EPOCHS))  # no epoch repeated from 0, none skipped
    assert not os.path.exists(os.path.join(out, "backup"))  # finished: the backup is cleared


class Interrupt(Exception):
    pass


def interrupted_run(tmp_path, monkeypatch, after_epochs):
    """Trains until `after_epochs` epochs are backed up, then dies as a killed process would (no cleanup)."""
    import importlib

    train_module = importlib.import_module("keras_fcn.training.loop")
    make_callbacks = train_module.make_callbacks

    class Die(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == after_epochs:
                raise Interrupt

    monkeypatch.setattr(train_module, "make_callbacks", lambda *a, **k: [*make_callbacks(*a, **k), Die()])
    settings = {
        "train_data": "synthetic:8", "epochs": after_epochs + 1, "steps_per_epoch": 1, "batch_size": 2,
        "crop_size": 32, "backbone_filters": (4, 8, 8, 16, 16), "fc_units": 16, "dropout": 0.0,
        "data_options": {"image_size": [40, 40]}, "optimizer": "adam", "verbose": 0,
        "output_dir": str(tmp_path / "run"),
    }  # fmt: skip
    with pytest.raises(Interrupt):
        train_module.train(**settings)
    monkeypatch.setattr(train_module, "make_callbacks", make_callbacks)
    return settings


def test_resumed_run_keeps_a_better_best_model(tmp_path, monkeypatch):
    from keras_fcn.training import train

    settings = interrupted_run(tmp_path, monkeypatch, after_epochs=2)
    out = settings["output_dir"]
    assert os.path.isdir(os.path.join(out, "backup"))
    # The best epoch before the kill scored 1.0 (mean IU's maximum): no later epoch may replace best.keras.
    with open(os.path.join(out, "history.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["0", "1"]
    rows[0]["mean_iu"] = "1.0"
    with open(os.path.join(out, "history.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(out, "best.keras"), "rb") as handle:
        best_before = handle.read()

    result = train(**settings)
    assert result.initial_epoch == 2 and result.history["mean_iu"][-1] < 1.0
    with open(os.path.join(out, "best.keras"), "rb") as handle:
        assert handle.read() == best_before
    assert not [name for name in os.listdir(out) if name.startswith(".")]  # no temporary files left


def test_best_model_is_replaced_atomically(tmp_path, monkeypatch):
    from keras_fcn.training import BestModelCheckpoint

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = str(tmp_path / "best.keras")
    callback = BestModelCheckpoint(path, "val_mean_iu", initial_value_threshold=0.5)
    callback.set_model(model)
    callback.on_epoch_end(0, {"val_mean_iu": 0.5})  # not better than the threshold
    assert not os.path.exists(path)
    callback.on_epoch_end(1, {"val_mean_iu": 0.6})
    with open(path, "rb") as handle:
        saved = handle.read()
    assert callback.best == 0.6

    def dies_mid_save(filepath, *args, **kwargs):
        with open(filepath, "wb") as handle:
            handle.write(b"trunc")
        raise OSError("killed")

    monkeypatch.setattr(model, "save", dies_mid_save)
    with pytest.raises(OSError, match="killed"):
        callback.on_epoch_end(2, {"val_mean_iu": 0.7})
    with open(path, "rb") as handle:
        assert handle.read() == saved  # the old best model is whole
    assert os.listdir(tmp_path) == ["best.keras"]  # and no temporary file is left
