"""The REST JSON codec against the cases of TF Serving's `util/json_tensor_test.cc` (facts, our code)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, regression_pb2

from keras_fcn.serving.errors import ServingError
from keras_fcn.serving.wire import json_codec


def infos(**dtypes) -> dict:
    return {alias: meta_graph_pb2.TensorInfo(dtype=dtype) for alias, dtype in dtypes.items()}


FLOAT, STRING, INT32 = 1, 7, 3  # DataType enum values
AB = {"a": FLOAT, "b": FLOAT}


def inputs(body: dict, **dtypes):
    return json_codec.predict_inputs(body, infos(**dtypes))


def as_strings(text: str):
    """A JSON reply with every number kept as its text (TF Serving's CompareJsonAllValuesAsStrings)."""
    return json.loads(text, parse_float=str, parse_int=str, parse_constant=str)


def error_of(call) -> str:
    with pytest.raises(ServingError) as caught:
        call()
    return caught.value.message


def test_mixed_numbers_for_a_float_tensor():
    arrays, row = inputs({"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}, default=FLOAT)
    assert row and arrays["default"].dtype == np.float32
    np.testing.assert_array_equal(arrays["default"], np.float32([1, 2, 3, 4, 5.003, 0.007, 0]))


@pytest.mark.parametrize("text", ["1435774380", "1435774380.0"])
def test_float_precision_loss_is_accepted_either_way(text):
    arrays, _ = inputs(json_codec.parse_json(f'{{"instances": [{text}]}}'.encode()), default=FLOAT)
    assert arrays["default"].tolist() == [float(np.float32(1435774380))]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(sys.float_info.max, np.inf), (-sys.float_info.max, -np.inf), (sys.float_info.min, 0.0)],
)
def test_floats_beyond_float32_become_inf_or_zero(value, expected):
    arrays, _ = inputs(json_codec.parse_json(json.dumps({"instances": [value]}).encode()), default=FLOAT)
    assert arrays["default"].tolist() == [expected]


def test_six_digit_float_output():
    values = np.float32([[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]])
    reply = as_strings(json_codec.tensors_json({"float_tensor": values}, row_format=True))
    assert reply == {"predictions": [["9e+06", "999999.0", "0.5"], ["0.0003", "3e-05", "555557.5"]]}


def test_non_finite_float_output():
    values = np.float32([[np.nan, np.inf], [3, -np.inf]])
    reply = as_strings(json_codec.tensors_json({"float_tensor": values}, row_format=True))
    assert reply == {"predictions": [["NaN", "Infinity"], ["3.0", "-Infinity"]]}


def test_bytes_outputs_are_base64():
    values = np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object)
    reply = json.loads(json_codec.tensors_json({"str_tensor_bytes": values}, row_format=True))
    assert reply == {
        "predictions": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]
    }


@pytest.mark.parametrize(
    ("outputs", "text"),
    [
        ({}, "empty tensor map"),
        ({"tensor": np.complex64([1, 2])}, "tensor type: complex64"),
        ({"tensor": np.int32(1)}, "no shape information"),
        ({"a": np.int32([1, 2]), "b": np.int32([1])}, "inconsistent batch size"),
    ],
)
def test_output_errors(outputs, text):
    assert text in error_of(lambda: json_codec.tensors_json(outputs, row_format=True))


@pytest.mark.parametrize(
    ("body", "dtypes", "text"),
    [
        ({"inputs": [[1, 2], [3]]}, {"x": FLOAT}, "Encountered list at unexpected size: 1 at level: 1"),
        ({"instances": [[1, 2], [3]]}, {"x": FLOAT}, "Expecting tensor size: 2 but got: 1"),
        ({"inputs": [1, [2]]}, {"x": FLOAT}, "Encountered list at unexpected level: 1 expected < 1"),
        ({"instances": [{"a": [1, 2], "b": 1}, {"a": [1], "b": 2}]}, AB, "Expecting tensor size"),
        ({"instances": [{"a": [[1, 2]], "b": 1}, {"a": [[1], [2]], "b": 2}]}, AB, "Expecting shape"),
        ({"instances": [{"a": 1, "b": 1}, [1]]}, AB, "Expecting object but got list"),
        ({"instances": [1, {"a": 1}]}, {"a": FLOAT}, "Expecting value/list but got object"),
        ({"instances": [True, 1.0]}, {"x": FLOAT}, "JSON Value: true Type: True is not of expected type: float"),
        ({"instances": [1.5]}, {"x": INT32}, "is not of expected type: int32"),
        ({"instances": ["a"]}, {"x": STRING, "y": STRING}, "instances is a plain list"),
        ({"inputs": {"x": [1]}}, {"x": FLOAT, "y": FLOAT}, "Missing named input: y in 'inputs' object."),
        ({"instances": [1], "inputs": [1]}, {"x": FLOAT}, "expecting only one of 'inputs' or 'instances'"),
        ({"instances": []}, {"x": FLOAT}, "No values in 'instances' array"),
        ({}, {"x": FLOAT}, "Missing 'inputs' or 'instances' key"),
        ({"instances": [{"b64": "not base64!"}]}, {"x": STRING}, "Unable to base64 decode"),
    ],
)
def test_input_errors(body, dtypes, text):
    assert text in error_of(lambda: inputs(body, **dtypes))


@pytest.mark.parametrize("booleans", [True, False])
def test_large_numeric_bodies_take_the_same_values(booleans):
    image = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3)).tolist()
    arrays, _ = json_codec.predict_inputs({"instances": image}, infos(x=4), booleans)  # DT_UINT8
    np.testing.assert_array_equal(arrays["x"], np.array(image, np.uint8))
    mixed = [[1, 2.5], [3, 4]]
    arrays, _ = json_codec.predict_inputs({"inputs": mixed}, infos(x=FLOAT), booleans)
    np.testing.assert_array_equal(arrays["x"], np.float32(mixed))
    body, as_int = {"inputs": mixed}, infos(x=INT32)
    assert "not of expected type: int32" in error_of(lambda: json_codec.predict_inputs(body, as_int, booleans))


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"", "JSON Parse error: The document is empty"),
        (b"instances = [1, 2]", "JSON Parse error: Invalid value"),
        (b'{"a": 1 "b": 2}', "JSON Parse error: Missing a comma or '}' after an object member."),
        (b"[1, 2", "JSON Parse error: Missing a comma or ']' after an array element."),
        (b"[1]", "Is not object"),
    ],
)
def test_parse_errors(body, text):
    assert text in error_of(lambda: json_codec.parse_json(body))


def test_parsing_stops_after_the_document():
    assert json_codec.parse_json(b'{"instances": [1]} trailing') == {"instances": [1]}


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"signature_name": ["hello"], "examples": [{"n": ["foo"]}]}, "'signature_name' key must be a string"),
        ({"context": [{"names": ["foo", "bar"]}]}, "Example must be JSON object"),
        ({"examples": {"names": ["foo", "bar"]}}, "list/array"),
        ({"examples": [[{"names": ["foo", "bar"]}]]}, "Example must be JSON object"),
        ({"examples": [{"names": [10, None]}]}, "names has element with unexpected JSON type: Null"),
        ({"examples": [{"names": [10, 10.0]}]}, "feature: names expecting type: int64"),
        ({"examples": [{"names": [10, {"test": 10}]}]}, "names has element with unexpected JSON type: Object"),
        ({"examples": [{"names": [[10], 20]}]}, "names has element with unexpected JSON type: Array"),
        ({"examples": [{"names": [20, 18446744073709551603]}]}, "Only int64_t is supported"),
    ],
)
def test_classify_regress_request_errors(body, text):
    document = json_codec.parse_json(json.dumps(body).encode())
    assert text in error_of(lambda: (json_codec.signature_name(document), json_codec.examples_input(document)))


def test_classify_regress_request_features():
    body = {"context": {"k": 1}, "examples": [{"f": [1.5, 2.0], "s": "x", "b": {"b64": "AAE="}, "t": True}]}
    model_input = json_codec.examples_input(json_codec.parse_json(json.dumps(body).encode()))
    listed = model_input.example_list_with_context
    assert list(listed.context.features.feature["k"].int64_list.value) == [1]
    features = listed.examples[0].features.feature
    assert list(features["f"].float_list.value) == [1.5, 2.0]
    assert list(features["s"].bytes_list.value) == [b"x"]
    assert list(features["b"].bytes_list.value) == [b"\x00\x01"]
    assert list(features["t"].int64_list.value) == [1]


def test_classification_and_regression_json():
    result = text_format.Parse(
        'classifications { classes { label: "car" score: 0.2 } classes { label: "bike" score: 0.7 } }',
        classification_pb2.ClassificationResult(),
    )
    assert json.loads(json_codec.classification_json(result)) == {"results": [[["car", 0.2], ["bike", 0.7]]]}
    result = regression_pb2.RegressionResult()
    for value in (0.2, np.inf, 1.0, -np.inf, np.nan):
        result.regressions.add(value=value)
    reply = as_strings(json_codec.regression_json(result))
    assert reply == {"results": ["0.2", "Infinity", "1.0", "-Infinity", "NaN"]}
    empty_classification = classification_pb2.ClassificationResult()
    assert "empty ClassificationResults" in error_of(lambda: json_codec.classification_json(empty_classification))
    empty_regression = regression_pb2.RegressionResult()
    assert "empty RegressionResults" in error_of(lambda: json_codec.regression_json(empty_regression))


# --- the values bound checked before a REST body is parsed ----------------------------------------


def _scalars(value) -> int:
    """The scalar values of a JSON document, counting an empty array or object as one (the bound does)."""
    if isinstance(value, list) and value:
        return sum(map(_scalars, value))
    if isinstance(value, dict) and value:
        return sum(map(_scalars, value.values()))
    return 1


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(",ab\"\\[]{} ", max_size=6),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(",k", max_size=3), children, max_size=4),
    max_leaves=60,
)


@settings(derandomize=True, database=None, max_examples=300, deadline=None)
@given(document=_JSON, indent=st.sampled_from([None, 1]))
def test_the_values_bound_never_refuses_a_body_within_the_limit(document, indent):
    from keras_fcn.serving.api import rest

    body = json.dumps(document, indent=indent).encode()
    exact = _scalars(document)
    rest.check_values_bound(body, exact)  # a body holding exactly the limit is never refused
    if exact > 1 and b'"' not in body:  # without strings the bound is exact
        with pytest.raises(ServingError, match=f"holds up to {exact} values, more than the {exact - 1} one"):
            rest.check_values_bound(body, exact - 1)
