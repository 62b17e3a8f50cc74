"""The serving core shared by the gRPC and REST front ends: versions, signatures, Predict.

Behaviour follows TensorFlow Serving: numeric version folders, a version policy, the base path
polled for new versions (loaded before old ones are unloaded, so no request fails in between),
warm-up replay before a version is AVAILABLE, and TF Serving's status codes and messages.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2, prediction_log_pb2

from keras_fcn.export import ASSETS_EXTRA, WARMUP_FILE, version_folders

log = logging.getLogger("keras_fcn.serving")

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
MAX_ERROR_CHARS = 1024  # TF Serving cuts longer messages
MAX_WARMUP_RECORDS = 1000
MAX_REQUEST_ELEMENTS = 1 << 30  # no 1 GiB request message holds more values
MAX_NUM_LOAD_RETRIES = 5  # TF Serving's --max_num_load_retries default; here one retry per poll

State = get_model_status_pb2.ModelVersionStatus.State
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request error with its gRPC status code (also mapped to an HTTP code by the REST API)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        if len(message) > MAX_ERROR_CHARS:
            message = message[:MAX_ERROR_CHARS] + "...TRUNCATED"
        super().__init__(message)
        self.code = code
        self.message = message


def clean_tf_message(message: str) -> str:
    """The useful lines of a TensorFlow runtime error (without node names and stack headers)."""
    lines = []
    for line in message.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("Graph execution error", "Detected at node", "<stack traces", "[[")):
            continue
        lines.append(stripped.split(" [Op:")[0])
    return "\n".join(lines) or message


# --- tensors ---------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _packed(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with typed `*_val` fields, as TF Serving answers by default.

    Float and small non-negative integer arrays are written as packed fields straight from their
    bytes (the protobuf wire format of `float_val` is the array's little-endian bytes), which keeps
    a 30 MB reply cheap.
    """
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        proto = tf.make_tensor_proto(array.astype(object) if array.dtype.kind == "U" else array)
        return proto
    dtype = tf.dtypes.as_dtype(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.ravel()
    if array.dtype == np.float32:
        proto.MergeFromString(_packed(5, flat.astype("<f4").tobytes()))  # float_val
    elif array.dtype == np.float64:
        proto.MergeFromString(_packed(6, flat.astype("<f8").tobytes()))  # double_val
    elif array.dtype.kind in "iu" and array.dtype.itemsize <= 4 and array.dtype != np.uint32:
        if flat.size and 0 <= flat.min() and flat.max() < 128:
            proto.MergeFromString(_packed(7, flat.astype(np.uint8).tobytes()))  # int_val, 1-byte varints
        else:
            proto.int_val.extend(flat.tolist())
    elif array.dtype == np.int64:
        proto.int64_val.extend(flat.tolist())
    elif array.dtype == np.bool_:
        proto.bool_val.extend(flat.tolist())
    else:
        return tf.make_tensor_proto(array)
    return proto


def from_tensor_proto(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """The numpy value of a request tensor; INVALID_ARGUMENT `tensor parsing error` when malformed."""
    try:
        dims = [d.size for d in proto.tensor_shape.dim]
        # One typed value may stand for a whole shape: refuse shapes no real request could fill.
        if any(d < 0 for d in dims) or np.prod(dims, dtype=np.float64) > MAX_REQUEST_ELEMENTS:
            raise ValueError(f"shape {dims}")
        array = tf.make_ndarray(proto)
    except Exception as error:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {alias}") from error
    return array


# --- one loaded version ----------------------------------------------------------------------


def read_signature_defs(path: str) -> dict:
    """The SignatureDefs of the `serve` MetaGraph in `path/saved_model.pb`, keyed by name."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{path} has no MetaGraph tagged 'serve'. Received: path={path}")


class LoadedVersion:
    """One SavedModel version in memory: its signature functions and SignatureDefs."""

    def __init__(self, model_name: str, version: int, path: str):
        self.model_name, self.version, self.path = model_name, version, path
        self.signature_defs = read_signature_defs(path)
        self._saved_model = tf.saved_model.load(path)
        self.functions = dict(self._saved_model.signatures)

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


def check_inputs(signature_def, inputs: dict) -> None:
    """TF Serving's input checks: names, then dtypes, then shapes; INVALID_ARGUMENT on a mismatch."""
    expected = sorted(signature_def.inputs)
    sent = sorted(inputs)
    if sent != expected:
        extra = sorted(set(sent) - set(expected))
        missing = sorted(set(expected) - set(sent))
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sent)}}}) != "
            f"len({{{','.join(expected)}}}). Sent extra: {{{','.join(extra)}}}. "
            f"Missing but required: {{{','.join(missing)}}}.",
        )
    for position, alias in enumerate(expected):
        info, array = signature_def.inputs[alias], inputs[alias]
        want = tf.dtypes.as_dtype(info.dtype)
        got = tf.dtypes.as_dtype(array.dtype) if array.dtype.kind not in "OSU" else tf.string
        if want != got:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{position}] to be {want.name} but {got.name} is provided",
            )
        if info.tensor_shape.unknown_rank:
            continue
        dims = [d.size for d in info.tensor_shape.dim]
        if len(dims) != array.ndim or any(d not in (-1, s) for d, s in zip(dims, array.shape, strict=False)):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input '{alias}' has shape {list(array.shape)}, the signature expects {dims} (-1: any size)",
            )


def check_output_filter(signature_def, output_filter) -> list[str]:
    """The output aliases to return (all when the filter is empty); TF Serving's errors otherwise."""
    aliases = list(output_filter)
    for index, alias in enumerate(aliases):
        if alias not in signature_def.outputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(signature_def.outputs))}}}.",
            )
        if alias in aliases[:index]:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
    return aliases or sorted(signature_def.outputs)


def run_signature(function, inputs: dict) -> dict:
    """Calls a signature function on numpy inputs; TF runtime errors keep their status code."""
    try:
        outputs = function(**{alias: tf.constant(value) for alias, value in inputs.items()})
    except tf.errors.OpError as error:
        code = _GRPC_CODES.get(error.error_code, grpc.StatusCode.INTERNAL)
        raise ServingError(code, clean_tf_message(error.message)) from error
    except (TypeError, ValueError) as error:
        raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(error)) from error
    return {alias: value.numpy() for alias, value in outputs.items()}


# --- one model: its versions and policy ------------------------------------------------------


class ServedModel:
    """One model name: the versions its policy asks for, their states, and its version labels."""

    def __init__(self, config, max_num_load_retries: int = MAX_NUM_LOAD_RETRIES):
        self.config = config
        self.name = config.name
        self.max_num_load_retries = max_num_load_retries
        self._versions: dict[int, LoadedVersion] = {}
        self._states: dict[int, tuple[int, str]] = {}  # version -> (State, error message)
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
        failed one again on later polls up to `max_num_load_retries` times. Then versions gone
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
            if not self._load(version, warm_up) and version in self._versions:
                self._unload(version, "its folder was replaced by one that failed to load")
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
        """Loads (or replaces) `version`; True when it is AVAILABLE."""
        with self._lock:
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
                "Loading servable version {name: %s version: %d} failed (%d retries left): %s",
                self.name,
                version,
                retries_left,
                error,
            )
            with self._lock:
                self._states[version] = (State.END, f"{type(error).__name__}: {error}")
            return False
        self._failures.pop(version, None)
        self._identities[version] = identity
        with self._lock:
            self._versions[version] = loaded
            self._states[version] = (State.AVAILABLE, "")
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

    def states(self) -> dict[int, tuple[int, str]]:
        with self._lock:
            return dict(self._states)


class ModelManager:
    """All served models, polled together every `poll_seconds` on a background thread."""

    def __init__(self, configs, poll_seconds: float = 1.0, run_warm_up=None):
        self._models = {c.name: ServedModel(c) for c in configs}
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
        self.poll()  # like TF Serving: versions present at start-up are loaded before serving
        self._thread = threading.Thread(target=self._loop, name="version-poller", daemon=True)
        self._thread.start()

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
                    models[config.name] = ServedModel(config)
            self._models = models
        self.poll()

    def model(self, name: str, version: int | None = None) -> ServedModel:
        if not name:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
        model = self._models.get(name)
        if model is None:
            request = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
            raise ServingError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
        return model

    def resolve(self, model_spec) -> LoadedVersion:
        """The LoadedVersion a `ModelSpec` names (version, version_label or latest)."""
        version = model_spec.version.value if model_spec.HasField("version") else None
        label = model_spec.version_label if model_spec.WhichOneof("version_choice") == "version_label" else ""
        return self.model(model_spec.name, version).resolve(version, label)

    def status(self, model_spec) -> get_model_status_pb2.GetModelStatusResponse:
        """`GetModelStatus`: every version this server has seen for the model, or the one asked for."""
        version = model_spec.version.value if model_spec.HasField("version") else None
        states = self.model(model_spec.name, version).states()
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
                entry.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
                entry.status.error_message = error
        return response


def predict_arrays(version: LoadedVersion, signature_name: str, inputs: dict, output_filter=(), run=run_signature):
    """TF Serving's Predict checks and call on numpy inputs; returns (signature name, outputs).

    `run(function, inputs)` makes the call (the batching scheduler passes its own).
    """
    name, signature_def, function = version.signature(signature_name)
    if signature_def.method_name != PREDICT_METHOD:
        raise ServingError(
            grpc.StatusCode.INTERNAL,
            f"Expected prediction signature method_name to be {PREDICT_METHOD}. Was: {signature_def.method_name}",
        )
    check_inputs(signature_def, inputs)
    aliases = check_output_filter(signature_def, output_filter)
    outputs = run(function, inputs)
    return name, {alias: outputs[alias] for alias in aliases}


def predict(
    version: LoadedVersion, request: predict_pb2.PredictRequest, run=run_signature
) -> predict_pb2.PredictResponse:
    """TF Serving's Predict on one loaded version, from request proto to response proto."""
    inputs = {alias: from_tensor_proto(alias, proto) for alias, proto in request.inputs.items()}
    name, outputs = predict_arrays(version, request.model_spec.signature_name, inputs, request.output_filter, run)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = version.model_name
    response.model_spec.version.value = version.version
    response.model_spec.signature_name = name
    for alias, value in outputs.items():
        response.outputs[alias].CopyFrom(to_tensor_proto(value))
    return response
