"""tf.distribute: MirroredStrategy over two logical CPUs; MultiWorkerMirroredStrategy with two processes."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def run_worker(args, env=None, timeout=120):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.Popen(
        [sys.executable, os.path.join(HERE, "distributed_worker.py"), *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def weights(path):
    with np.load(path) as archive:
        return [archive[key] for key in sorted(archive.files, key=lambda k: int(k.split("_")[1]))]


@pytest.mark.slow
def test_mirrored_two_cpus_matches_one_device(tmp_path):
    process = run_worker(["mirrored", str(tmp_path)])
    output, _ = process.communicate(timeout=150)
    assert process.returncode == 0, output[-3000:]
    assert "replicas 2" in output
    mirrored, single = weights(tmp_path / "mirrored.npz"), weights(tmp_path / "single.npz")
    for a, b in zip(mirrored, single, strict=True):
        # two SGD steps on a batch of 4 split 2 + 2 over the replicas, or whole on one device
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    score_kernels = [w for w in mirrored if w.ndim == 4 and w.shape[-1] == 5]
    assert score_kernels and all(np.abs(w).max() > 0 for w in score_kernels)  # trained: scores start at 0


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multi_worker_two_processes_end_with_identical_weights(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(run_worker(["multi-worker", str(tmp_path)], env={"TF_CONFIG": json.dumps(tf_config)}))
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=150)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-3000:]
        assert "replicas 2" in output
    first, second = weights(tmp_path / "worker0.npz"), weights(tmp_path / "worker1.npz")
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    # Each worker decoded only its own share. The synthetic examples fit the in-memory cache, so each
    # worker decodes (and caches) the indices k, k + 2, k + 4, ... once, and shuffles them after the cache.
    for k in range(2):
        indices = json.loads((tmp_path / f"loaded{k}.json").read_text())
        assert len(indices) >= 4 and len(set(indices)) == len(indices)  # 2 steps x 2 examples, no repeats
        assert [i % 2 for i in indices] == [k] * len(indices), indices
    # the chief wrote the run's files; the other worker its own scratch copy
    assert os.path.exists(tmp_path / "run" / "final.keras")
    assert os.path.exists(tmp_path / "run" / "workers" / "worker_1" / "config.json")
