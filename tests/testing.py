"""Shared test helpers: seeded weights, weight files in Keras's real layouts, tiny model settings."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import h5py
import keras
import numpy as np

# A VGG16-topology backbone narrow enough for fast tests.
TINY = {"backbone_filters": (4, 8, 8, 16, 16), "fc_units": 16}


def load_tool(name: str):
    """The script `tools/<name>.py` imported as a module (tools are scripts, not a package)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def he_init(model: keras.Model, seed: int = 0, bias_std: float = 0.1) -> keras.Model:
    """Gives every kernel He-normal weights and every bias small random values, seeded.

    Keras's default Glorot init shrinks activations through VGG's 16 layers until the outputs are nearly
    constant, which would make equality tests weak; He scaling keeps them of order one.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        arrays = layer.get_weights()
        if not arrays:
            continue
        new = []
        for array in arrays:
            if array.ndim >= 2:
                fan_in = int(np.prod(array.shape[:-1]))
                new.append(rng.standard_normal(array.shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in)))
            else:
                new.append(rng.standard_normal(array.shape, dtype=np.float32) * np.float32(bias_std))
        layer.set_weights(new)
    return model


def randomize_heads(model: keras.Model, seed: int = 0, std: float = 0.05) -> keras.Model:
    """Seeded non-zero weights for the score layers (zero-initialised), so that outputs differ from 0."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name.startswith("score_"):
            layer.set_weights([rng.normal(0, std, w.shape).astype("float32") for w in layer.get_weights()])
    return model


def write_legacy_h5(model: keras.Model, path: str | os.PathLike, weight_name: str = "{layer}_{kind}_1:0") -> str:
    """Writes `model`'s weights in the layout of Keras's `vgg16_weights_tf_dim_ordering_tf_kernels.h5`.

    Root attribute `layer_names` lists every layer (input, pools and flatten too); each layer's group has
    the attribute `weight_names` and holds its arrays as datasets named like `block1_conv1_W_1:0`.
    """
    path = os.fspath(path)
    with h5py.File(path, "w") as f:
        names = [layer.name for layer in model.layers]
        # Keras 2 stored these name lists as fixed-length byte strings (numpy dtype "S").
        f.attrs["layer_names"] = np.array([n.encode("utf8") for n in names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.0.8"
        for layer in model.layers:
            group = f.create_group(layer.name)
            weight_names = []
            for kind, array in zip(("W", "b"), layer.get_weights(), strict=False):
                weight = weight_name.format(layer=layer.name, kind=kind)
                group.create_dataset(weight, data=array)
                weight_names.append(weight.encode("utf8"))
            group.attrs["weight_names"] = np.array(weight_names, dtype="S") if weight_names else np.array([], "S")
    return path


def to_numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def relative_error(got, expected) -> float:
    """max |got - expected| divided by max |expected| (the output's scale)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-12))


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str):
    """Polls `condition` until it is truthy (gRPC errors count as not yet); its value, or TimeoutError."""
    import grpc

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if value:
                return value
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def run_with_peak_rss(command: list[str], timeout: float = 600, **kwargs) -> tuple[int, str, float]:
    """Runs `command`: (exit code, stdout and stderr, peak resident MiB of its process tree sampled every 0.1 s)."""
    import psutil

    with open(os.devnull, "rb") as stdin:
        process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)
    root, peak, chunks = psutil.Process(process.pid), 0, []
    reader = threading.Thread(target=lambda: chunks.append(process.stdout.read()), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            raise TimeoutError(f"{command[:3]} ran past {timeout} s")
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass  # a process of the tree ended between the listing and the reading
        time.sleep(0.1)
    reader.join()
    return process.returncode, b"".join(chunks).decode(errors="replace"), peak / 2**20
