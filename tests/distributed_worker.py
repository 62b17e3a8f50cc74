"""Run by test_distributed.py in subprocesses: trains two steps and saves the final weights.

python distributed_worker.py mirrored OUT_DIR     # 2 logical CPUs: mirrored run and single-device run
python distributed_worker.py multi-worker OUT_DIR # one worker of a cluster given by TF_CONFIG
"""

import json
import os
import sys

import numpy as np
import tensorflow as tf


def tiny(output_dir, **overrides):
    settings = dict(
        train_data="synthetic:32", data_options={"image_size": [40, 40]}, backbone_filters=(4, 8, 8, 16, 16),
        fc_units=16, dropout=0.0, batch_size=4, crop_size=32, scale_range=(1.0, 1.0), epochs=1,
        steps_per_epoch=2, optimizer="sgd", momentum=0.9, learning_rate=0.05, weight_decay=0.0, seed=3,
        output_dir=output_dir, verbose=0,
    )  # fmt: skip
    return {**settings, **overrides}


def save(result, path):
    np.savez(path, *[w.numpy() if hasattr(w, "numpy") else np.asarray(w) for w in result.model.weights])


def main(mode, out):
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_fcn.training import train

        # Every batch holds all 4 examples and augmentation is off, so both runs see the same data
        # whatever order the examples come in: two SGD steps must give the same weights.
        same_data = {"train_data": "synthetic:4", "flip": False, "crop_size": 40}
        devices = ("/cpu:0", "/cpu:1")
        mirrored = train(**tiny(os.path.join(out, "mirrored"), strategy="mirrored", devices=devices, **same_data))
        print("replicas", mirrored.model.distribute_strategy.num_replicas_in_sync, flush=True)
        save(mirrored, os.path.join(out, "mirrored.npz"))
        single = train(**tiny(os.path.join(out, "single"), **same_data))
        save(single, os.path.join(out, "single.npz"))
    else:
        from keras_fcn.data.synthetic import SyntheticShapes
        from keras_fcn.training import train

        # Record which examples this worker decodes. 64 examples: one epoch is 32 per worker, more than the
        # 2 steps x 2 examples and what the pipeline reads ahead, so a worker never reaches a second epoch.
        loaded, load = [], SyntheticShapes.load
        SyntheticShapes.load = lambda self, i: loaded.append(int(i)) or load(self, i)
        result = train(**tiny(os.path.join(out, "run"), strategy="multi-worker", train_data="synthetic:64"))
        index = result.model.distribute_strategy.cluster_resolver.task_id
        print("replicas", result.model.distribute_strategy.num_replicas_in_sync, flush=True)
        save(result, os.path.join(out, f"worker{index}.npz"))
        with open(os.path.join(out, f"loaded{index}.json"), "w") as handle:
            json.dump(loaded, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
