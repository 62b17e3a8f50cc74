"""TF Serving's `MonitoringConfig` and `SSLConfig` messages, and reading text-format config files.

tensorflow-serving-api ships `model_server_config_pb2` but not `monitoring_config_pb2` nor
`ssl_config_pb2`. Where the package has them they are used; otherwise the two messages are built
here with the protobuf runtime, with the names and field numbers of TF Serving's
`tensorflow_serving/config/monitoring_config.proto` and `ssl_config.proto`, so the same text files
parse the same way (and unknown fields are refused) under both servers.
"""

from __future__ import annotations

from google.protobuf import text_format

from keras_fcn.proto_schema import ProtoFile, message_classes

# message name -> the fields of the upstream .proto files, as `keras_fcn.proto_schema` tables
_SCHEMAS = {
    "monitoring_config": {
        "PrometheusConfig": [("enable", 1, "bool", False, None), ("path", 2, "string", False, None)],
        "MonitoringConfig": [("prometheus_config", 1, ".tensorflow.serving.PrometheusConfig", False, None)],
    },
    "ssl_config": {
        "SSLConfig": [
            ("server_key", 1, "string", False, None),
            ("server_cert", 2, "string", False, None),
            ("custom_ca", 3, "string", False, None),
            ("client_verify", 4, "bool", False, None),
        ],
    },
}


def _message_classes(module: str) -> dict:
    """{message name: class} of one upstream .proto file: the shipped module, else built here."""
    try:
        shipped = __import__(f"tensorflow_serving.config.{module}_pb2", fromlist=["_"])
        return {name: getattr(shipped, name) for name in _SCHEMAS[module]}
    except ImportError:
        pass
    # A private pool: nothing clashes with a module that registers the same names later.
    file = ProtoFile(f"tensorflow_serving/config/{module}.proto", "tensorflow.serving", _SCHEMAS[module])
    return message_classes([file], "tensorflow.serving", _SCHEMAS[module])


MonitoringConfig = _message_classes("monitoring_config")["MonitoringConfig"]
SSLConfig = _message_classes("ssl_config")["SSLConfig"]


def read_text_proto(path: str, message_class, flag: str):
    """Parses a text-format protobuf file into a new `message_class`; unknown fields are refused.

    Args:
        path: the file.
        message_class: the generated message class (`SSLConfig`, `MonitoringConfig`, ...).
        flag: the flag that named the file, for the error message.

    Returns:
        The parsed message.

    Raises:
        ValueError: when the file cannot be read or is not such a message in text format.
    """
    name = message_class.DESCRIPTOR.full_name
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as error:
        raise ValueError(f"{flag}: cannot read {path}: {error.strerror}. Received: {flag}={path}") from error
    message = message_class()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ValueError(f"{flag}: {path} is not a {name} in text format: {error}. Received: {flag}={path}") from error
    return message
