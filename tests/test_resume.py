"""A training process killed with SIGKILL and started again continues from its last finished epoch."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

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
