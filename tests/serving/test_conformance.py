"""TF Serving conformance: the official gRPC stubs and plain HTTP against the server under test.

Nothing here imports the package's server or client: point `KERAS_FCN_SERVING_GRPC`,
`KERAS_FCN_SERVING_REST` and `KERAS_FCN_SERVING_BASE_PATH` at a real `tensorflow_model_server`
and the same tests run against it (see conftest.py). Answers are compared with the in-process
Keras model (numpy softmax of its logits) on the same images.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from serving_testing import build_test_model, confident, random_images, reference, wait_until
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

ATOL = 1e-5


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def request(target, signature="", version=None, **inputs) -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = target.model_name
    message.model_spec.signature_name = signature
    if version is not None:
        message.model_spec.version.value = version
    for alias, value in inputs.items():
        message.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return message


def stub(target):
    return prediction_service_pb2_grpc.PredictionServiceStub(target.channel)


def predict(target, message, timeout=60):
    response = stub(target).Predict(message, timeout=timeout)
    return response, {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}


def assert_matches(outputs: dict, expected: np.ndarray) -> None:
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=ATOL)
    sure = confident(expected)
    assert sure.mean() > 0.9
    np.testing.assert_array_equal(outputs["class_ids"][sure], expected.argmax(-1)[sure])


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def assert_still_serving(target) -> None:
    images = random_images(1, 16, 16, seed=9)
    _, outputs = predict(target, request(target, images=images))
    expected = reference(target.models[target.latest], images)
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=ATOL)


# --- Predict -----------------------------------------------------------------------------------


def test_default_signature_latest_version(target):
    images = random_images(2, 64, 80, seed=1)
    response, outputs = predict(target, request(target, images=images))
    assert response.model_spec.name == target.model_name
    assert response.model_spec.version.value == target.latest
    assert response.model_spec.signature_name == "serving_default"
    assert outputs["class_ids"].shape == (2, 64, 80) and outputs["class_ids"].dtype.kind == "i"
    assert outputs["probabilities"].shape == (2, 64, 80, 21) and outputs["probabilities"].dtype == np.float32
    assert_matches(outputs, reference(target.models[target.latest], images))
    assert len(np.unique(outputs["class_ids"])) > 2  # random score weights: a non-trivial class map


def test_encoded_signature_png(target):
    images = random_images(2, 32, 48, seed=2)
    message = request(target, "serve_encoded", image_bytes=np.array([png(x) for x in images], dtype=object))
    response, outputs = predict(target, message)
    assert response.model_spec.signature_name == "serve_encoded"
    expected = reference(target.models[target.latest], images)
    assert_matches(outputs, expected)
    maps = np.stack([np.asarray(Image.open(io.BytesIO(data))) for data in outputs["class_map_png_bytes"]])
    np.testing.assert_array_equal(maps, outputs["class_ids"])


def test_encoded_signature_jpeg(target):
    images = random_images(1, 48, 48, seed=3)
    data = jpeg(images[0])
    _, outputs = predict(target, request(target, "serve_encoded", image_bytes=np.array([data], dtype=object)))
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))[None]
    expected = reference(target.models[target.latest], decoded)
    # The signature decodes JPEG with libjpeg's accurate DCT, as Pillow does: the same pixels, the same answer.
    assert_matches(outputs, expected)


def test_explicit_version(target):
    images = random_images(1, 24, 24, seed=4)
    oldest = min(target.models)
    response, outputs = predict(target, request(target, version=oldest, images=images))
    assert response.model_spec.version.value == oldest
    assert_matches(outputs, reference(target.models[oldest], images))
    other = reference(target.models[target.latest], images)
    assert np.abs(outputs["probabilities"] - other).max() > 0.1  # the versions really differ


def test_output_filter(target):
    images = random_images(1, 16, 16, seed=5)
    message = request(target, "serve_encoded", image_bytes=np.array([png(images[0])], dtype=object))
    message.output_filter.append("class_map_png_bytes")
    _, outputs = predict(target, message)
    assert set(outputs) == {"class_map_png_bytes"}
    message.output_filter.append("no_such_output")
    error = rpc_error(lambda: stub(target).Predict(message, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no_such_output" in error.details()


def test_reply_over_30_mb(target):
    images = random_images(6, 256, 256, seed=6)  # 6 x 256 x 256 x 21 float32 = 33 MB of probabilities
    response, outputs = predict(target, request(target, images=images), timeout=300)
    assert response.ByteSize() > 30_000_000
    assert_matches(outputs, reference(target.models[target.latest], images))


def test_new_version_is_served_without_restart_or_failures(target):
    from keras_fcn.export import export_saved_model

    images = random_images(1, 16, 16, seed=7)
    failures, answered_by, stop = [], set(), threading.Event()

    def keep_asking():  # requests in flight while the new version loads and becomes the latest
        while not stop.is_set():
            try:
                response, _ = predict(target, request(target, images=images), timeout=30)
                answered_by.add(response.model_spec.version.value)
            except grpc.RpcError as error:
                failures.append(error)

    model = build_test_model(seed=3)
    thread = threading.Thread(target=keep_asking)
    thread.start()
    try:
        version = export_saved_model(model, target.base_path, verbose=False).version
        target.models[version] = model
        wait_until(lambda: version in answered_by, 120, f"version {version} to answer")
    finally:
        stop.set()
        thread.join()
    assert not failures, failures[0]
    assert answered_by >= {version - 1, version}
    response, outputs = predict(target, request(target, images=images))
    assert response.model_spec.version.value == version
    assert_matches(outputs, reference(model, images))


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "code"),
    [
        (lambda m: setattr(m.model_spec, "name", "no_such_model"), grpc.StatusCode.NOT_FOUND),
        (lambda m: m.model_spec.version.__setattr__("value", 987654), grpc.StatusCode.NOT_FOUND),
        (lambda m: setattr(m.model_spec, "signature_name", "nope"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
    ids=["unknown-model", "unknown-version", "unknown-signature"],
)
def test_unknown_model_version_signature(target, change, code):
    message = request(target, images=random_images(1, 8, 8))
    change(message)
    assert rpc_error(lambda: stub(target).Predict(message, timeout=30)).code() == code
    assert_still_serving(target)


@pytest.mark.parametrize(
    "inputs",
    [
        {"pixels": np.zeros((1, 8, 8, 3), np.uint8)},  # wrong input name
        {"images": np.zeros((1, 8, 8, 3), np.float32)},  # wrong dtype
        {"images": np.zeros((8, 8, 3), np.uint8)},  # wrong rank
        {"images": np.zeros((1, 8, 8, 4), np.uint8)},  # four channels
        {"images": np.zeros((1, 8, 8, 3), np.uint8), "extra": np.zeros((1,), np.float32)},
    ],
    ids=["name", "dtype", "rank", "channels", "extra-input"],
)
def test_invalid_inputs(target, inputs):
    message = request(target, **inputs)
    error = rpc_error(lambda: stub(target).Predict(message, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_still_serving(target)


def _png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming a huge size, followed by almost nothing."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00" * 64


def _bomb() -> bytes:
    """A real decompression bomb: an 8000 x 6000 black PNG of a few tens of kB."""
    buffer = io.BytesIO()
    Image.new("L", (8000, 6000)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "payload",
    [
        lambda: [b"this is not an image"],
        lambda: [b""],
        lambda: [png(random_images(1, 16, 16)[0])[:60]],  # truncated PNG
        lambda: [jpeg(random_images(1, 16, 16)[0])[:100]],  # truncated JPEG
        lambda: [_png_header(100_000, 100_000)],  # header claims 10 G pixels
        lambda: [_bomb()],
        lambda: [png(random_images(1, 16, 16)[0]), png(random_images(1, 24, 16)[0])],  # two sizes
        lambda: [],
    ],
    ids=["garbage", "empty", "cut-png", "cut-jpeg", "huge-header", "bomb", "two-sizes", "no-image"],
)
def test_bad_image_bytes(target, payload):
    data = payload()
    assert len(data) != 1 or len(data[0]) < 200_000  # small requests that would decode huge
    message = request(target, "serve_encoded", image_bytes=np.array(data, dtype=object).reshape(len(data)))
    error = rpc_error(lambda: stub(target).Predict(message, timeout=60))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert_still_serving(target)


def test_two_sizes_message_says_so(target):
    data = [png(random_images(1, 16, 16)[0]), png(random_images(1, 24, 16)[0])]
    message = request(target, "serve_encoded", image_bytes=np.array(data, dtype=object))
    assert "share a size" in rpc_error(lambda: stub(target).Predict(message, timeout=30)).details()


@pytest.mark.parametrize("method", ["Classify", "Regress"])
def test_classify_and_regress_refused_for_a_predict_model(target, method):
    kinds = {
        "Classify": classification_pb2.ClassificationRequest,
        "Regress": regression_pb2.RegressionRequest,
    }
    message = kinds[method]()
    message.model_spec.name = target.model_name
    message.input.example_list.examples.add()
    error = rpc_error(lambda: getattr(stub(target), method)(message, timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    # TF Serving's default (no --enable_signature_method_name_check) checks the signature's shape:
    # serving_default has no `inputs` input (Classify) and two outputs (Regress).
    expected = {"Classify": "No classification inputs found in SignatureDef", "Regress": "Expected one output Tensor."}
    assert expected[method] in error.details()


# --- metadata and status -----------------------------------------------------------------------


def test_metadata_matches_the_saved_model(target):
    message = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    message.model_spec.name = target.model_name
    response = stub(target).GetModelMetadata(message, timeout=30)
    assert response.model_spec.version.value == target.latest
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    saved = saved_model_pb2.SavedModel()
    with open(f"{target.base_path}/{target.latest}/saved_model.pb", "rb") as f:
        saved.ParseFromString(f.read())
    for name in ("serving_default", "serve_encoded"):
        assert signatures.signature_def[name] == saved.meta_graphs[0].signature_def[name]
    default = signatures.signature_def["serving_default"]
    assert default.inputs["images"].dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in default.inputs["images"].tensor_shape.dim] == [-1, -1, -1, 3]
    encoded = signatures.signature_def["serve_encoded"]
    assert set(encoded.outputs) == {"class_ids", "probabilities", "class_map_png_bytes"}
    assert encoded.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert encoded.outputs["probabilities"].dtype == tf.float32.as_datatype_enum


def test_model_status(target):
    models = model_service_pb2_grpc.ModelServiceStub(target.channel)
    message = get_model_status_pb2.GetModelStatusRequest()
    message.model_spec.name = target.model_name
    message.model_spec.version.value = target.latest
    response = models.GetModelStatus(message, timeout=30)
    (status,) = response.model_version_status
    assert status.version == target.latest
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0
    message.model_spec.name = "no_such_model"
    assert rpc_error(lambda: models.GetModelStatus(message, timeout=30)).code() == grpc.StatusCode.NOT_FOUND


# --- REST --------------------------------------------------------------------------------------


def http(target, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    method = "GET" if body is None else "POST"
    message = urllib.request.Request(target.rest_url + path, data=data, method=method)
    try:
        with urllib.request.urlopen(message, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


def test_rest_row_format_with_b64(target):
    images = random_images(2, 24, 32, seed=11)
    body = {"signature_name": "serve_encoded", "instances": [b64(png(x)) for x in images]}
    code, reply = http(target, f"/v1/models/{target.model_name}:predict", body)
    assert code == 200, reply
    rows = reply["predictions"]
    assert len(rows) == 2 and set(rows[0]) == {"class_ids", "probabilities", "class_map_png_bytes"}
    expected = reference(target.models[target.latest], images)
    assert_matches({k: np.array([row[k] for row in rows]) for k in ("class_ids", "probabilities")}, expected)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(rows[1]["class_map_png_bytes"]["b64"]))))
    np.testing.assert_array_equal(decoded, np.array(rows[1]["class_ids"]))


def test_rest_columnar_format_with_version(target):
    images = random_images(1, 16, 24, seed=12)
    oldest = min(target.models)
    body = {"signature_name": "serve_encoded", "inputs": {"image_bytes": [b64(png(images[0]))]}}
    code, reply = http(target, f"/v1/models/{target.model_name}/versions/{oldest}:predict", body)
    assert code == 200, reply
    outputs = {k: np.array(v) for k, v in reply["outputs"].items() if k != "class_map_png_bytes"}
    assert_matches(outputs, reference(target.models[oldest], images))


def test_rest_default_signature_pixels(target):
    images = random_images(1, 8, 8, seed=13)
    code, reply = http(target, f"/v1/models/{target.model_name}:predict", {"instances": images.tolist()})
    assert code == 200, reply
    assert_matches(
        {k: np.array([row[k] for row in reply["predictions"]]) for k in reply["predictions"][0]},
        reference(target.models[target.latest], images),
    )


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/v1/models/no_such_model:predict", {"instances": [[[[0, 0, 0]]]]}, 404),
        ("/v1/models/{name}/versions/987654:predict", {"instances": [[[[0, 0, 0]]]]}, 404),
        ("/v1/models/{name}:predict", {"signature_name": "nope", "instances": [[[[0, 0, 0]]]]}, 400),
        ("/v1/models/{name}:predict", {"instances": [{"pixels": [[[0, 0, 0]]]}]}, 400),
        ("/v1/models/{name}:predict", {"signature_name": "serve_encoded", "instances": [b64(b"junk")]}, 400),
        ("/v1/models/{name}/versions/99999999999999999999:predict", {"instances": [[[[0, 0, 0]]]]}, 400),
        ("/v1/models/{name}/versions/99999999999999999999", None, 400),
        ("/v1/models/{name}/versions/99999999999999999999/metadata", None, 400),
        ("/v1/models/{name}/versions/9223372036854775807", None, 404),
    ],
    ids=[
        "model",
        "version",
        "signature",
        "input-name",
        "corrupt-image",
        "huge-version",
        "huge-version-get",
        "huge-version-metadata",
        "int64-max-version-get",
    ],
)
def test_rest_errors(target, path, body, code):
    status, reply = http(target, path.format(name=target.model_name), body)
    assert status == code and isinstance(reply.get("error"), str) and reply["error"]


def test_rest_status_and_metadata(target):
    code, reply = http(target, f"/v1/models/{target.model_name}/versions/{target.latest}")
    assert code == 200
    ok = {"error_code": "OK", "error_message": ""}
    expected = [{"version": str(target.latest), "state": "AVAILABLE", "status": ok}]
    assert reply["model_version_status"] == expected
    code, reply = http(target, f"/v1/models/{target.model_name}/metadata")
    assert code == 200
    assert reply["model_spec"]["version"] == str(target.latest)
    signature = reply["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert http(target, "/v1/models/no_such_model")[0] == 404
