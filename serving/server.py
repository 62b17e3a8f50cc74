"""A local server speaking TensorFlow Serving's gRPC and REST APIs over exported SavedModels.

It runs where `tensorflow_model_server` cannot be installed (tests, laptops without Docker) and
answers as TF Serving does: the same protos (`tensorflow_serving.apis`), version folders, status
codes and JSON. `keras-fcn serve` wraps `ModelServer`; its main flags also take the spelling of
`tensorflow_model_server` (`--model_base_path`, `--rest_api_port`, ...), and it reads the same
config files: models (`--model_config_file`, re-read every `--model_config_file_poll_wait_seconds`),
batching, TLS (`--ssl_config_file`) and monitoring (`--monitoring_config_file`).

Example:
>>> with ModelServer(model_name="fcn", model_base_path="models/fcn", port=0, rest_port=0) as server:
...     print(server.grpc_address)  # doctest: +SKIP
127.0.0.1:40123
"""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from . import monitoring
from .api import predict as predict_lib
from .api.rest import DEFAULT_MAX_QUEUED, DEFAULT_THREADS, DEFAULT_TIMEOUT_MS, MAX_BODY_BYTES
from .api.service import ServingService
from .errors import log
from .models.batching import BatchScheduler
from .models.config import (
    BatchingParameters,
    model_config,
    parse_batching_parameters,
    read_model_config_file,
)
from .models.config_watch import ConfigFileWatcher
from .models.manager import ModelManager
from .transport import tls
from .transport.grpc_options import MAX_MESSAGE_BYTES, server_options  # noqa: F401 - the limit stays importable here
from .transport.grpc_server import ModelServicer, PredictionServicer, RequestGuard
from .transport.rest_server import DEFAULT_MAX_CONNECTIONS, RestFront
from .wire.tensor_codec import MAX_REQUEST_ELEMENTS


class ModelServer:
    """TF Serving's gRPC (PredictionService, ModelService) and REST APIs for local use.

    Args:
        model_name: the model's name (with `model_base_path`), or None with `model_config_file`.
        model_base_path: a folder of numeric version folders; the latest version is served.
        model_config_file: a `ModelServerConfig` text file (several models, version policies, labels).
        port: gRPC port; 0 picks a free one (see `grpc_port`).
        rest_port: REST port; 0 picks a free one, None turns REST off.
        host: the address to bind; 127.0.0.1 unless told otherwise.
        enable_batching: batch concurrent requests to the same signature.
        batching_parameters: a `BatchingParameters` or the path of a text file; None: defaults.
        poll_seconds: how often the base paths are scanned for new versions.
        grpc_threads: worker threads of the gRPC server (`--grpc_max_threads`).
        rest_threads: worker threads of the REST server (`--rest_api_num_threads`).
        max_queued_requests: requests that may wait for a worker; past them gRPC answers
            RESOURCE_EXHAUSTED and REST 429.
        max_request_elements: the most values one Predict request may hold: declared by the tensors of a
            gRPC request, counted in a REST body before it is parsed.
        rest_timeout_ms: REST requests not answered in this time get 504 (`--rest_api_timeout_in_ms`);
            also the time a REST request's headers, then its body, may take to arrive.
        rest_max_body_bytes: larger REST bodies are refused with 413 before they are read.
        rest_max_connections: open REST connections at most; one more is answered 503 and closed.
        enable_model_management: answer ModelService's HandleReloadConfigRequest, which loads any path a
            client names; False answers it UNIMPLEMENTED (see the README's security section).
        model_config_file_poll_wait_seconds: with `model_config_file`, re-read it this often and
            switch to the models it lists; 0: read once at start (TF Serving's default).
        grpc_channel_arguments: gRPC server options overriding the defaults, as TF Serving's
            `key=value,key=value` text or a `{key: value}` mapping.
        grpc_socket_path: also serve gRPC on this Unix socket (with the same credentials).
        monitoring_config_file: a `MonitoringConfig` text file; with `prometheus_config { enable: true }`
            the REST port serves the metrics in Prometheus's format (see `monitoring`).
        ssl_config_file: an `SSLConfig` text file: TLS on gRPC, optionally requiring client
            certificates (see `tls`).
        enable_signature_method_name_check: refuse signatures whose method name does not match the
            request kind (TF Serving's flag of that name; off by default, as there).

    Raises:
        ValueError: on a missing model name/base path, a bad configuration file or option.
        RuntimeError: from `start()` when a port cannot be bound, or when a model none of whose
            versions loads (`N model(s) did not become available: ...`, as TF Serving fails to start).
    """

    def __init__(
        self,
        model_name: str | None = None,
        model_base_path: str | None = None,
        *,
        model_config_file: str | None = None,
        port: int = 8500,
        rest_port: int | None = 8501,
        host: str = "127.0.0.1",
        enable_batching: bool = False,
        batching_parameters: BatchingParameters | str | None = None,
        poll_seconds: float = 1.0,
        grpc_threads: int = 16,
        rest_threads: int = DEFAULT_THREADS,
        max_queued_requests: int = DEFAULT_MAX_QUEUED,
        max_request_elements: int = MAX_REQUEST_ELEMENTS,
        rest_timeout_ms: int = DEFAULT_TIMEOUT_MS,
        rest_max_body_bytes: int = MAX_BODY_BYTES,
        rest_max_connections: int = DEFAULT_MAX_CONNECTIONS,
        enable_model_management: bool = True,
        model_config_file_poll_wait_seconds: float = 0.0,
        grpc_channel_arguments: str | dict | None = None,
        grpc_socket_path: str | None = None,
        monitoring_config_file: str | None = None,
        ssl_config_file: str | None = None,
        enable_signature_method_name_check: bool = False,
    ):
        if model_config_file:
            configs = read_model_config_file(model_config_file)
        elif model_name and model_base_path:
            configs = [model_config(model_name, model_base_path)]
        else:
            raise ValueError(
                "give model_name and model_base_path, or model_config_file. "
                f"Received: model_name={model_name!r}, model_base_path={model_base_path!r}"
            )
        limits = {
            "grpc_threads": grpc_threads,
            "rest_threads": rest_threads,
            "max_request_elements": max_request_elements,
            "rest_timeout_ms": rest_timeout_ms,
            "rest_max_body_bytes": rest_max_body_bytes,
            "rest_max_connections": rest_max_connections,
        }
        limits["max_queued_requests"] = max_queued_requests
        for key, value in limits.items():
            least = 0 if key == "max_queued_requests" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{key} must be an integer >= {least}. Received: {key}={value!r}")
        if isinstance(batching_parameters, str):
            with open(batching_parameters, encoding="utf-8") as f:
                batching_parameters = parse_batching_parameters(f.read())
        self.batching_parameters = (batching_parameters or BatchingParameters()) if enable_batching else None
        self._configs, self._host, self._ports = configs, host, (port, rest_port)
        self._poll_seconds, self._limits = poll_seconds, limits
        if model_config_file_poll_wait_seconds < 0 or (model_config_file_poll_wait_seconds and not model_config_file):
            raise ValueError(
                "model_config_file_poll_wait_seconds must be >= 0 and needs model_config_file. "
                f"Received: model_config_file_poll_wait_seconds={model_config_file_poll_wait_seconds}, "
                f"model_config_file={model_config_file!r}"
            )
        self._config_file, self._config_poll_seconds = model_config_file, model_config_file_poll_wait_seconds
        self._grpc_options = server_options(grpc_channel_arguments)
        self.grpc_socket_path = grpc_socket_path or None
        self.prometheus_path = None
        if monitoring_config_file:
            self.prometheus_path = monitoring.read_monitoring_config(monitoring_config_file)
        if self.prometheus_path and rest_port is None:
            raise ValueError(
                "the Prometheus endpoint of monitoring_config_file is served on the REST port: give a rest_port. "
                f"Received: monitoring_config_file={monitoring_config_file!r}, rest_port=None"
            )
        self._ssl_config = tls.read_ssl_config(ssl_config_file) if ssl_config_file else None
        self.metrics = monitoring.Metrics()
        self._method_name_check = enable_signature_method_name_check
        self.enable_model_management = enable_model_management
        self.grpc_port = self.rest_port = None
        self._grpc = self._rest = self._manager = self.scheduler = self._watcher = self._guard = None
        self._stopped = threading.Event()

    @property
    def grpc_address(self) -> str:
        return f"{self._host}:{self.grpc_port}"

    @property
    def grpc_socket_address(self) -> str | None:
        """The gRPC target of the Unix socket (`unix:PATH`), or None."""
        return f"unix:{self.grpc_socket_path}" if self.grpc_socket_path else None

    @property
    def rest_address(self) -> str | None:
        return f"http://{self._host}:{self.rest_port}" if self.rest_port else None

    def start(self) -> ModelServer:
        """Loads the versions present, then opens the gRPC and REST ports and starts polling."""
        self.scheduler = BatchScheduler(self.batching_parameters) if self.batching_parameters else None
        limits = self._limits
        service = ServingService(None, self.scheduler, self._method_name_check, limits["max_request_elements"])
        service.model_management = self.enable_model_management
        self._manager = ModelManager(
            self._configs,
            self._poll_seconds,
            run_warm_up=lambda version, request: predict_lib.predict(version, request),
            on_load=self.metrics.record_load,
        )
        service.manager = self._manager
        self.metrics.labels = self._manager.metric_labels  # bounded labels, monitoring on or off
        try:
            self._manager.start()
        except RuntimeError:
            self.stop()  # as TF Serving, a model that cannot load stops the start
            raise
        if self._config_poll_seconds:
            self._watcher = ConfigFileWatcher(
                self._config_file, self._config_poll_seconds, self._manager.configs, self._manager.reload
            ).start()
        self._guard = RequestGuard()
        # Past the workers plus the queue, gRPC answers RESOURCE_EXHAUSTED instead of queueing.
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=limits["grpc_threads"]),
            options=self._grpc_options,
            interceptors=[self._guard, monitoring.RequestMetricsInterceptor(self.metrics)],
            maximum_concurrent_rpcs=limits["grpc_threads"] + limits["max_queued_requests"],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(service), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(service), self._grpc)
        address = f"{self._host}:{self._ports[0]}"
        self.grpc_port = self._add_grpc_port(address, f"gRPC port {address}")
        if self.grpc_socket_path:
            self._add_grpc_port(self.grpc_socket_address, f"gRPC Unix socket {self.grpc_socket_path}")
        self._grpc.start()
        log.info("Running gRPC ModelServer at %s%s ...", self.grpc_address, " (TLS)" if self._ssl_config else "")
        if self.grpc_socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...", self.grpc_socket_path)
        if self._ports[1] is not None:
            try:
                self._rest = RestFront(
                    service,
                    self._host,
                    self._ports[1],
                    num_threads=limits["rest_threads"],
                    max_queued=limits["max_queued_requests"],
                    max_body_bytes=limits["rest_max_body_bytes"],
                    timeout_ms=limits["rest_timeout_ms"],
                    max_connections=limits["rest_max_connections"],
                    max_elements=limits["max_request_elements"],
                    metrics=self.metrics,
                    prometheus_path=self.prometheus_path,
                    states=self._manager.version_states,
                )
            except OSError as error:
                self.stop()
                raise RuntimeError(f"cannot bind REST port {self._host}:{self._ports[1]}: {error}") from error
            self.rest_port = self._rest.port
            self._rest.start()
            log.info("Exporting HTTP/REST API at:%s ...", self.rest_address)
            if self.prometheus_path:
                log.info("Prometheus metrics at %s%s", self.rest_address, self.prometheus_path)
            log.info("A page to try the served models: %s/", self.rest_address)
        return self

    def _add_grpc_port(self, address: str, what: str) -> int:
        """Binds `address` (plain or TLS, as configured); stops the server and raises if it cannot."""
        try:
            if self._ssl_config is not None:
                port = self._grpc.add_secure_port(address, tls.server_credentials(self._ssl_config))
            else:
                port = self._grpc.add_insecure_port(address)
        except RuntimeError as error:
            self.stop()
            raise RuntimeError(f"cannot bind {what}: {error}") from error
        if not port:
            self.stop()
            raise RuntimeError(f"cannot bind {what}")
        return port

    def stop(self, grace: float = 2.0) -> None:
        """Refuses new requests, lets those in flight finish for `grace` seconds, stops polling.

        New gRPC calls get UNAVAILABLE and new REST connections are refused at once; requests
        still running after `grace` seconds are cancelled. The log says how many requests were in
        flight, whether all of them were answered, and how many waiting ones were refused.
        """
        deadline = time.monotonic() + grace
        if self._watcher is not None:
            self._watcher.stop()
        if self._guard is not None:
            self._guard.draining = True  # new gRPC calls: UNAVAILABLE from now on
        serving = self._grpc is not None or self._rest is not None
        if serving:
            log.info(
                "Draining: %d gRPC call(s) and %d REST request(s) in flight may finish within %g s",
                self._guard.in_flight if self._grpc is not None else 0,
                self._rest.in_flight if self._rest is not None else 0,
                grace,
            )
        unfinished = 0
        if self._rest is not None:
            unfinished += self._rest.drain(grace)
        if self._grpc is not None:
            unfinished += self._guard.drain(deadline)
            self._grpc.stop(max(deadline - time.monotonic(), 0.5)).wait()
        if serving:
            if unfinished:
                log.warning("Drained: %d request(s) still running after %g s were cut off", unfinished, grace)
            else:
                log.info("Drained: every request in flight was answered")
            log.info(
                "Refused while draining: %d gRPC call(s) not yet started, %d queued REST request(s)",
                self._guard.refused if self._grpc is not None else 0,
                self._rest.refused if self._rest is not None else 0,
            )
        if self._manager is not None:
            self._manager.stop()
        if self.scheduler is not None:
            self.scheduler.stop()
        self._stopped.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until `stop()` (True) or the timeout (False)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
