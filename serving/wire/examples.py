"""The tf.Example codec of Classify, Regress and MultiInference: `Input` protos and REST JSON.

TF Serving feeds these requests' signatures one string tensor of serialized tf.Examples. With a
context (`example_list_with_context`), each example is the context's bytes followed by the
example's: protobuf merges concatenated messages, so an example's feature overrides the
context's of the same name.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import input_pb2

from ..errors import invalid_argument


def serialized_examples(model_input: input_pb2.Input) -> np.ndarray:
    """The string tensor TF Serving feeds: one serialized tf.Example per example, shape (N,).

    Raises:
        ServingError: INVALID_ARGUMENT `Input is empty.` when there is no example.
    """
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        listed = model_input.example_list_with_context
        context = listed.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in listed.examples]
    else:
        serialized = []
    if not serialized:
        raise invalid_argument("Input is empty.")
    array = np.empty(len(serialized), dtype=object)
    array[:] = serialized
    return array


def json_type(value) -> str:
    """The name rapidjson (TF Serving's JSON parser) gives a value's type, for error messages."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def is_b64(value) -> bool:
    """A `{"b64": "..."}` object (only that key, holding a string): binary data in TF Serving's JSON."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value: dict) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise invalid_argument("Unable to base64 decode") from error


_KINDS = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def _add_value(feature: feature_pb2.Feature, name: str, value) -> None:
    """Appends one JSON value to a Feature, TF Serving's way (its kind is set by the first value)."""
    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_b64(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, bool):
        kind, converted = "int64_list", int(value)
    elif isinstance(value, dict):
        kind, converted = "bytes_list", decode_b64(value)
    elif isinstance(value, str):
        kind, converted = "bytes_list", value.encode("utf-8")
    elif isinstance(value, float):
        kind, converted = "float_list", value
    elif value >= 1 << 64 or value < -(1 << 63):  # beyond int64 and uint64 rapidjson reads a double
        kind, converted = "float_list", float(value)
    elif value >= 1 << 63:
        raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
    else:
        kind, converted = "int64_list", value
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        raise invalid_argument(f"Unexpected element type in feature: {name} expecting type: {_KINDS[current]}")
    getattr(feature, kind).value.append(converted)


def example_from_json(value) -> example_pb2.Example:
    """A tf.Example from a JSON object of features (`{"x": 2.0, "tags": ["a", "b"]}`)."""
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_value(feature, name, item)
        example.features.feature[name].CopyFrom(feature)
    return example


def input_from_json(document: dict, debug_string) -> input_pb2.Input:
    """The `Input` of a REST `:classify`/`:regress` body (`examples`, optional `context`).

    Args:
        document: the parsed request body (a JSON object).
        debug_string: renders the document in error messages as TF Serving does.
    """
    model_input = input_pb2.Input()
    has_context = "context" in document
    if has_context:
        model_input.example_list_with_context.context.CopyFrom(example_from_json(document["context"]))
    if "examples" not in document:
        # TF Serving says "classify" for both verbs.
        raise invalid_argument(
            f"JSON Value: {debug_string(document)} When method is classify, key 'examples' is expected "
            "and was not found"
        )
    examples = document["examples"]
    if not isinstance(examples, list):
        raise invalid_argument(f"JSON Value: {debug_string(document)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument(f"JSON Value: {debug_string(document)} 'examples' value is an empty array")
    listed = model_input.example_list_with_context if has_context else model_input.example_list
    for value in examples:
        listed.examples.add().CopyFrom(example_from_json(value))
    return model_input
