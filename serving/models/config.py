"""TF Serving's configuration files: `--model_config_file` and `--batching_parameters_file`.

Both are protobuf text format. `ModelServerConfig` ships with tensorflow-serving-api; the
`BatchingParameters` message does not, so its schema is declared here with TF Serving's field numbers.
"""

from __future__ import annotations

import dataclasses

from google.protobuf import text_format, wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

from keras_fcn.proto_schema import ProtoFile, message_classes


def model_config(name: str, base_path: str) -> model_server_config_pb2.ModelConfig:
    """The config TF Serving builds from `--model_name` and `--model_base_path` (latest version)."""
    if not name:
        raise ValueError(f"a model name is required. Received: name={name!r}")
    return model_server_config_pb2.ModelConfig(name=name, base_path=base_path, model_platform="tensorflow")


def read_model_config_file(path: str) -> list[model_server_config_pb2.ModelConfig]:
    """The models listed in a `ModelServerConfig` text file (`model_config_list { config { ... } }`).

    Raises:
        ValueError: when the text does not parse, lists no model or repeats a name.
    """
    from google.protobuf import text_format

    with open(path, encoding="utf-8") as f:
        text = f.read()
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        # TF Serving's words: the parser's error, then the status it fails to start with.
        raise ValueError(
            f"Error parsing text-format tensorflow.serving.ModelServerConfig: {error}. "
            f"Invalid protobuf file: '{path}'. Received: path={path}"
        ) from error
    return validate_model_configs(list(config.model_config_list.config), source=path)


def validate_model_configs(configs, source: str = "config") -> list:
    """Checks names and base paths of `ModelConfig`s; returns them."""
    names = [c.name for c in configs]
    if not configs or any(not c.name or not c.base_path for c in configs) or len(set(names)) != len(names):
        raise ValueError(
            f"{source} must list at least one model, each with a unique name and a base_path. Received: names={names}"
        )
    return list(configs)


@dataclasses.dataclass
class BatchingParameters:
    """Server-side batching knobs, as in TF Serving's `BatchingParameters` (defaults match it)."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    num_batch_threads: int = 4
    max_enqueued_batches: int = 10
    allowed_batch_sizes: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        sizes = self.allowed_batch_sizes
        if sizes and (sizes != sorted(sizes) or sizes[-1] != self.max_batch_size):
            raise ValueError(
                "allowed_batch_sizes must increase and end with max_batch_size. "
                f"Received: allowed_batch_sizes={sizes}, max_batch_size={self.max_batch_size}"
            )
        if min(self.max_batch_size, self.num_batch_threads, self.max_enqueued_batches) < 1:
            raise ValueError(f"batching sizes and counts must be positive. Received: {self}")


# TF Serving's `BatchingParameters` message (session_bundle_config.proto, its field numbers), built with
# `keras_fcn.proto_schema` in a pool of its own: tensorflow-serving-api does not ship it.
_BATCHING_PARAMETERS = ProtoFile(
    "keras_fcn/serving/batching_parameters.proto",
    "tensorflow.serving",
    {
        "BatchingParameters": [
            ("max_batch_size", 1, ".google.protobuf.Int64Value", False, None),
            ("batch_timeout_micros", 2, ".google.protobuf.Int64Value", False, None),
            ("max_enqueued_batches", 3, ".google.protobuf.Int64Value", False, None),
            ("num_batch_threads", 4, ".google.protobuf.Int64Value", False, None),
            ("thread_pool_name", 5, ".google.protobuf.StringValue", False, None),
            ("allowed_batch_sizes", 6, "int64", True, None),
            ("pad_variable_length_inputs", 7, "bool", False, None),
        ]
    },
    dependencies=["google/protobuf/wrappers.proto"],
)
_BatchingParametersProto = message_classes(
    [_BATCHING_PARAMETERS], "tensorflow.serving", ["BatchingParameters"], well_known=(wrappers_pb2,)
)["BatchingParameters"]


def parse_batching_parameters(text: str) -> BatchingParameters:
    """Parses a `--batching_parameters_file` as TF Serving does: protobuf text format of its
    `BatchingParameters` message, e.g. `max_batch_size { value: 8 }` (the scalars are wrapper messages).

    Unknown fields (a typo such as `max_batch_sise`, or fields of newer TF Serving releases that this
    server does not implement) are refused, as is `pad_variable_length_inputs: true`: requests whose
    shapes differ are batched separately here, and padding an image would change an FCN's answer.
    `thread_pool_name` is accepted and has no effect.

    Raises:
        ValueError: on text that does not parse, unknown fields, or inconsistent values.
    """
    proto = _BatchingParametersProto()
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as error:
        raise ValueError(f"cannot parse batching parameters: {error}. Received: text={text!r}") from None
    if proto.pad_variable_length_inputs:
        raise ValueError(
            "pad_variable_length_inputs is not supported: requests of different shapes are batched separately. "
            "Received: pad_variable_length_inputs=true"
        )
    values: dict = {"allowed_batch_sizes": list(proto.allowed_batch_sizes)}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        if proto.HasField(name):
            values[name] = getattr(proto, name).value
    return BatchingParameters(**values)
