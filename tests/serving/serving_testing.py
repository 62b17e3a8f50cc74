"""Helpers of the serving tests: tiny FCNs with random score weights, reference answers, images."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import numpy as np
from testing import free_port, wait_until  # noqa: F401 - the serving tests' names for them

NUM_CLASSES = 21


# A VGG16-topology backbone narrow enough for fast tests.
TINY = {"backbone_filters": (4, 8, 16, 32, 32), "fc_units": 32}


def build_test_model(num_classes: int = NUM_CLASSES, seed: int = 0, variant: str = "fcn8s", **kwargs):
    """A narrow FCN whose score layers hold seeded random weights (a fresh FCN scores all zeros)."""
    import keras

    import keras_fcn

    keras.utils.set_random_seed(seed)
    model = keras_fcn.build_fcn(variant, num_classes, **{**TINY, **kwargs})
    randomize_scores(model, seed)
    return model


def randomize_scores(model, seed: int, std: float = 0.5) -> None:
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name.startswith("score"):
            layer.set_weights([rng.normal(0, std, w.shape).astype(np.float32) for w in layer.get_weights()])


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reference(model, images: np.ndarray) -> np.ndarray:
    """The in-process answer: numpy softmax of the Keras model's logits, (N, H, W, C) float64."""
    return softmax(np.asarray(model(np.asarray(images, np.float32), training=False)))


def confident(probabilities: np.ndarray, margin: float = 1e-4) -> np.ndarray:
    """Pixels whose top two probabilities differ by more than `margin` (argmax is well defined)."""
    top = np.sort(probabilities, axis=-1)
    return top[..., -1] - top[..., -2] > margin


def random_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random uint8 images (blobs rather than noise, so JPEG keeps them close)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, max(height // 8, 1), max(width // 8, 1), 3)).astype(np.float32)
    big = np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)[:, :height, :width]
    big = np.pad(big, ((0, 0), (0, height - big.shape[1]), (0, width - big.shape[2]), (0, 0)), mode="edge")
    return big.astype(np.uint8)


class Server:
    """`keras-fcn serve` in a child process over `base_path`; restartable on the same ports."""

    def __init__(self, base_path: str, log_path: str, *flags: str):
        self.base_path, self.log_path, self.flags = base_path, log_path, flags
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.process = None

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> Server:
        import grpc

        command = [sys.executable, "-m", "keras_fcn.cli", "serve", "--model-base-path", self.base_path]
        command += ["--model-name", "fcn", "--port", str(self.grpc_port), "--rest-port", str(self.rest_port)]
        command += list(self.flags)
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        with grpc.insecure_channel(self.grpc_address) as channel:
            wait_until(lambda: self.alive() and available(channel), 180, "the server to serve")
        # gRPC starts first; REST clients must not find its port closed either
        wait_until(lambda: self.alive() and listening(self.rest_port), 60, "the REST port to open")
        return self

    def alive(self) -> bool:
        if self.process.poll() is not None:
            with open(self.log_path) as log:
                raise AssertionError(f"the server exited with {self.process.returncode}:\n{log.read()[-3000:]}")
        return True

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except OSError:
        return False
    return True


def available(channel) -> bool:
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "fcn"
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
    return any(s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE for s in response.model_version_status)


