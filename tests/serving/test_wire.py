"""The client's own messages (`serving/wire/messages.py`) and the numpy codec client and server share
(`serving/wire/tensor_codec.py`) against the official ones: TensorFlow's and tensorflow-serving-api's
descriptors, `tf.make_tensor_proto` and `tf.make_ndarray`, the official stubs' GetModelStatus and
GetModelMetadata answers; and `keras-fcn query`, `FCNClient.status()` and `metadata()` run without
TensorFlow against the server under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2
from PIL import Image
from serving_testing import confident, random_images, reference
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)

from keras_fcn.serving import FCNClient
from keras_fcn.serving.errors import ServingError
from keras_fcn.serving.wire import messages as wire
from keras_fcn.serving.wire.tensor_codec import make_ndarray, make_tensor_proto, request_array
from keras_fcn.tiling import predict_tiled

HEAVY = ("tensorflow", "keras", "tensorflow_serving")

# (ours, the official message)
MESSAGES = [
    (wire.TensorShapeProto, tensor_shape_pb2.TensorShapeProto),
    (wire.TensorShapeProto.Dim, tensor_shape_pb2.TensorShapeProto.Dim),
    (wire.TensorProto, tensor_pb2.TensorProto),
    (wire.ModelSpec, model_pb2.ModelSpec),
    (wire.PredictRequest, predict_pb2.PredictRequest),
    (wire.PredictResponse, predict_pb2.PredictResponse),
    (wire.StatusProto, status_pb2.StatusProto),
    (wire.ModelVersionStatus, get_model_status_pb2.ModelVersionStatus),
    (wire.GetModelStatusRequest, get_model_status_pb2.GetModelStatusRequest),
    (wire.GetModelStatusResponse, get_model_status_pb2.GetModelStatusResponse),
    (wire.TensorInfo, meta_graph_pb2.TensorInfo),
    (wire.TensorInfo.CooSparse, meta_graph_pb2.TensorInfo.CooSparse),
    (wire.SignatureDef, meta_graph_pb2.SignatureDef),
    (wire.SignatureDefMap, get_model_metadata_pb2.SignatureDefMap),
    (wire.GetModelMetadataRequest, get_model_metadata_pb2.GetModelMetadataRequest),
    (wire.GetModelMetadataResponse, get_model_metadata_pb2.GetModelMetadataResponse),
]

# The official fields each message leaves out (a client never sets or reads them); the rest are declared.
LEFT_OUT = {
    "TensorProto": {"resource_handle_val", "variant_val"},
    "PredictRequest": {"client_id", "request_options", "predict_streamed_options"},
    "TensorInfo": {"composite_tensor"},  # its TypeSpecProto/StructuredValue tree is large
}

# One array of each dtype the codec knows; values at the ends of each range.
ARRAYS = {
    "uint8": np.array([[[0, 7, 255], [128, 1, 2]]], np.uint8),
    "uint16": np.array([0, 65535, 300], np.uint16),
    "uint32": np.array([0, 2**32 - 1, 5], np.uint32),
    "uint64": np.array([0, 2**64 - 1, 5], np.uint64),
    "int8": np.array([-128, 127, 0], np.int8),
    "int16": np.array([-32768, 32767, 1], np.int16),
    "int32": np.array([[-(2**31), 2**31 - 1], [0, 20]], np.int32),
    "int64": np.array([-(2**63), 2**63 - 1, 3], np.int64),
    "float16": np.array([0.5, -65504, np.inf], np.float16),
    "float32": np.random.default_rng(0).random((2, 3, 4, 5), np.float32),
    "float64": np.array([np.pi, -1e300, 5e-324]),
    "bool": np.array([[True, False], [False, True]]),
    "complex64": np.array([1 + 2j, -3.5 - 0.25j], np.complex64),
    "complex128": np.array([1e200 + 2j, -3 - 4j]),
    "string": np.array([[b"\x89PNG\r\n\x1a\n\x00", b""], [b"abc", "\u00e9t\u00e9".encode()]], dtype=object),
}


def _descriptor_proto(message_class) -> descriptor_pb2.DescriptorProto:
    proto = descriptor_pb2.DescriptorProto()
    message_class.DESCRIPTOR.CopyToProto(proto)
    return proto


@pytest.mark.parametrize("ours, official", MESSAGES, ids=lambda m: m.DESCRIPTOR.name)
def test_messages_have_the_official_names_numbers_types_labels_and_packing(ours, official):
    assert ours.DESCRIPTOR.full_name == official.DESCRIPTOR.full_name
    mine, theirs = _descriptor_proto(ours), _descriptor_proto(official)
    upstream = {field.name: field for field in theirs.field}
    for field in mine.field:
        assert field.name in upstream, f"{ours.DESCRIPTOR.full_name}.{field.name} is not an official field"
        expected = upstream[field.name]
        for attribute in ("number", "label", "type", "type_name", "options"):
            assert getattr(field, attribute) == getattr(expected, attribute), (field.name, attribute)
        ours_field = ours.DESCRIPTOR.fields_by_name[field.name]
        official_field = official.DESCRIPTOR.fields_by_name[field.name]
        assert ours_field.is_packed == official_field.is_packed, field.name
        oneofs = [f.containing_oneof.name if f.containing_oneof else None for f in (ours_field, official_field)]
        assert oneofs[0] == oneofs[1], field.name
    # the map entries (`InputsEntry`, `OutputsEntry`) as a whole
    nested = {message.name: message for message in theirs.nested_type}
    for message in mine.nested_type:
        if message.options.map_entry:
            assert message == nested[message.name]


@pytest.mark.parametrize("ours, official", MESSAGES, ids=lambda m: m.DESCRIPTOR.name)
def test_messages_declare_every_official_field_but_the_listed_ones(ours, official):
    left_out = set(official.DESCRIPTOR.fields_by_name) - set(ours.DESCRIPTOR.fields_by_name)
    assert left_out == LEFT_OUT.get(ours.DESCRIPTOR.name, set())


@pytest.mark.parametrize(
    "field, official",
    [
        (wire.ModelVersionStatus.DESCRIPTOR.fields_by_name["state"], get_model_status_pb2.ModelVersionStatus.State),
        (wire.StatusProto.DESCRIPTOR.fields_by_name["error_code"], status_pb2.StatusProto.DESCRIPTOR.fields_by_name[
            "error_code"].enum_type),
    ],
    ids=["ModelVersionStatus.State", "tensorflow.error.Code"],
)  # fmt: skip
def test_enums_have_the_official_names_and_numbers(field, official):
    official = getattr(official, "DESCRIPTOR", official)
    assert field.enum_type.full_name == official.full_name
    assert [(v.name, v.number) for v in field.enum_type.values] == [(v.name, v.number) for v in official.values]
    if field.enum_type.name == "State":
        assert wire.MODEL_VERSION_STATES == {v.number: v.name for v in official.values}


def test_data_types_are_the_official_ones_with_a_numpy_dtype():
    official = types_pb2.DataType.DESCRIPTOR.values_by_name
    assert {name: official[name].number for name in wire.DATA_TYPES} == wire.DATA_TYPES
    with_numpy_dtype = set()
    for name, value in official.items():
        if name.endswith("_REF") or name in ("DT_RESOURCE", "DT_VARIANT", "DT_INVALID"):  # no values of their own
            continue
        dtype = tf.dtypes.as_dtype(value.number).as_numpy_dtype
        if dtype is object or getattr(dtype, "__module__", None) == "numpy":  # not ml_dtypes, not quantized
            with_numpy_dtype.add(name)
    assert with_numpy_dtype == set(wire.DATA_TYPES) - {"DT_INVALID"}


def _light_request() -> wire.PredictRequest:
    request = wire.PredictRequest()
    request.model_spec.name = "fcn"
    request.model_spec.version.value = 7
    request.model_spec.signature_name = "serve_encoded"
    request.output_filter.extend(["class_ids", "probabilities"])
    for name, array in ARRAYS.items():
        request.inputs[name].CopyFrom(make_tensor_proto(array))
    request.inputs["scalar"].CopyFrom(make_tensor_proto(np.float32(2.5)))
    request.inputs["empty"].CopyFrom(make_tensor_proto(np.zeros((0, 4, 3), np.uint8)))
    request.inputs["str"].CopyFrom(make_tensor_proto(np.array(["a", "\u00e9"])))
    return request


def test_a_light_request_reads_back_with_the_official_stubs_and_tf_make_ndarray():
    official = predict_pb2.PredictRequest.FromString(_light_request().SerializeToString())
    assert official.model_spec.name == "fcn" and official.model_spec.version.value == 7
    assert official.model_spec.WhichOneof("version_choice") == "version"
    assert official.model_spec.signature_name == "serve_encoded"
    assert list(official.output_filter) == ["class_ids", "probabilities"]
    for name, array in ARRAYS.items():
        decoded = tf.make_ndarray(official.inputs[name])
        assert decoded.dtype == array.dtype and decoded.shape == array.shape, name
        np.testing.assert_array_equal(decoded, array, err_msg=name)
    assert tf.make_ndarray(official.inputs["scalar"]) == np.float32(2.5)
    assert tf.make_ndarray(official.inputs["empty"]).shape == (0, 4, 3)
    assert tf.make_ndarray(official.inputs["str"]).tolist() == [b"a", "\u00e9".encode()]
    # what tf.make_tensor_proto writes for the same arrays means the same to TensorFlow
    for name, array in ARRAYS.items():
        np.testing.assert_array_equal(tf.make_ndarray(tf.make_tensor_proto(array)), array, err_msg=name)


def test_a_version_label_is_the_other_branch_of_the_oneof():
    request = wire.PredictRequest()
    request.model_spec.version_label = "stable"
    official = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert official.model_spec.WhichOneof("version_choice") == "version_label"
    assert official.model_spec.version_label == "stable"


# The typed field TensorFlow keeps each dtype's values in (tensor.proto's comments).
TYPED_FIELDS = {
    "float16": "half_val", "float32": "float_val", "float64": "double_val", "int8": "int_val",
    "int16": "int_val", "int32": "int_val", "uint8": "int_val", "uint16": "int_val", "int64": "int64_val",
    "uint32": "uint32_val", "uint64": "uint64_val", "bool": "bool_val", "complex64": "scomplex_val",
    "complex128": "dcomplex_val", "object": "string_val",
}  # fmt: skip


def _typed(array: np.ndarray, count: int | None = None) -> tensor_pb2.TensorProto:
    """The official TensorProto of `array` with its values in the typed field (TF Serving's default
    answer), or only its first `count` values there."""
    proto = tensor_pb2.TensorProto(dtype=tf.dtypes.as_dtype(array.dtype).as_datatype_enum)
    proto.tensor_shape.CopyFrom(tf.TensorShape(array.shape).as_proto())
    flat = array.ravel()[:count]
    if array.dtype == np.float16:
        flat = flat.view(np.uint16)  # half_val holds the bits
    elif array.dtype.kind == "c":
        flat = flat.view(flat.real.dtype)  # (real, imaginary) pairs
    getattr(proto, TYPED_FIELDS[array.dtype.name]).extend(flat.tolist())
    return proto


def _official_tensors():
    """(id, official TensorProto) in every form a server may answer."""
    for name, array in ARRAYS.items():
        yield f"{name}-tf.make_tensor_proto", tf.make_tensor_proto(array)  # tensor_content for most
        yield f"{name}-typed", _typed(array)
        # one value standing for the whole shape, as tf.make_tensor_proto(value, shape=...) writes it
        yield f"{name}-one-value", tf.make_tensor_proto(array.ravel()[-1], shape=array.shape)
        if array.dtype != object:  # fewer values: TensorFlow repeats the last one over the rest
            yield f"{name}-two-values", _typed(array, 2)
            yield f"{name}-no-values", _typed(array, 0)  # zeros


OFFICIAL_TENSORS = list(_official_tensors())


def test_the_typed_forms_hold_the_arrays_for_tensorflow():
    for name, array in ARRAYS.items():
        np.testing.assert_array_equal(tf.make_ndarray(_typed(array)), array, err_msg=name)


@pytest.mark.parametrize("tensor", [t for _, t in OFFICIAL_TENSORS], ids=[i for i, _ in OFFICIAL_TENSORS])
def test_official_responses_decode_as_tf_make_ndarray_decodes_them(tensor):
    response = predict_pb2.PredictResponse(outputs={"out": tensor})
    response.model_spec.name, response.model_spec.version.value = "fcn", 3
    ours = wire.PredictResponse.FromString(response.SerializeToString())
    assert ours.model_spec.name == "fcn" and ours.model_spec.version.value == 3
    expected = tf.make_ndarray(tensor)
    for decoded in (make_ndarray(ours.outputs["out"]), make_ndarray(tensor)):  # either pool's message
        assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
        np.testing.assert_array_equal(decoded, expected)


def test_the_server_answers_decode_to_its_arrays():
    for name, array in ARRAYS.items():  # the server writes TF Serving's typed fields into TensorFlow's message
        official = make_tensor_proto(array, tensor_pb2.TensorProto(), typed=True)
        np.testing.assert_array_equal(tf.make_ndarray(official), array, err_msg=name)
        ours = wire.TensorProto.FromString(official.SerializeToString())
        np.testing.assert_array_equal(make_ndarray(ours), array, err_msg=name)


def _float_tensor(**fields) -> bytes:
    proto = tf.make_tensor_proto(np.zeros(3, np.float32))
    for name, value in fields.items():
        if name == "shape":
            proto.tensor_shape.dim[0].size = value
        else:
            setattr(proto, name, value)
    return proto.SerializeToString()


@pytest.mark.parametrize(
    "data, message",
    [
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1, 2]).SerializeToString(),
         r"more values than the shape \[\] holds. Received: 2 values"),
        (_float_tensor(tensor_content=bytes(11)), r"needs 12 bytes. Received: len\(tensor_content\)=11"),
        (_float_tensor(shape=-1), r"cannot be negative. Received: shape=\[-1\]"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_content=b"ab").SerializeToString(),
         "string tensors are read from string_val. Received: 2 bytes of tensor_content"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_QINT8, int_val=[1]).SerializeToString(),
         "no numpy dtype for this tensor's DataType here. Received: dtype=11"),
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_COMPLEX64, scomplex_val=[1, 2, 3]).SerializeToString(),
         r"\(real, imaginary\) pairs. Received: 3 numbers"),
    ],
)  # fmt: skip
def test_malformed_tensors_are_refused_with_the_reason(data, message):
    with pytest.raises(ValueError, match=message):
        make_ndarray(wire.TensorProto.FromString(data))


def test_arrays_without_a_tensorflow_type_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"Received: dtype=datetime64"):
        make_tensor_proto(np.array(["2020-01-01"], "datetime64[D]"))
    with pytest.raises(ValueError, match=r"bytes or str only. Received: value=3"):
        make_tensor_proto(np.array([b"a", 3], dtype=object))


def _official_status(target, version=None) -> get_model_status_pb2.GetModelStatusResponse:
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_pb2.ModelSpec(name=target.model_name))
    if version is not None:
        request.model_spec.version.value = version
    return model_service_pb2_grpc.ModelServiceStub(target.channel).GetModelStatus(request, timeout=30)


def _official_signatures(target) -> dict:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = target.model_name
    response = prediction_service_pb2_grpc.PredictionServiceStub(target.channel).GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    return dict(signatures.signature_def)


def _raw_call(target, method: str, request) -> bytes:
    """The server's answer to `request` on `method` as bytes, parsed by neither pool."""
    call = target.channel.unary_unary(method, request_serializer=lambda m: m.SerializeToString())
    return call(request, timeout=30)


def test_get_model_status_reads_as_the_official_stubs_read_it(target):
    official = _official_status(target)
    state = get_model_status_pb2.ModelVersionStatus.State
    with FCNClient(target.grpc_address, target.model_name) as client:
        assert client.status() == {s.version: state.Name(s.state) for s in official.model_version_status}
        assert {v for v, name in client.status().items() if name == "AVAILABLE"} >= set(target.models)
    with FCNClient(target.grpc_address, target.model_name, version=target.latest) as client:
        assert client.status() == {target.latest: "AVAILABLE"}
    with FCNClient(target.grpc_address, "no-such-model") as client, pytest.raises(grpc.RpcError) as raised:
        client.status()
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    # the whole answer, error_code and error_message included, survives a parse and write with our classes
    request = wire.GetModelStatusRequest()
    request.model_spec.name = target.model_name
    raw = _raw_call(target, wire.GET_MODEL_STATUS_METHOD, request)
    ours = wire.GetModelStatusResponse.FromString(raw)
    assert get_model_status_pb2.GetModelStatusResponse.FromString(ours.SerializeToString()) == official
    for mine, theirs in zip(ours.model_version_status, official.model_version_status, strict=True):
        assert (mine.version, mine.state, mine.status.error_code, mine.status.error_message) == (
            theirs.version,
            theirs.state,
            theirs.status.error_code,
            theirs.status.error_message,
        )


def test_get_model_metadata_reads_as_the_official_stubs_read_it(target):
    official = _official_signatures(target)
    with FCNClient(target.grpc_address, target.model_name) as client:
        signatures = client.metadata()
    assert set(signatures) == set(official) and "serving_default" in signatures and "serve_encoded" in signatures
    for name, signature in signatures.items():
        assert isinstance(signature, wire.SignatureDef)
        assert meta_graph_pb2.SignatureDef.FromString(signature.SerializeToString()) == official[name], name
        assert signature.method_name == official[name].method_name
        for side in ("inputs", "outputs"):
            mine, theirs = getattr(signature, side), getattr(official[name], side)
            assert set(mine) == set(theirs), (name, side)
            for key, info in mine.items():
                assert info.WhichOneof("encoding") == theirs[key].WhichOneof("encoding") == "name"
                assert (info.name, info.dtype) == (theirs[key].name, theirs[key].dtype), (name, key)
                shape = [d.size for d in info.tensor_shape.dim], info.tensor_shape.unknown_rank
                assert shape == ([d.size for d in theirs[key].tensor_shape.dim], theirs[key].tensor_shape.unknown_rank)
    # the whole response, model_spec and the Any's type_url included
    request = wire.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = target.model_name
    raw = _raw_call(target, wire.GET_MODEL_METADATA_METHOD, request)
    ours = wire.GetModelMetadataResponse.FromString(raw)
    theirs = get_model_metadata_pb2.GetModelMetadataResponse.FromString(raw)
    assert get_model_metadata_pb2.GetModelMetadataResponse.FromString(ours.SerializeToString()) == theirs
    assert ours.model_spec.version.value == theirs.model_spec.version.value == target.latest
    assert ours.metadata["signature_def"].type_url == theirs.metadata["signature_def"].type_url


def test_signature_defs_with_a_sparse_or_composite_tensor_survive_our_classes():
    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature.inputs["sparse"].coo_sparse.values_tensor_name = "values:0"
    signature.inputs["sparse"].coo_sparse.indices_tensor_name = "indices:0"
    signature.inputs["sparse"].coo_sparse.dense_shape_tensor_name = "shape:0"
    signature.inputs["ragged"].composite_tensor.components.add(name="flat_values:0", dtype=types_pb2.DT_FLOAT)
    signature.outputs["out"].name, signature.outputs["out"].dtype = "out:0", types_pb2.DT_INT32
    signature.defaults["k"].CopyFrom(tf.make_tensor_proto(np.int32(3)))
    ours = wire.SignatureDef.FromString(signature.SerializeToString())
    sparse = ours.inputs["sparse"]
    assert sparse.WhichOneof("encoding") == "coo_sparse" and sparse.coo_sparse.dense_shape_tensor_name == "shape:0"
    assert ours.inputs["ragged"].WhichOneof("encoding") is None  # not declared here: kept as an unknown field
    assert ours.outputs["out"].name == "out:0" and ours.outputs["out"].dtype == wire.DATA_TYPES["DT_INT32"]
    assert make_ndarray(ours.defaults["k"]) == 3
    assert meta_graph_pb2.SignatureDef.FromString(ours.SerializeToString()) == signature


def _modules_after(code: str) -> tuple[str, list[str]]:
    """Runs `code` in a fresh interpreter; its stdout and which of HEAVY it left in sys.modules."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    *out, modules = result.stdout.strip().splitlines()
    return "\n".join(out), json.loads(modules)


def test_the_client_and_the_query_verb_load_no_tensorflow_nor_keras():
    assert _modules_after("import keras_fcn.serving.client")[1] == []
    assert _modules_after("from keras_fcn.serving import FCNClient, tls_credentials")[1] == []
    code = "from keras_fcn.cli import main\ntry:\n    main(['query', '--help'])\nexcept SystemExit:\n    pass"
    out, modules = _modules_after(code)
    assert "--address" in out and modules == []


def test_status_and_metadata_answer_without_loading_tensorflow(target):
    code = (
        f"from keras_fcn.serving import FCNClient\nimport json\n"
        f"with FCNClient({target.grpc_address!r}, {target.model_name!r}) as client:\n"
        f"    status, signatures = client.status(), client.metadata()\n"
        f"print(json.dumps([status, {{k: [s.method_name, sorted(s.inputs), sorted(s.outputs)]"
        f" for k, s in signatures.items()}}]))"
    )
    out, modules = _modules_after(code)
    assert modules == []
    status, signatures = json.loads(out)
    state = get_model_status_pb2.ModelVersionStatus.State
    assert status == {str(s.version): state.Name(s.state) for s in _official_status(target).model_version_status}
    expected = {
        k: [s.method_name, sorted(s.inputs), sorted(s.outputs)] for k, s in _official_signatures(target).items()
    }
    assert signatures == expected and "serve_encoded" in signatures


def test_query_segments_against_the_server_without_loading_tensorflow(target, tmp_path):
    image = random_images(1, 40, 33, seed=9)[0]
    Image.fromarray(image).save(tmp_path / "street.png")
    argv = ["query", "--address", target.grpc_address, "--model", target.model_name, str(tmp_path / "street.png")]
    argv += ["--version", str(target.latest), "--output", str(tmp_path / "out")]
    out, modules = _modules_after(f"from keras_fcn.cli import main\nassert main({argv!r}) == 0")
    assert modules == [] and "1/1 images" in out
    class_ids = np.asarray(Image.open(tmp_path / "out" / "street_class_ids.png"))
    probabilities = reference(target.models[target.latest], image[None])[0]
    sure = confident(probabilities)
    assert sure.mean() > 0.9
    np.testing.assert_array_equal(class_ids[sure], probabilities.argmax(-1)[sure])
    assert os.path.isfile(tmp_path / "out" / "street_overlay.png")
    # In tiles blended on the client: still no TensorFlow (keras_fcn.tiling's blending is numpy).
    argv[-1] = str(tmp_path / "tiled")
    out, modules = _modules_after(f"from keras_fcn.cli import main\nassert main({[*argv, '--tile-size', '32']!r}) == 0")
    assert modules == [] and "4/4 tiles" in out
    tiled_ids = np.asarray(Image.open(tmp_path / "tiled" / "street_class_ids.png"))
    _, blended = predict_tiled(target.models[target.latest], image, tile_size=32, return_probabilities=True)
    sure = confident(blended)
    assert sure.mean() > 0.9
    np.testing.assert_array_equal(tiled_ids[sure], blended.argmax(-1)[sure])


def test_strict_reading_follows_tf_servings_rules_for_request_tensors():
    def floats(shape, values) -> tensor_pb2.TensorProto:
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
        proto.tensor_shape.CopyFrom(tf.TensorShape(shape).as_proto())
        return proto

    # TensorFlow's reading repeats the last value; TF Serving refuses a request that does not fill its shape.
    np.testing.assert_array_equal(make_ndarray(floats([3], [1, 2])), tf.make_ndarray(floats([3], [1, 2])))
    np.testing.assert_array_equal(make_ndarray(floats([2], [])), np.zeros(2, np.float32))
    for shape, values in (([3], [1, 2]), ([2], [])):
        with pytest.raises(ValueError, match="do not fill the shape"):
            make_ndarray(floats(shape, values), strict=True)
    # exactly one value per element, or a single one for all; an empty shape with no values
    for shape, values in (([2, 2], [1, 2, 3, 4]), ([2, 2], [7]), ([0, 3], [])):
        got = make_ndarray(floats(shape, values), strict=True)
        np.testing.assert_array_equal(got, tf.make_ndarray(floats(shape, values)))
    with pytest.raises(ServingError, match="tensor parsing error: images"):
        request_array("images", floats([3], [1, 2]))


def test_bfloat16_reads_and_writes_as_tensorflow_does():
    array = np.array([[1.5, -2.0, 3.25]], dtype=tf.bfloat16.as_numpy_dtype)
    for official in (tf.make_tensor_proto(array), _typed_bfloat16(array)):
        np.testing.assert_array_equal(make_ndarray(official), array)
    ours = make_tensor_proto(array, tensor_pb2.TensorProto(), typed=True)
    assert ours.dtype == types_pb2.DT_BFLOAT16 and not ours.tensor_content
    np.testing.assert_array_equal(tf.make_ndarray(ours), array)
    np.testing.assert_array_equal(tf.make_ndarray(make_tensor_proto(array, tensor_pb2.TensorProto())), array)


def _typed_bfloat16(array) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_BFLOAT16, half_val=array.ravel().view(np.uint16).tolist())
    proto.tensor_shape.CopyFrom(tf.TensorShape(array.shape).as_proto())
    return proto
