"""TF Serving's own test cases, on the tiny SavedModels of its tests, against the server under test.

The cases come from tensorflow/serving (`model_servers/tensorflow_model_server_test.py`,
`model_servers/http_rest_api_handler_test.cc`, `model_servers/get_model_status_impl_test.cc`,
`servables/tensorflow/predict_impl_test.cc`, `get_model_metadata_impl_test.cc`,
`multi_inference_test.cc`, `classifier.cc`/`regressor.cc`): the same inputs, outputs, status
codes, HTTP codes and error texts; the test code is ours. The models are built by
`upstream_models.py` (y = 0.5 x + 2 and its family).

By default the suite builds the models and serves them with `ModelServer`. To run it against a
real `tensorflow_model_server`, write the models with `python tests/serving/upstream_models.py DIR`,
start the server with `--model_config_file=DIR/models.config` and set `KERAS_FCN_UPSTREAM_GRPC`,
`KERAS_FCN_UPSTREAM_REST` and `KERAS_FCN_UPSTREAM_BASE_PATH=DIR`; the cases that start servers of
their own (a bad model, a bad config file) are then skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import upstream_models
from serving_testing import wait_until
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
REGRESS, CLASSIFY = "tensorflow/serving/regress", "tensorflow/serving/classify"
TWO_VERSIONS = upstream_models.TWO_VERSIONS
TF1_AND_TF2 = ["default", "half_plus_two_ref", "half_plus_two_tf2"]  # resource, reference variables, TF2


@dataclasses.dataclass
class Upstream:
    grpc_address: str
    rest_url: str
    base_path: str
    local: bool  # a ModelServer of ours (cases that start their own servers run only then)
    channel: grpc.Channel

    @property
    def predictions(self):
        return prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    @property
    def models(self):
        return model_service_pb2_grpc.ModelServiceStub(self.channel)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    grpc_address = os.environ.get("KERAS_FCN_UPSTREAM_GRPC")
    server = None
    if grpc_address:
        rest_url = os.environ.get("KERAS_FCN_UPSTREAM_REST", "http://localhost:8501")
        base_path = os.environ["KERAS_FCN_UPSTREAM_BASE_PATH"]
    else:
        from keras_fcn.serving import ModelServer

        base_path = str(tmp_path_factory.mktemp("upstream"))
        config = upstream_models.write_all(base_path)
        server = ModelServer(model_config_file=config, port=0, rest_port=0).start()
        grpc_address, rest_url = server.grpc_address, server.rest_address
    channel = grpc.insecure_channel(grpc_address)
    try:
        yield Upstream(grpc_address, rest_url, base_path, server is not None, channel)
    finally:
        channel.close()
        if server is not None:
            server.stop()


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def assert_error(call, code: grpc.StatusCode, text: str = "") -> None:
    error = rpc_error(call)
    assert error.code() == code, error.details()
    assert text in error.details()


def http(upstream, method: str, path: str, body=None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(upstream.rest_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def x_request(model: str = "default", signature: str = "", value: float = 2.0, dims=(1,), filter_y=False):
    """TF Serving's `VerifyPredictRequest`: x = [2.0] of shape [1] (not the signature's [-1, 1])."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["x"].dtype = types_pb2.DT_FLOAT
    request.inputs["x"].float_val.append(value)
    for size in dims:
        request.inputs["x"].tensor_shape.dim.add(size=size)
    if filter_y:
        request.output_filter.append("y")
    return request


def examples_input(message, *values, feature: str = "x"):
    for value in values:
        example = message.input.example_list.examples.add()
        example.features.feature[feature].float_list.value.append(value)
    return message


def assert_model_spec(spec, name: str, signature: str, version: int = 123) -> None:
    assert (spec.name, spec.signature_name, spec.version.value) == (name, signature, version)


# --- tensorflow_model_server_test.py ------------------------------------------------------------


def test_get_model_status(upstream):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    (status,) = upstream.models.GetModelStatus(request, timeout=20).model_version_status
    assert status.version == 123 and status.status.error_code == 0
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_get_model_metadata(upstream):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "default"
    result = upstream.predictions.GetModelMetadata(request, timeout=20)
    assert result.model_spec.name == "default" and result.model_spec.version.value == 123
    assert list(result.metadata) == ["signature_def"]


@pytest.mark.parametrize("model", TF1_AND_TF2)
def test_classify(upstream, model):
    request = examples_input(classification_pb2.ClassificationRequest(), 2.0)
    request.model_spec.name, request.model_spec.signature_name = model, "classify_x_to_y"
    result = upstream.predictions.Classify(request, timeout=20)
    (classifications,) = result.result.classifications
    (entry,) = classifications.classes
    assert entry.score == 3.0 and entry.label == ""
    assert_model_spec(result.model_spec, model, "classify_x_to_y")


@pytest.mark.parametrize("model", TF1_AND_TF2)
def test_regress(upstream, model):
    request = examples_input(regression_pb2.RegressionRequest(), 2.0)
    request.model_spec.name, request.model_spec.signature_name = model, "regress_x_to_y"
    result = upstream.predictions.Regress(request, timeout=20)
    assert [r.value for r in result.result.regressions] == [3.0]
    assert_model_spec(result.model_spec, model, "regress_x_to_y")


@pytest.mark.parametrize("model", TF1_AND_TF2)
def test_multi_inference(upstream, model):
    request = examples_input(inference_pb2.MultiInferenceRequest(), 2.0)
    for signature, method in (("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY)):
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = model, signature
    result = upstream.predictions.MultiInference(request, timeout=20)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for task, entry in zip(request.tasks, result.results, strict=True):
        assert_model_spec(entry.model_spec, model, task.model_spec.signature_name)


@pytest.mark.parametrize("filter_y", [True, False])
@pytest.mark.parametrize("model", TF1_AND_TF2)
def test_predict(upstream, model, filter_y):
    result = upstream.predictions.Predict(x_request(model, filter_y=filter_y), timeout=20)
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [3.0]
    assert_model_spec(result.model_spec, model, "serving_default")


@pytest.mark.parametrize(("model", "expected"), [("default", 3.0), ("half_plus_three", 4.0)])
def test_good_model_config(upstream, model, expected):
    for filter_y in (True, False):
        result = upstream.predictions.Predict(x_request(model, filter_y=filter_y), timeout=20)
        assert list(result.outputs["y"].float_val) == [expected]
        assert_model_spec(result.model_spec, model, "serving_default")


def test_bad_model_config_stops_the_server(upstream, tmp_path, capsys):
    if not upstream.local:
        pytest.skip("starts a server of its own")
    from keras_fcn.cli import main

    config = tmp_path / "bad_model_config.txt"
    config.write_text("improperly formatted file")  # TF Serving's bad_model_config.txt
    assert main(["serve", "--model_config_file", str(config), "--port", "0", "--rest_api_port", "0"]) == 2
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in capsys.readouterr().err


def test_a_model_that_cannot_load_stops_the_start(upstream, tmp_path):
    if not upstream.local:
        pytest.skip("starts a server of its own")
    from keras_fcn.serving import ModelServer

    upstream_models.bad_model(upstream_models.version_dir(str(tmp_path / "bad_half_plus_two")))
    server = ModelServer("default", str(tmp_path / "bad_half_plus_two"), port=0, rest_port=None, poll_seconds=0.05)
    with pytest.raises(RuntimeError) as caught:
        server.start()
    message = str(caught.value)
    # TF Serving: "{" + ("{" + ServableId.DebugString() + " due to error: ..." + "}, ")... + "}"
    assert message.startswith("1 model(s) did not become available: {{{name: default version: 123} due to error: ")
    assert "Could not find SavedModel .pb or .pbtxt at supplied export directory path" in message
    assert server.grpc_port is None  # nothing was served


@pytest.mark.parametrize(
    ("model", "signature", "expected"),
    [
        ("tf_saved_model_save", "serving_default", 12.0),
        ("tf_saved_model_save_multiple_signatures", "custom_signature_key", 2.0),
        ("tf_saved_model_save_multiple_signatures", "serving_default", 1.0),
    ],
)
def test_tf_saved_model_save(upstream, model, signature, expected):
    result = upstream.predictions.Predict(x_request(model, signature, filter_y=True), timeout=20)
    assert list(result.outputs["y"].float_val) == [expected]
    assert_model_spec(result.model_spec, model, signature)


def test_classify_rest(upstream):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert http(upstream, "POST", "/v1/models/default:classify", body) == (200, {"results": [[["", 3.0]]]})


def test_regress_rest(upstream):
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert http(upstream, "POST", "/v1/models/default:regress", body) == (200, {"results": [3.0]})


def test_predict_rest(upstream):
    reply = http(upstream, "POST", "/v1/models/default:predict", {"instances": [2.0, 3.0, 4.0]})
    assert reply == (200, {"predictions": [3.0, 3.5, 4.0]})
    reply = http(upstream, "POST", "/v1/models/default:predict", {"inputs": [2.0, 3.0, 4.0]})
    assert reply == (200, {"outputs": [3.0, 3.5, 4.0]})


def test_get_status_rest(upstream):
    ok = {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert http(upstream, "GET", "/v1/models/default") == (200, {"model_version_status": [ok]})


def _tensor_info(name: str, dtype: str, dims) -> dict:
    """A TensorInfo as TF Serving prints it: every field, `dims=None` for an unknown rank."""
    shape = {"dim": [{"size": str(d), "name": ""} for d in dims or []], "unknown_rank": dims is None}
    return {"dtype": dtype, "tensor_shape": shape, "name": name}


def _half_plus_two_metadata(model: str, classify_x2_to_y3: bool) -> dict:
    """The metadata TF Serving prints for the TF1 half_plus_two (its tests' JSON files hold the same)."""
    examples = _tensor_info("tf_example:0", "DT_STRING", None)
    column = {name: _tensor_info(f"{name}:0", "DT_FLOAT", [-1, 1]) for name in ("x", "x2", "y", "y2", "y3")}

    def signature(inputs, outputs, method):
        return {"inputs": inputs, "outputs": outputs, "method_name": method, "defaults": {}}

    signatures = {
        "serving_default": signature({"x": column["x"]}, {"y": column["y"]}, "tensorflow/serving/predict"),
        "regress_x_to_y": signature({"inputs": examples}, {"outputs": column["y"]}, REGRESS),
        "regress_x_to_y2": signature({"inputs": examples}, {"outputs": column["y2"]}, REGRESS),
        "regress_x2_to_y3": signature({"inputs": column["x2"]}, {"outputs": column["y3"]}, REGRESS),
        "classify_x_to_y": signature({"inputs": examples}, {"scores": column["y"]}, CLASSIFY),
    }
    if classify_x2_to_y3:
        signatures["classify_x2_to_y3"] = signature({"inputs": column["x2"]}, {"scores": column["y3"]}, CLASSIFY)
    return {
        "model_spec": {"name": model, "signature_name": "", "version": "123"},
        "metadata": {"signature_def": {"signature_def": signatures}},
    }


def test_get_model_metadata_rest(upstream):
    expected = _half_plus_two_metadata("default", classify_x2_to_y3=False)
    assert http(upstream, "GET", "/v1/models/default/metadata") == (200, expected)


# --- http_rest_api_handler_test.cc --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "text"),
    [
        ("GET", "/v1/foo", "Malformed request"),
        ("POST", "/v1/foo", "Malformed request"),
        ("GET", "/v1/models", "Missing model name"),
        ("GET", "/v1/models/debug/model_name", "Malformed request"),
        ("POST", "/v1/models", "Malformed request"),
        ("GET", "/v1/models/foo:predict", "Malformed request"),
        ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
        ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
        ("POST", f"/v1/models/foo/versions/{(1 << 64) - 1}:regress", "Failed to convert version"),
        ("POST", "/v1/models/foo/metadata", "Malformed request"),
        ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
        ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
    ],
)
def test_unsupported_api_calls(upstream, method, path, text):
    code, reply = http(upstream, method, path, b"" if method == "POST" else None)
    assert code == 400 and text in reply["error"]


@pytest.mark.parametrize(
    "path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict", f"/v1/models/{TWO_VERSIONS}99:predict"]
)
def test_predict_model_name_version_errors(upstream, path):
    assert http(upstream, "POST", path, {"instances": [1]})[0] == 404


@pytest.mark.parametrize(
    ("path", "body", "text"),
    [
        (":predict", b"", "JSON Parse error: The document is empty"),
        (":predict", b"instances = [1, 2]", "JSON Parse error: Invalid value"),
        (":predict", {"instances": ["x", "y"]}, "not of expected type: float"),
        ("/labels/Version_Nonexistent:predict", {"instances": ["x", "y"]}, "Unrecognized servable version label"),
        (":predict", {"signature_name": 100}, "'signature_name' key must be a string value."),
    ],
)
def test_predict_request_errors(upstream, path, body, text):
    code, reply = http(upstream, "POST", f"/v1/models/{TWO_VERSIONS}{path}", body)
    assert code == 400 and text in reply["error"]


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (":predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]}, {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
        ("/versions/123:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
        ("/labels/Version_Label:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
        (
            "/versions/123:predict",
            {"signature_name": "serving_default", "instances": [3.0, 4.0]},
            {"predictions": [3.5, 4.0]},
        ),
        ("/versions/123:predict", {"signature_name": "serving_default", "inputs": [3.0, 4.0]}, {"outputs": [3.5, 4.0]}),
    ],
)
def test_predict_rest_handler(upstream, path, body, expected):
    assert http(upstream, "POST", f"/v1/models/{TWO_VERSIONS}{path}", body) == (200, expected)


@pytest.mark.parametrize("path", [":regress", "/versions/123:regress", "/labels/Version_Label:regress"])
def test_regress_rest_handler(upstream, path):
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    assert http(upstream, "POST", f"/v1/models/{TWO_VERSIONS}{path}", body) == (200, {"results": [42]})


@pytest.mark.parametrize(("path", "x", "score"), [(":classify", 20.0, 12), ("/labels/Version_Label:classify", 10.0, 7)])
def test_classify_rest_handler(upstream, path, x, score):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": x}]}
    assert http(upstream, "POST", f"/v1/models/{TWO_VERSIONS}{path}", body) == (200, {"results": [[["", score]]]})


@pytest.mark.parametrize("path", ["", "/versions/123", "/labels/Version_Label"])
def test_get_status_rest_handler(upstream, path):
    ok = {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert http(upstream, "GET", f"/v1/models/{TWO_VERSIONS}{path}") == (200, {"model_version_status": [ok]})


def test_get_model_metadata_rest_handler(upstream):
    expected = _half_plus_two_metadata(TWO_VERSIONS, classify_x2_to_y3=True)
    assert http(upstream, "GET", f"/v1/models/{TWO_VERSIONS}/metadata") == (200, expected)


# --- predict_impl_test.cc -----------------------------------------------------------------------


def _float_request(signature: str = "", alias: str = "x", version: int | None = 123) -> predict_pb2.PredictRequest:
    """A Predict request of `alias` = 2.0 with no shape at all (a scalar), as predict_impl_test sends."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "default"
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[alias].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.0]))
    return request


def test_missing_or_empty_model_spec(upstream):
    assert_error(lambda: upstream.predictions.Predict(predict_pb2.PredictRequest(), timeout=20), INVALID)
    request = predict_pb2.PredictRequest()
    request.model_spec.SetInParent()
    assert_error(lambda: upstream.predictions.Predict(request, timeout=20), INVALID)
    request.model_spec.name = "test"
    assert_error(lambda: upstream.predictions.Predict(request, timeout=20), NOT_FOUND)


def test_empty_input_list(upstream):
    request = _float_request()
    request.inputs.clear()
    assert_error(lambda: upstream.predictions.Predict(request, timeout=20), INVALID)


@pytest.mark.parametrize("alias", ["key", "x"], ids=["name", "type"])
def test_input_tensors_dont_match_or_have_wrong_type(upstream, alias):
    request = _float_request()
    request.inputs.clear()
    string = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"any_key"])
    string.tensor_shape.dim.add(size=1)
    request.inputs[alias].CopyFrom(string)
    request.output_filter.append("y")
    assert_error(lambda: upstream.predictions.Predict(request, timeout=20), INVALID)


def test_output_filters_dont_match_model_spec_outputs(upstream):
    request = _float_request()
    request.output_filter.append("output_filter")
    assert_error(lambda: upstream.predictions.Predict(request, timeout=20), INVALID)
    del request.output_filter[:]
    request.output_filter.append("y")
    upstream.predictions.Predict(request, timeout=20)
    request.output_filter.append("y")
    assert_error(lambda: upstream.predictions.Predict(request, timeout=20), INVALID, "duplicate output tensor alias")


@pytest.mark.parametrize(
    ("signature", "alias", "output", "expected"),
    [
        ("", "x", "y", 3.0),
        ("regress_x2_to_y3", "inputs", "outputs", 4.0),  # Predict runs regress signatures
        ("classify_x2_to_y3", "inputs", "scores", 4.0),  # and classify signatures
    ],
)
def test_prediction_success(upstream, signature, alias, output, expected):
    model = "default" if signature != "classify_x2_to_y3" else "half_plus_two_ref"
    request = _float_request(signature, alias)
    request.model_spec.name = model
    response = upstream.predictions.Predict(request, timeout=20)
    want = predict_pb2.PredictResponse()
    want.model_spec.CopyFrom(request.model_spec)
    want.model_spec.signature_name = signature or "serving_default"
    want.outputs[output].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[expected]))
    want.outputs[output].tensor_shape.SetInParent()  # a scalar: shape [] present, as TF writes it
    assert response == want


@pytest.mark.parametrize("model", ["default", "half_plus_two_ref"])
@pytest.mark.parametrize("dims", [(1,), (), (2, 2), (3, 1)])
def test_predict_feeds_the_shape_sent(upstream, model, dims):
    """Shapes [1], [], [2, 2] against a [-1, 1] signature are fed as sent, as TF Serving does."""
    request = x_request(model, dims=dims)
    count = int(np.prod(dims))
    del request.inputs["x"].float_val[:]
    request.inputs["x"].float_val.extend(np.arange(count, dtype=np.float32).tolist())
    result = upstream.predictions.Predict(request, timeout=20)
    assert [d.size for d in result.outputs["y"].tensor_shape.dim] == list(dims)
    assert list(result.outputs["y"].float_val) == (0.5 * np.arange(count) + 2).tolist()


def test_prediction_with_customized_signatures(upstream):
    """The counter model: stateful signatures with no input or no output filter, in a TF1 session."""

    def call(signature: str, delta: float | None = None, filter_output: bool = False) -> float:
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = "counter", signature
        if delta is not None:
            request.inputs["delta"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[delta]))
        if filter_output:
            request.output_filter.append("output")
        response = upstream.predictions.Predict(request, timeout=20)
        assert_model_spec(response.model_spec, "counter", signature)
        return list(response.outputs["output"].float_val)

    assert call("reset_counter") == [0.0]  # the server may have counted before
    assert call("get_counter") == [0.0]
    assert call("incr_counter") == [1.0]
    assert call("reset_counter") == [0.0]
    assert call("incr_counter", filter_output=True) == [1.0]
    assert call("incr_counter_by", delta=3.0) == [4.0]


# --- get_model_status_impl_test.cc --------------------------------------------------------------


def test_get_model_status_errors(upstream):
    status = upstream.models.GetModelStatus
    assert_error(lambda: status(get_model_status_pb2.GetModelStatusRequest(), timeout=20), INVALID)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nonexistent_model"
    assert_error(lambda: status(request, timeout=20), NOT_FOUND, "Could not find any versions of model")
    request.model_spec.name = "two_versions_both"
    request.model_spec.version.value = 125
    assert_error(lambda: status(request, timeout=20), NOT_FOUND, "Could not find version 125 of model")


def test_get_model_status_versions(upstream):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "two_versions_both"
    response = upstream.models.GetModelStatus(request, timeout=20)
    assert {s.version for s in response.model_version_status} == {123, 124}
    assert all(s.status.error_code == 0 and s.status.error_message == "" for s in response.model_version_status)
    request.model_spec.version.value = 123
    (status,) = upstream.models.GetModelStatus(request, timeout=20).model_version_status
    assert status.version == 123 and status.status.error_code == 0


# --- get_model_metadata_impl_test.cc ------------------------------------------------------------


def test_metadata_field_list_errors(upstream):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    assert_error(lambda: upstream.predictions.GetModelMetadata(request, timeout=20), INVALID)
    request.metadata_field.append("some_stuff")
    assert_error(lambda: upstream.predictions.GetModelMetadata(request, timeout=20), INVALID)


def test_metadata_missing_or_empty_model_spec(upstream):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    assert_error(lambda: upstream.predictions.GetModelMetadata(request, timeout=20), INVALID)
    request.model_spec.SetInParent()
    assert_error(lambda: upstream.predictions.GetModelMetadata(request, timeout=20), INVALID)
    request.model_spec.name = "test"
    assert_error(lambda: upstream.predictions.GetModelMetadata(request, timeout=20), NOT_FOUND)


@pytest.mark.parametrize("model", TF1_AND_TF2)
def test_metadata_returns_the_saved_models_signatures(upstream, model):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    request.model_spec.version.value = 123
    response = upstream.predictions.GetModelMetadata(request, timeout=20)
    assert response.model_spec == request.model_spec
    received = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(received)
    saved = saved_model_pb2.SavedModel()
    folder = upstream_models.version_dir(os.path.join(upstream.base_path, upstream_models.MODELS[model][0]))
    with open(os.path.join(folder, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    assert dict(received.signature_def) == dict(saved.meta_graphs[0].signature_def)


# --- multi_inference_test.cc, classifier.cc, regressor.cc ---------------------------------------


def _multi(model: str, *tasks, values=(2.0,)):
    request = examples_input(inference_pb2.MultiInferenceRequest(), *values)
    for name, signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name, task.model_spec.signature_name = name or model, signature
    return request


@pytest.mark.parametrize("model", ["default", "half_plus_two_tf2"])
@pytest.mark.parametrize(
    ("tasks", "values", "code", "text"),
    [
        ([("", "regress_x_to_y", REGRESS)], (), INVALID, "Input is empty"),
        ([("", "ThisSignatureDoesNotExist", REGRESS)], (2.0,), INVALID, "signature not found"),
        (
            [("", "regress_x_to_y", REGRESS), ("ModelDoesNotExist", "regress_x_to_y", REGRESS)],
            (2.0,),
            INVALID,
            "must access the same model name",
        ),
        (
            [("", "regress_x_to_y", REGRESS), ("", "regress_x_to_y", REGRESS)],
            (2.0,),
            INVALID,
            "Duplicate evaluation of signature: regress_x_to_y",
        ),
        (
            [("", "serving_default", "tensorflow/serving/predict")],
            (2.0,),
            grpc.StatusCode.UNIMPLEMENTED,
            "Unsupported signature",
        ),
    ],
    ids=["missing-input", "undefined-signature", "two-models", "duplicate", "predict-method"],
)
def test_multi_inference_errors(upstream, model, tasks, values, code, text):
    request = _multi(model, *tasks, values=values)
    assert_error(lambda: upstream.predictions.MultiInference(request, timeout=20), code, text)


@pytest.mark.parametrize("model", ["default", "half_plus_two_tf2"])
def test_multi_inference_results(upstream, model):
    request = _multi(model, ("", "regress_x_to_y", REGRESS), ("", "regress_x_to_y2", REGRESS))
    response = upstream.predictions.MultiInference(request, timeout=20)
    want = inference_pb2.MultiInferenceResponse()
    for task, value in zip(request.tasks, (3.0, 4.0), strict=True):  # y = 0.5x + 2, y2 = 0.5x + 3
        result = want.results.add()
        result.model_spec.CopyFrom(task.model_spec)
        result.model_spec.version.value = 123
        result.regression_result.regressions.add(value=value)
    assert response == want


@pytest.mark.parametrize("kind", ["none", "example_list", "example_list_with_context"])
@pytest.mark.parametrize("method", ["Classify", "Regress"])
def test_empty_input(upstream, kind, method):
    message = (classification_pb2.ClassificationRequest if method == "Classify" else regression_pb2.RegressionRequest)()
    message.model_spec.name = "default"
    message.model_spec.signature_name = "classify_x_to_y" if method == "Classify" else "regress_x_to_y"
    if kind != "none":
        getattr(message.input, kind).SetInParent()
    if kind == "example_list_with_context":
        message.input.example_list_with_context.context.features.feature["x"].float_list.value.append(2.0)
    assert_error(lambda: getattr(upstream.predictions, method)(message, timeout=20), INVALID, "Input is empty")


@pytest.mark.parametrize("model", TF1_AND_TF2)
def test_example_list_with_context(upstream, model):
    """Each example is the context merged with it: x from the context, then an example's own x."""
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = model, "regress_x_to_y"
    listed = request.input.example_list_with_context
    listed.context.features.feature["x"].float_list.value.append(2.0)
    listed.examples.add()
    listed.examples.add().features.feature["x2"].float_list.value.append(7.0)
    result = upstream.predictions.Regress(request, timeout=20)
    assert [r.value for r in result.result.regressions] == [3.0, 3.0]


@pytest.mark.parametrize(
    ("method", "signature", "text"),
    [
        ("Classify", "regress_x_to_y", 'Expected classification signature outputs to contain at least one of'),
        ("Regress", "classify_x_to_y", "No regression outputs found in SignatureDef"),
        ("Classify", "nope", "No signature was found with the name: nope"),
        ("Regress", "serving_default", "No regression inputs found in SignatureDef"),
    ],
)
def test_classify_and_regress_signature_errors(upstream, method, signature, text):
    message = (classification_pb2.ClassificationRequest if method == "Classify" else regression_pb2.RegressionRequest)()
    message.model_spec.name, message.model_spec.signature_name = "default", signature
    examples_input(message, 2.0)
    assert_error(lambda: getattr(upstream.predictions, method)(message, timeout=20), INVALID, text)


def test_classify_rest_with_context_and_several_examples(upstream):
    body = {"signature_name": "regress_x_to_y", "context": {"x": 4.0}, "examples": [{}, {"x": 10.0}]}
    assert http(upstream, "POST", "/v1/models/default:regress", body) == (200, {"results": [4.0, 7.0]})


def test_a_version_that_fails_to_load_reports_its_error(upstream, tmp_path):
    """A broken new version: END with the load error's code and text; the version before keeps serving."""
    if not upstream.local:
        pytest.skip("starts a server of its own")
    from keras_fcn.serving import ModelServer

    base = tmp_path / "half_plus_two"
    shutil.copytree(upstream_models.version_dir(os.path.join(upstream.base_path, "half_plus_two")), base / "00000123")
    with ModelServer("default", str(base), port=0, rest_port=0, poll_seconds=0.05) as server:
        upstream_models.bad_model(upstream_models.version_dir(str(base), 124))
        local = dataclasses.replace(upstream, rest_url=server.rest_address)

        def statuses():
            return {s["version"]: s for s in http(local, "GET", "/v1/models/default")[1]["model_version_status"]}

        wait_until(lambda: statuses().get("124", {}).get("state") == "END", 30, "version 124 to fail")
        failed = statuses()["124"]["status"]
        assert failed["error_code"] == "NOT_FOUND"
        assert failed["error_message"].startswith("Could not find SavedModel .pb or .pbtxt at supplied export")
        assert statuses()["123"]["state"] == "AVAILABLE"
        body = {"instances": [2.0]}
        assert http(local, "POST", "/v1/models/default:predict", body) == (200, {"predictions": [3.0]})


@pytest.mark.parametrize(("origin", "code"), [("https://example.com", 200), (None, 400)])
def test_cors_preflight(upstream, origin, code):
    """`http_server.cc`: OPTIONS is answered 200 when an http(s) Origin is given, else 400, with no body."""
    request = urllib.request.Request(upstream.rest_url + "/v1/models/default:predict", method="OPTIONS")
    if origin:
        request.add_header("Origin", origin)
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            status, body = reply.status, reply.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    assert (status, body) == (code, b"")


def test_signature_method_name_check(upstream, tmp_path):
    """`--enable_signature_method_name_check`: each request kind takes only its own method's signatures."""
    if not upstream.local:
        pytest.skip("starts a server of its own")
    from keras_fcn.serving import ModelServer

    base = str(tmp_path / "half_plus_two")
    shutil.copytree(upstream_models.version_dir(os.path.join(upstream.base_path, "half_plus_two")), f"{base}/00000123")
    server = ModelServer("default", base, port=0, rest_port=None, enable_signature_method_name_check=True)
    with server, grpc.insecure_channel(server.grpc_address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = examples_input(classification_pb2.ClassificationRequest(), 2.0)
        request.model_spec.name, request.model_spec.signature_name = "default", "regress_x_to_y"
        text = f"Expected classification signature method_name to be {CLASSIFY}. Was: {REGRESS}"
        assert_error(lambda: stub.Classify(request, timeout=20), INVALID, text)
        request = examples_input(regression_pb2.RegressionRequest(), 2.0)
        request.model_spec.name, request.model_spec.signature_name = "default", "classify_x_to_y"
        text = f"Expected regression signature method_name to be {REGRESS}. Was: {CLASSIFY}"
        assert_error(lambda: stub.Regress(request, timeout=20), INVALID, text)
        request.model_spec.signature_name = "regress_x_to_y"
        assert [r.value for r in stub.Regress(request, timeout=20).result.regressions] == [3.0]
        # Predict still runs classify and regress signatures (the three TF Serving methods).
        response = stub.Predict(_float_request("regress_x2_to_y3", "inputs"), timeout=20)
        assert list(response.outputs["outputs"].float_val) == [4.0]
