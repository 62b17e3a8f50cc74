"""The output folder of a training run: what may be there before a run starts, what a resumed run reads back
(its last epoch, the best value logged), which worker writes it, and the disk it will take."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_fcn.config import TrainConfig


def is_chief(strategy: tf.distribute.Strategy) -> tuple[bool, str]:
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if not task_type:
        return True, ""
    task_id = resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)
    return chief, f"{task_type}_{task_id}"


def disk_use(model: keras.Model, config: TrainConfig, output_dir: str) -> str:
    """One line on the disk a run takes: the size of one epoch checkpoint and of all the run keeps.

    The model's weights are written once to measure them; a checkpoint also holds the optimizer's slots
    (SGD's momentum, Adam's two moments), added from the trainable weights' size when the optimizer is
    not built yet. The total counts `keep_checkpoints` checkpoints (every epoch for None), best.keras and
    final.keras, and the resume backup (two copies), each about one checkpoint.
    """
    fd, probe = tempfile.mkstemp(prefix=".size-", suffix=".weights.h5", dir=output_dir)
    os.close(fd)
    try:
        model.save_weights(probe)
        checkpoint = os.path.getsize(probe)
    finally:
        os.remove(probe)
    if not model.optimizer.built:
        trainable = sum(math.prod(v.shape) * np.dtype(v.dtype).itemsize for v in model.trainable_weights)
        checkpoint += (2 if config.optimizer == "adam" else (1 if config.momentum else 0)) * trainable
    kept = config.epochs if config.keep_checkpoints is None else min(config.keep_checkpoints, config.epochs)
    total = (kept + 4) * checkpoint
    free = shutil.disk_usage(output_dir).free
    line = (
        f"one epoch checkpoint (weights and optimizer state) is ~{_megabytes(checkpoint)}; {kept} kept, with "
        f"best.keras, final.keras and the resume backup (two copies) the run takes up to ~{_megabytes(total)}; "
        f"{_megabytes(free)} free on that disk"
    )
    if total > free:
        line += " -- NOT ENOUGH: lower --keep-checkpoints or free some space"
    return line


def _megabytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def best_logged(output_dir: str, monitor: str, before_epoch: int) -> float | None:
    """The best (highest) `monitor` value history.csv holds for epochs before `before_epoch`, or None."""
    path = os.path.join(output_dir, "history.csv")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", newline="") as handle:
        values = [
            float(row[monitor])
            for row in csv.DictReader(handle)
            if row.get(monitor) not in (None, "") and int(row["epoch"]) < before_epoch
        ]
    values = [value for value in values if not math.isnan(value)]
    return max(values) if values else None


# Written before the first epoch ends: a folder holding only these has no run worth keeping
# (`workers/` holds the other workers' scratch copies in a multi-worker run).
_STARTUP_ENTRIES = {"config.json", "classes.txt", "logs", "workers"}


# What a run writes; `overwrite=True` deletes these (and nothing else).
_RUN_OUTPUTS = ("backup", "checkpoints", "logs", "best.keras", "final.keras", "history.csv", "classes.txt")


def prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuses a folder holding a finished or foreign run unless `overwrite`; one with a backup resumes."""
    if not os.path.isdir(output_dir):
        return
    if overwrite:
        for name in _RUN_OUTPUTS:
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        return
    if os.path.isdir(os.path.join(output_dir, "backup")):
        return  # a killed run: BackupAndRestore continues it
    held = sorted(
        name
        for name in os.listdir(output_dir)
        if name not in _STARTUP_ENTRIES and not (name == "history.csv" and _only_header(os.path.join(output_dir, name)))
    )
    if held:
        raise ValueError(
            f"The output folder {output_dir} holds a finished run or other files ({', '.join(held[:6])}) and no "
            "backup to resume from; training there would overwrite them. Give a new `output_dir`, "
            "`overwrite=True` (--overwrite) to delete the old run's outputs and start afresh, or continue a "
            f"finished run in a new folder with `init_from` its final.keras. Received: output_dir={output_dir!r}"
        )


def _only_header(path: str) -> bool:
    with open(path, encoding="utf-8") as handle:
        return len(handle.read().splitlines()) <= 1


def resume_epoch(output_dir: str) -> int:
    path = os.path.join(output_dir, "backup", "training_metadata.json")
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as handle:
        return int(json.load(handle).get("epoch", 0))
