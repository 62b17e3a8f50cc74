"""TF Serving's configuration files: `--model_config_file` and `--batching_parameters_file`.

Both are protobuf text format. `ModelServerConfig` ships with tensorflow-serving-api; the
`BatchingParameters` message does not, so its few fields are read here by a small parser.
"""

from __future__ import annotations

import dataclasses
import re

from tensorflow_serving.config import model_server_config_pb2


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
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        sizes = self.allowed_batch_sizes
        if sizes and (sizes != sorted(sizes) or sizes[-1] != self.max_batch_size):
            raise ValueError(
                "allowed_batch_sizes must increase and end with max_batch_size. "
                f"Received: allowed_batch_sizes={sizes}, max_batch_size={self.max_batch_size}"
            )
        if min(self.max_batch_size, self.num_batch_threads, self.max_enqueued_batches) < 1:
            raise ValueError(f"batching sizes and counts must be positive. Received: {self}")


_FIELD = re.compile(r"(\w+)\s*(?::\s*([^\s{}]+)|\{\s*value\s*:\s*([^\s{}]+)\s*\})")


def parse_batching_parameters(text: str) -> BatchingParameters:
    """Parses a `BatchingParameters` text proto, e.g. `max_batch_size { value: 8 }`.

    Scalars may be written wrapped (`{ value: N }`, as TF Serving's docs do) or bare (`: N`);
    `allowed_batch_sizes` repeats. Fields TF Serving has but this server ignores
    (`thread_pool_name`, `enable_large_batch_splitting`, ...) are accepted.

    Raises:
        ValueError: on text that is not a list of such fields, or on inconsistent values.
    """
    text = re.sub(r"#[^\n]*", "", text)
    known = {f.name for f in dataclasses.fields(BatchingParameters)}
    values: dict = {"allowed_batch_sizes": []}
    position = 0
    for match in _FIELD.finditer(text):
        if text[position : match.start()].strip():
            break
        position = match.end()
        name, value = match.group(1), (match.group(2) or match.group(3)).strip('"')
        if name == "allowed_batch_sizes":
            values[name].append(int(value))
        elif name == "pad_variable_length_inputs":
            values[name] = value.lower() == "true"
        elif name in known:
            values[name] = int(value)
    if text[position:].strip():
        raise ValueError(f"cannot parse batching parameters near {text[position:][:40]!r}. Received: text={text!r}")
    return BatchingParameters(**values)
