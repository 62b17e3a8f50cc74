"""`--monitoring_config_file`: request and load metrics, and TF Serving's Prometheus endpoint.

With `prometheus_config { enable: true }` the REST port answers `GET /monitoring/prometheus/metrics`
(or `prometheus_config.path`) in Prometheus's text format, as TF Serving's exporter writes it
(metric `/a/b/c` is named `:a:b:c`; latencies are histograms in microseconds with buckets
10 * 1.8^i; only `# TYPE` lines). The families:

- TF Serving's own, with its labels, so dashboards built for it work unchanged:
  `:tensorflow:serving:request_count{model_name,status}` (gRPC Predict/Classify/Regress and every
  REST call), `:tensorflow:serving:request_latency{model_name,API,entrypoint}` (successful calls;
  `entrypoint` is `GRPC` or `REST`), and TensorFlow's
  `:tensorflow:cc:saved_model:load_attempt_count{model_path,status}` (`success`/`fail`) and
  `:tensorflow:cc:saved_model:load_latency{model_path}` (total microseconds); here a load includes
  its warm-up, so a failed warm-up counts as a failed load.
- This server's finer breakdown, which TF Serving does not have:
  `:keras_fcn:serving:request_count{model_name,version,signature_name,API,entrypoint,status}`,
  `:keras_fcn:serving:request_latency{model_name,version,signature_name,API,entrypoint}` (the
  version and signature that answered; on errors those the request named, possibly empty), and
  `:keras_fcn:serving:model_version_state{model_name,version,state}` (1 for each version's state:
  LOADING, AVAILABLE, END ...).

Labels name only what the server has: a request naming a model, version or signature it does not
have is counted under `(other)`, so made-up names cannot grow the metrics (requests are counted
whether or not the endpoint is on, with the same bound).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict

import grpc

from .models.config_protos import MonitoringConfig, read_text_proto

FLAG = "--monitoring_config_file"
DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's PrometheusExporter::kPrometheusPath
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# TF Serving's latency buckets: Buckets::Exponential(10, 1.8, 33), in microseconds, then +Inf.
LATENCY_BUCKETS = tuple(10 * 1.8**i for i in range(33))
# The gRPC methods TF Serving counts (its PredictionServiceImpl records these three).
GRPC_APIS = {
    "/tensorflow.serving.PredictionService/Predict": "Predict",
    "/tensorflow.serving.PredictionService/Classify": "Classify",
    "/tensorflow.serving.PredictionService/Regress": "Regress",
}

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LOAD_ATTEMPT_COUNT = ":tensorflow:cc:saved_model:load_attempt_count"
LOAD_LATENCY = ":tensorflow:cc:saved_model:load_latency"
# The label of a model, version or signature the server does not have (see `Metrics.labels`).
OTHER = "(other)"
VERSION_REQUEST_COUNT = ":keras_fcn:serving:request_count"
VERSION_REQUEST_LATENCY = ":keras_fcn:serving:request_latency"
MODEL_VERSION_STATE = ":keras_fcn:serving:model_version_state"


def read_monitoring_config(path: str) -> str | None:
    """The Prometheus endpoint's path a `MonitoringConfig` text file asks for, or None when disabled.

    Raises:
        ValueError: on a file that does not parse, or a path that does not start with `/`.
    """
    config = read_text_proto(path, MonitoringConfig, FLAG)
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    endpoint = prometheus.path or DEFAULT_PROMETHEUS_PATH
    if not endpoint.startswith("/") or "?" in endpoint:
        raise ValueError(
            f"{FLAG}: prometheus_config.path must be a URL path starting with '/'. Received: path={endpoint!r}"
        )
    return endpoint


class _Histogram:
    """TensorFlow's histogram cell: a value v falls in the first bucket whose limit exceeds it."""

    def __init__(self):
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect.bisect_right(LATENCY_BUCKETS, value)] += 1
        self.sum += value


class Metrics:
    """The server's counters and histograms; thread-safe; rendered by `exposition()`."""

    def __init__(self, labels=None):
        """Args:
            labels: `(model, version, signature) -> (model, version, signature)`, mapping what a request named
                to labels the server has (e.g. `ModelManager.metric_labels`); None keeps them as named.
        """
        self.labels = labels
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple, int]] = defaultdict(lambda: defaultdict(int))
        self._histograms: dict[str, dict[tuple, _Histogram]] = defaultdict(lambda: defaultdict(_Histogram))

    def record_request(
        self,
        model_name: str,
        api: str,
        entrypoint: str,
        status: grpc.StatusCode,
        seconds: float,
        version: int | str = "",
        signature_name: str = "",
    ) -> None:
        """Counts one request; its latency too when it succeeded (as TF Serving does)."""
        micros = seconds * 1e6
        version = str(version) if version is not None else ""
        if self.labels is not None:
            model_name, version, signature_name = self.labels(model_name, version, signature_name)
        with self._lock:
            self._counters[REQUEST_COUNT][(model_name, status.name)] += 1
            self._counters[VERSION_REQUEST_COUNT][
                (model_name, version, signature_name, api, entrypoint, status.name)
            ] += 1
            if status == grpc.StatusCode.OK:
                self._histograms[REQUEST_LATENCY][(model_name, api, entrypoint)].add(micros)
                self._histograms[VERSION_REQUEST_LATENCY][(model_name, version, signature_name, api, entrypoint)].add(
                    micros
                )

    def record_load(self, model_path: str, ok: bool, seconds: float) -> None:
        """Counts one attempt to load a version (TensorFlow's SavedModel load metrics)."""
        with self._lock:
            self._counters[LOAD_ATTEMPT_COUNT][(model_path, "success" if ok else "fail")] += 1
            if ok:
                self._counters[LOAD_LATENCY][(model_path,)] += round(seconds * 1e6)

    def exposition(self, states: dict | None = None) -> str:
        """The Prometheus text page.

        Args:
            states: `{model name: {version: state name}}` of the served models, for the state gauge.
        """
        families = [
            # (name, kind, label names): the families of TF Serving and TensorFlow first, in name order
            (LOAD_ATTEMPT_COUNT, "counter", ("model_path", "status")),
            (LOAD_LATENCY, "counter", ("model_path",)),
            (REQUEST_COUNT, "counter", ("model_name", "status")),
            (REQUEST_LATENCY, "histogram", ("model_name", "API", "entrypoint")),
            (MODEL_VERSION_STATE, "gauge", ("model_name", "version", "state")),
            (
                VERSION_REQUEST_COUNT,
                "counter",
                ("model_name", "version", "signature_name", "API", "entrypoint", "status"),
            ),
            (VERSION_REQUEST_LATENCY, "histogram", ("model_name", "version", "signature_name", "API", "entrypoint")),
        ]
        gauge = {
            (name, str(version), state): 1
            for name, versions in (states or {}).items()
            for version, state in versions.items()
        }
        lines = []
        with self._lock:
            for name, kind, label_names in families:
                lines.append(f"# TYPE {name} {kind}")
                if kind == "histogram":
                    for labels, histogram in sorted(self._histograms[name].items()):
                        lines += _histogram_lines(name, _labels(label_names, labels), histogram)
                    continue
                points = gauge if name == MODEL_VERSION_STATE else self._counters[name]
                for labels, value in sorted(points.items()):
                    lines.append(f"{name}{{{_labels(label_names, labels)}}} {value}")
        return "\n".join(lines) + "\n"


def _labels(names, values) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True))


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return f"{value:.6g}"  # TensorFlow prints doubles with six significant digits


def _histogram_lines(name: str, labels: str, histogram: _Histogram) -> list[str]:
    lines, cumulative = [], 0
    prefix = f"{labels}," if labels else ""
    for limit, count in zip((*map(_number, LATENCY_BUCKETS), "+Inf"), histogram.counts, strict=True):
        cumulative += count
        lines.append(f'{name}_bucket{{{prefix}le="{limit}"}} {cumulative}')
    lines.append(f"{name}_sum{{{labels}}} {_number(histogram.sum)}")
    lines.append(f"{name}_count{{{labels}}} {cumulative}")
    return lines


class RequestMetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times the gRPC inference calls TF Serving counts, without touching the servicers."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        api = GRPC_APIS.get(handler_call_details.method)
        if handler is None or api is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        def behavior(request, context):
            started = time.perf_counter()
            try:
                response = inner(request, context)
            except Exception:
                self._record(api, request, None, context.code() or grpc.StatusCode.UNKNOWN, started)
                raise
            self._record(api, request, response, context.code() or grpc.StatusCode.OK, started)
            return response

        return grpc.unary_unary_rpc_method_handler(
            behavior,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _record(self, api: str, request, response, status: grpc.StatusCode, started: float) -> None:
        # The answer names the version and signature that ran; a failed call, those the request named.
        spec = response.model_spec if response is not None and response.HasField("model_spec") else request.model_spec
        self.metrics.record_request(
            request.model_spec.name,
            api,
            "GRPC",
            status,
            time.perf_counter() - started,
            version=spec.version.value if spec.HasField("version") else "",
            signature_name=spec.signature_name,
        )
