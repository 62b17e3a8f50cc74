"""Fixtures of the serving tests: tiny FCNs with random score weights, and the server under test.

The conformance suite talks to whatever server `KERAS_FCN_SERVING_GRPC` / `KERAS_FCN_SERVING_REST`
name (a real `tensorflow_model_server` started with `--model_config_file` over the base path in
`KERAS_FCN_SERVING_BASE_PATH`, model `KERAS_FCN_SERVING_MODEL`, version policy `all`); when they
are unset it starts `keras-fcn serve` itself on free ports.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

import grpc
import pytest
from serving_testing import build_test_model, free_port, wait_until


@dataclasses.dataclass
class Target:
    """The server under test and the Keras models behind its versions."""

    grpc_address: str
    rest_url: str
    model_name: str
    base_path: str
    models: dict  # version -> Keras model
    channel: grpc.Channel

    @property
    def latest(self) -> int:
        return max(self.models)

    def available_versions(self) -> set[int]:
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        response = model_service_pb2_grpc.ModelServiceStub(self.channel).GetModelStatus(request, timeout=10)
        available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return {s.version for s in response.model_version_status if s.state == available}


def write_models_config(path: str, name: str, base_path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(
            "model_config_list {\n  config {\n"
            f'    name: "{name}"\n    base_path: "{base_path}"\n    model_platform: "tensorflow"\n'
            "    model_version_policy { all {} }\n  }\n}\n"
        )


@pytest.fixture(scope="session")
def target(tmp_path_factory):
    from keras_fcn.export import export_saved_model

    grpc_address = os.environ.get("KERAS_FCN_SERVING_GRPC")
    base_path = os.environ.get("KERAS_FCN_SERVING_BASE_PATH")
    base_path = base_path or str(tmp_path_factory.mktemp("serving") / "fcn")
    name = os.environ.get("KERAS_FCN_SERVING_MODEL", "fcn")
    models = {}
    for seed, variant in ((1, "fcn8s"), (2, "fcn16s")):  # two versions with different weights
        model = build_test_model(seed=seed, variant=variant)
        models[export_saved_model(model, base_path, verbose=False).version] = model
    process = None
    if grpc_address:
        rest_url = os.environ.get("KERAS_FCN_SERVING_REST", "http://localhost:8501")
    else:
        config = str(tmp_path_factory.mktemp("config") / "models.config")
        write_models_config(config, name, base_path)
        grpc_port, rest_port = free_port(), free_port()
        grpc_address, rest_url = f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}"
        command = [sys.executable, "-m", "keras_fcn.cli", "serve", "--model-config-file", config]
        command += ["--port", str(grpc_port), "--rest-port", str(rest_port)]
        command += ["--file-system-poll-wait-seconds", "0.5"]
        log_file = open(tmp_path_factory.mktemp("log") / "server.log", "w+")  # noqa: SIM115
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    channel = grpc.insecure_channel(
        grpc_address,
        options=[("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)],
    )
    served = Target(grpc_address, rest_url, name, base_path, models, channel)
    try:
        wait_until(lambda: set(models) <= served.available_versions(), 180, "the exported versions")
        yield served
    finally:
        channel.close()
        if process is not None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
            log_file.seek(0)
            assert process.returncode == 0, log_file.read()[-4000:]
