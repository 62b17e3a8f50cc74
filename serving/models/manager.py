"""All served models, and the poller that keeps their versions in step with their base paths."""

from __future__ import annotations

import threading

import grpc
from tensorflow_serving.apis import get_model_status_pb2

from ..errors import ServingError, log
from ..monitoring import OTHER
from .versions import LoadedVersion, ServedModel, State


class ModelManager:
    """All served models, polled together every `poll_seconds` on a background thread."""

    def __init__(self, configs, poll_seconds: float = 1.0, run_warm_up=None, on_load=None):
        self._on_load = on_load  # passed to each ServedModel: on_load(path, ok, seconds)
        self._models = {c.name: ServedModel(c, on_load=on_load) for c in configs}
        self._poll_seconds = poll_seconds
        self._run_warm_up = run_warm_up
        self._stop = threading.Event()
        self._poll_lock = threading.Lock()
        self._thread = None

    def poll(self) -> None:
        with self._poll_lock:
            for model in list(self._models.values()):
                model.poll(self._run_warm_up)

    def start(self) -> None:
        """Loads the versions present, then polls in the background.

        Like TF Serving, versions present at start-up are loaded before serving, failed loads are
        retried (`max_num_load_retries` times, one poll apart), and a model none of whose
        versions on disk loads stops the start.

        Raises:
            RuntimeError: `N model(s) did not become available: ...`, naming each failed version.
        """
        self.poll()
        retries = max((m.max_num_load_retries for m in self._models.values()), default=0)
        for _ in range(retries):
            if not self._failed_models() or self._stop.wait(self._poll_seconds):
                break
            self.poll()
        failed = self._failed_models()
        if failed:
            details = "".join(
                f"{{{{name: {name} version: {version}}} due to error: {message}}}, "
                for name, errors in failed.items()
                for version, message in sorted(errors.items())
            )
            raise RuntimeError(f"{len(failed)} model(s) did not become available: {{{details}}}")
        self._thread = threading.Thread(target=self._loop, name="version-poller", daemon=True)
        self._thread.start()

    def _failed_models(self) -> dict:
        """{model name: {version: load error}} for the models whose versions all failed to load."""
        return {name: errors for name, model in self._models.items() if (errors := model.load_errors())}

    def _loop(self) -> None:
        while not self._stop.wait(self._poll_seconds):
            try:
                self.poll()
            except Exception:  # keep polling whatever one pass met
                log.exception("Polling the model base paths failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def reload(self, configs) -> None:
        """Replaces the served model list (`HandleReloadConfigRequest`); kept models keep their versions."""
        with self._poll_lock:
            models = {}
            for config in configs:
                kept = self._models.get(config.name)
                if kept is not None and kept.config.base_path == config.base_path:
                    kept.config = config
                    models[config.name] = kept
                else:
                    models[config.name] = ServedModel(config, on_load=self._on_load)
            self._models = models
        self.poll()

    def configs(self) -> list:
        """The `ModelConfig`s served now (after the last reload)."""
        return [model.config for model in list(self._models.values())]

    def version_states(self) -> dict[str, dict[int, str]]:
        """`{model name: {version: state name}}` of every version each served model has seen."""
        return {
            name: {version: State.Name(state) for version, (state, _) in model.states().items()}
            for name, model in list(self._models.items())
        }

    def metric_labels(self, name: str, version, signature_name: str) -> tuple[str, str, str]:
        """(model, version, signature) labels for a request's metrics: only what this server has.

        A name, version or signature it does not have is counted as `monitoring.OTHER`, so requests
        naming made-up ones cannot grow the metrics without bound.
        """
        model = self._models.get(name)
        if model is None:
            return (OTHER if name else "", "", "")
        version = "" if version is None else str(version)
        if version and not (version.isascii() and version.isdecimal() and int(version) in model.states()):
            version = OTHER
        if signature_name and signature_name not in model.signature_names():
            signature_name = OTHER
        return name, version, signature_name

    def model(self, name: str, version: int | None = None) -> ServedModel:
        if not name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified.")
        model = self._models.get(name)
        if model is None:
            request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
        return model

    def available(self) -> dict[str, list[int]]:
        """`{model name: loaded version numbers, newest first}` of every served model."""
        return {name: model.available_versions() for name, model in list(self._models.items())}

    def resolve(self, model_spec) -> LoadedVersion:
        """The LoadedVersion a `ModelSpec` names (version, version_label or latest)."""
        version = model_spec.version.value if model_spec.HasField("version") else None
        label = model_spec.version_label if model_spec.WhichOneof("version_choice") == "version_label" else ""
        return self.model(model_spec.name, version).resolve(version, label)

    def status(self, model_spec) -> get_model_status_pb2.GetModelStatusResponse:
        """`GetModelStatus`: every version this server has seen for the model, or the one asked for."""
        version = model_spec.version.value if model_spec.HasField("version") else None
        model = self._models.get(model_spec.name)
        states = model.states() if model is not None else {}
        if version is not None:
            if version not in states:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Could not find version {version} of model {model_spec.name}",
                )
            states = {version: states[version]}
        if not states:
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {model_spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for number in sorted(states, reverse=True):
            state, error = states[number]
            entry = response.model_version_status.add(version=number, state=state)
            entry.status.SetInParent()  # TF Serving always sends a status (error_code OK)
            if error:
                entry.status.error_code = model.error_code(number).value[0]
                entry.status.error_message = error
        return response
