"""One model's versions: loading a SavedModel version, its warm-up, the version policy and states.

Behaviour follows TensorFlow Serving: numeric version folders, a version policy, versions loaded
before old ones are unloaded (so no request fails in between), warm-up replay before a version is
AVAILABLE, failed loads retried on later polls, and TF Serving's status codes and messages.
"""

from __future__ import annotations

import os
import threading
import time
import weakref

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2, prediction_log_pb2

from keras_fcn.export import ASSETS_EXTRA, WARMUP_FILE, read_class_names, version_folders

from ..errors import ServingError, log
from .signatures import SessionModel, load_signatures

DEFAULT_SIGNATURE = "serving_default"
MAX_WARMUP_RECORDS = 1000
MAX_NUM_LOAD_RETRIES = 5  # TF Serving's --max_num_load_retries default; here one retry per poll

State = get_model_status_pb2.ModelVersionStatus.State


def read_meta_graph(path: str):
    """The `serve` MetaGraphDef of `path/saved_model.pb`.

    Raises:
        FileNotFoundError: with TensorFlow's message when the folder holds no SavedModel.
        ValueError: when no MetaGraph is tagged `serve`.
    """
    saved_model = saved_model_pb2.SavedModel()
    pb = os.path.join(path, "saved_model.pb")
    if not os.path.isfile(pb):
        raise FileNotFoundError(f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}")
    with open(pb, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ValueError(f"{path} has no MetaGraph tagged 'serve'. Received: path={path}")


_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _load_error_code(error: Exception) -> grpc.StatusCode:
    """The code GetModelStatus reports for a failed load: TensorFlow's own, NOT_FOUND for a missing SavedModel."""
    if isinstance(error, tf.errors.OpError):
        return _GRPC_CODES.get(error.error_code, grpc.StatusCode.UNKNOWN)
    if isinstance(error, FileNotFoundError):
        return grpc.StatusCode.NOT_FOUND
    return grpc.StatusCode.UNKNOWN


class LoadedVersion:
    """One SavedModel version in memory: its signatures (callables on numpy arrays) and SignatureDefs."""

    def __init__(self, model_name: str, version: int, path: str):
        self.model_name, self.version, self.path = model_name, version, path
        meta_graph = read_meta_graph(path)
        self.signature_defs = dict(meta_graph.signature_def)
        self.class_names = read_class_names(path)  # None when the export has no assets.extra/class_names.txt
        self.functions, self._saved_model = load_signatures(path, meta_graph)
        if isinstance(self._saved_model, SessionModel):
            # A TF1 session is closed once the version is unloaded and the last request holding it is done,
            # not whenever the garbage collector reaches the session's reference cycles.
            weakref.finalize(self, self._saved_model.close)

    def signature(self, name: str):
        """(SignatureDef, function) for `name` (empty = serving_default), else FAILED_PRECONDITION."""
        name = name or DEFAULT_SIGNATURE
        if name not in self.signature_defs or name not in self.functions:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
        return name, self.signature_defs[name], self.functions[name]

    def warm_up(self, run) -> int:
        """Replays `assets.extra/tf_serving_warmup_requests` through `run(version, request)`."""
        path = os.path.join(self.path, ASSETS_EXTRA, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS):
            entry = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if entry.WhichOneof("log_type") == "predict_log":
                run(self, entry.predict_log.request)
                count += 1
        return count


class ServedModel:
    """One model name: the versions its policy asks for, their states, and its version labels."""

    def __init__(self, config, max_num_load_retries: int = MAX_NUM_LOAD_RETRIES, on_load=None):
        self.config = config
        self.name = config.name
        self.max_num_load_retries = max_num_load_retries
        self._on_load = on_load  # on_load(path, ok, seconds) after each attempt (the load metrics)
        self._versions: dict[int, LoadedVersion] = {}
        self._states: dict[int, tuple[int, str]] = {}  # version -> (State, error message)
        self._error_codes: dict[int, grpc.StatusCode] = {}  # version -> the code of its failed load
        self._failures: dict[int, int] = {}  # version -> failed loads since its folder appeared
        self._identities: dict[int, tuple] = {}  # loaded version -> its folder's (inode, mtime)
        self._folders: dict[int, str] = {}  # version -> its folder, as the last poll listed them
        self._lock = threading.Lock()

    def aspired(self, on_disk: list[int]) -> list[int]:
        """The versions the model's version policy serves among those on disk."""
        policy = self.config.model_version_policy
        kind = policy.WhichOneof("policy_choice")
        if kind == "all":
            return on_disk
        if kind == "specific":
            return [v for v in on_disk if v in set(policy.specific.versions)]
        count = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
        return on_disk[-count:]

    def poll(self, warm_up) -> None:
        """One pass over the base path, as TF Serving's version source and manager make it.

        Aspired versions not loaded are loaded (a folder replaced under a loaded number too), a
        failed one again on later polls up to `max_num_load_retries` times. A loaded version whose
        folder changed but fails to load (replaced by a broken one, or caught half-deleted) keeps
        serving its copy in memory. Then versions gone
        from disk are unloaded and forgotten (a number that comes back is a new version, so
        deleting the latest rolls back to the one before), and loaded versions no longer aspired
        are unloaded once an aspired one is AVAILABLE: the old latest serves until its
        replacement is ready.
        """
        self._folders = version_folders(self.config.base_path)  # one listing a poll
        on_disk = list(self._folders)
        for version in [v for v in self._failures if v not in on_disk]:
            del self._failures[version]  # a folder that comes back is loaded afresh
        aspired = self.aspired(on_disk)
        for version in aspired:
            if version in self._versions and not self._changed(version):
                continue
            if self._failures.get(version, 0) > self.max_num_load_retries:
                continue
            self._load(version, warm_up)
        for version in [v for v in self._versions if v not in on_disk]:
            self._unload(version, "its folder is gone")  # after loading, so a rollback has no gap
        if not any(v in self._versions for v in aspired):
            return  # availability first: old versions serve until an aspired one has loaded
        for version in [v for v in self._versions if v not in aspired]:
            self._unload(version, "no longer aspired")

    def _identity(self, version: int):
        """What tells a folder replaced under the same number apart (between two polls): inode, mtime."""
        try:
            stat = os.stat(self._folder(version))
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    def _folder(self, version: int) -> str:
        """The folder of `version` (its name may carry leading zeros, `0007` for 7)."""
        return self._folders.get(version, os.path.join(self.config.base_path, str(version)))

    def _changed(self, version: int) -> bool:
        return self._identities.get(version) != self._identity(version)

    def _load(self, version: int, warm_up) -> bool:
        """Loads (or replaces) `version`; True when the folder loaded and is AVAILABLE."""
        with self._lock:
            replacing = version in self._versions
            if not replacing:
                self._states[version] = (State.LOADING, "")
        path = self._folder(version)
        identity = self._identity(version)
        started = time.monotonic()
        try:
            loaded = LoadedVersion(self.name, version, path)
            warmed = loaded.warm_up(warm_up)
        except Exception as error:  # a broken version must not take the server down
            failures = self._failures[version] = self._failures.get(version, 0) + 1
            retries_left = max(self.max_num_load_retries + 1 - failures, 0)
            log.error(
                "Loading servable version {name: %s version: %d} failed (%d retries left)%s: %s",
                self.name,
                version,
                retries_left,
                "; the copy loaded before keeps serving" if replacing else "",
                error,
            )
            if self._on_load is not None:
                self._on_load(path, False, time.monotonic() - started)
            if replacing:
                return False  # availability first: a rmtree caught midway must not leave a gap
            with self._lock:
                # TensorFlow's own load errors read as TF Serving reports them; others name their type.
                known = isinstance(error, (FileNotFoundError, tf.errors.OpError))
                self._states[version] = (State.END, str(error) if known else f"{type(error).__name__}: {error}")
                self._error_codes[version] = _load_error_code(error)
            return False
        self._failures.pop(version, None)
        self._identities[version] = identity
        with self._lock:
            self._versions[version] = loaded
            self._states[version] = (State.AVAILABLE, "")
            self._error_codes.pop(version, None)
        if self._on_load is not None:
            self._on_load(path, True, time.monotonic() - started)
        log.info(
            "Successfully loaded servable version {name: %s version: %d} in %.1f s (%d warm-up requests)",
            self.name,
            version,
            time.monotonic() - started,
            warmed,
        )
        return True

    def _unload(self, version: int, why: str) -> None:
        with self._lock:
            # Requests in flight keep their reference; new ones no longer find this version.
            self._versions.pop(version)
            self._identities.pop(version, None)
            self._states[version] = (State.END, "")
        log.info("Unloaded servable version {name: %s version: %d}: %s", self.name, version, why)

    def resolve(self, version: int | None, label: str = "") -> LoadedVersion:
        """The version asked for (a number, a label, or the latest); NOT_FOUND when not loaded."""
        with self._lock:
            if label:
                labels = dict(self.config.version_labels)
                if label not in labels:
                    raise ServingError(
                        grpc.StatusCode.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}"
                    )
                version = labels[label]
            if version is None:
                if not self._versions:
                    raise ServingError(
                        grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({self.name})"
                    )
                return self._versions[max(self._versions)]
            if version not in self._versions:
                raise ServingError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Specific({self.name}, {version})",
                )
            return self._versions[version]

    def signature_names(self) -> set[str]:
        """The signature names of the loaded versions."""
        with self._lock:
            return {name for loaded in self._versions.values() for name in loaded.signature_defs}

    def available_versions(self) -> list[int]:
        """The loaded version numbers, newest first."""
        with self._lock:
            return sorted(self._versions, reverse=True)

    def load_errors(self) -> dict[int, str]:
        """{version: error} of the failed loads when no version is AVAILABLE (else empty)."""
        with self._lock:
            if any(state == State.AVAILABLE for state, _ in self._states.values()):
                return {}
            return {v: error for v, (state, error) in self._states.items() if state == State.END and error}

    def error_code(self, version: int) -> grpc.StatusCode:
        """The status code of `version`'s failed load (UNKNOWN when the error had none)."""
        with self._lock:
            return self._error_codes.get(version, grpc.StatusCode.UNKNOWN)

    def states(self) -> dict[int, tuple[int, str]]:
        with self._lock:
            return dict(self._states)
