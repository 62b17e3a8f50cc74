"""TF Serving's client messages, built with the protobuf runtime so that a client loads no TensorFlow.

`tensorflow-serving-api`'s modules import `tensorflow.core.framework`, which runs TensorFlow's whole
start-up (about 3 s) before the first request. The few messages `FCNClient` needs are declared here
instead: for Predict `tensorflow.serving.ModelSpec`, `PredictRequest`, `PredictResponse`,
`tensorflow.TensorProto`, `TensorShapeProto` and the `DataType` enum; for `ModelService.GetModelStatus`
`GetModelStatusRequest`, `GetModelStatusResponse`, `ModelVersionStatus` (and its `State` enum),
`StatusProto` and the `tensorflow.error.Code` enum; for `GetModelMetadata` `GetModelMetadataRequest`,
`GetModelMetadataResponse`, `SignatureDefMap`, `tensorflow.SignatureDef` and `TensorInfo`. They have the
names, field numbers, types, labels and packing of TensorFlow's `tensor.proto`, `tensor_shape.proto`,
`types.proto`, `meta_graph.proto`, `error_codes.proto` and TF Serving's `model.proto`, `predict.proto`,
`get_model_status.proto`, `status.proto`, `get_model_metadata.proto` (`tests/serving/test_wire.py`
compares them with the official descriptors). Fields a client never sets or reads
(`TensorProto.resource_handle_val`, `PredictRequest.request_options`, `TensorInfo.composite_tensor`
whose `TypeSpecProto` tree is large, the DataTypes without a numpy equivalent, ...) are left out;
protobuf keeps such fields of a reply as unknown fields (and writes them back unchanged). The
messages live in a pool of their own, so they never clash with TensorFlow's definitions of the same
names when both are loaded in one process; a message of one pool does not `CopyFrom` the other's, but
their bytes are the same.

Example:
>>> request = PredictRequest()
>>> request.model_spec.name = "fcn"
>>> request.model_spec.version.value = 3
>>> PredictRequest.FromString(request.SerializeToString()).model_spec.version.value
3
"""

from __future__ import annotations

from google.protobuf import any_pb2, message_factory, wrappers_pb2

from keras_fcn.proto_schema import ProtoFile, build_pool

# tensorflow/core/framework/types.proto, the values with a numpy dtype (and DT_INVALID, proto3's default).
_DATA_TYPES = [
    ("DT_INVALID", 0), ("DT_FLOAT", 1), ("DT_DOUBLE", 2), ("DT_INT32", 3), ("DT_UINT8", 4), ("DT_INT16", 5),
    ("DT_INT8", 6), ("DT_STRING", 7), ("DT_COMPLEX64", 8), ("DT_INT64", 9), ("DT_BOOL", 10),
    ("DT_UINT16", 17), ("DT_COMPLEX128", 18), ("DT_HALF", 19), ("DT_UINT32", 22), ("DT_UINT64", 23),
]  # fmt: skip

# tensorflow/core/protobuf/error_codes.proto (xla/tsl/protobuf/ in TensorFlow's tree), in upstream's order.
_ERROR_CODES = [
    ("OK", 0), ("CANCELLED", 1), ("UNKNOWN", 2), ("INVALID_ARGUMENT", 3), ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5), ("ALREADY_EXISTS", 6), ("PERMISSION_DENIED", 7), ("UNAUTHENTICATED", 16),
    ("RESOURCE_EXHAUSTED", 8), ("FAILED_PRECONDITION", 9), ("ABORTED", 10), ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12), ("INTERNAL", 13), ("UNAVAILABLE", 14), ("DATA_LOSS", 15),
    ("DO_NOT_USE_RESERVED_FOR_FUTURE_EXPANSION_USE_DEFAULT_IN_SWITCH_INSTEAD_", 20),
]  # fmt: skip

# {file: (package, dependencies, {message: [(field, number, type, repeated, oneof)]}, {enum: values})}.
# A type starting with "." is a message, "enum:" an enum; "map:" a map<string, message> field. Repeated
# numbers are `[packed = true]` upstream (proto3 packs them anyway; the flag is written as upstream
# writes it). A message or enum named "A.B" is nested in message A.
_FILES = {
    "keras_fcn/serving/tensorflow_tensor.proto": ("tensorflow", [], {
        "TensorShapeProto": [("dim", 2, ".tensorflow.TensorShapeProto.Dim", True, None),
                             ("unknown_rank", 3, "bool", False, None)],
        "TensorShapeProto.Dim": [("size", 1, "int64", False, None), ("name", 2, "string", False, None)],
        "TensorProto": [
            ("dtype", 1, "enum:.tensorflow.DataType", False, None),
            ("tensor_shape", 2, ".tensorflow.TensorShapeProto", False, None),
            ("version_number", 3, "int32", False, None), ("tensor_content", 4, "bytes", False, None),
            ("half_val", 13, "int32", True, None), ("float_val", 5, "float", True, None),
            ("double_val", 6, "double", True, None), ("int_val", 7, "int32", True, None),
            ("string_val", 8, "bytes", True, None), ("scomplex_val", 9, "float", True, None),
            ("int64_val", 10, "int64", True, None), ("bool_val", 11, "bool", True, None),
            ("dcomplex_val", 12, "double", True, None), ("uint32_val", 16, "uint32", True, None),
            ("uint64_val", 17, "uint64", True, None), ("float8_val", 18, "bytes", False, None),
        ],
    }, {"DataType": _DATA_TYPES}),
    "keras_fcn/serving/tensorflow_serving_predict.proto": (
        "tensorflow.serving",
        ["google/protobuf/wrappers.proto", "keras_fcn/serving/tensorflow_tensor.proto"],
        {
            "ModelSpec": [
                ("name", 1, "string", False, None),
                ("version", 2, ".google.protobuf.Int64Value", False, "version_choice"),
                ("version_label", 4, "string", False, "version_choice"),
                ("signature_name", 3, "string", False, None),
            ],
            "PredictRequest": [
                ("model_spec", 1, ".tensorflow.serving.ModelSpec", False, None),
                ("inputs", 2, "map:.tensorflow.TensorProto", True, None),
                ("output_filter", 3, "string", True, None),
            ],
            "PredictResponse": [
                ("model_spec", 2, ".tensorflow.serving.ModelSpec", False, None),
                ("outputs", 1, "map:.tensorflow.TensorProto", True, None),
            ],
        },
        {},
    ),
    "keras_fcn/serving/tensorflow_error_codes.proto": ("tensorflow.error", [], {}, {"Code": _ERROR_CODES}),
    "keras_fcn/serving/tensorflow_meta_graph.proto": ("tensorflow", ["keras_fcn/serving/tensorflow_tensor.proto"], {
        "TensorInfo": [
            ("name", 1, "string", False, "encoding"),
            ("coo_sparse", 4, ".tensorflow.TensorInfo.CooSparse", False, "encoding"),
            ("dtype", 2, "enum:.tensorflow.DataType", False, None),
            ("tensor_shape", 3, ".tensorflow.TensorShapeProto", False, None),
        ],
        "TensorInfo.CooSparse": [("values_tensor_name", 1, "string", False, None),
                                 ("indices_tensor_name", 2, "string", False, None),
                                 ("dense_shape_tensor_name", 3, "string", False, None)],
        "SignatureDef": [
            ("inputs", 1, "map:.tensorflow.TensorInfo", True, None),
            ("outputs", 2, "map:.tensorflow.TensorInfo", True, None),
            ("method_name", 3, "string", False, None),
            ("defaults", 4, "map:.tensorflow.TensorProto", True, None),
        ],
    }, {}),
    "keras_fcn/serving/tensorflow_serving_model_status.proto": (
        "tensorflow.serving",
        ["keras_fcn/serving/tensorflow_error_codes.proto", "keras_fcn/serving/tensorflow_serving_predict.proto"],
        {
            "StatusProto": [("error_code", 1, "enum:.tensorflow.error.Code", False, None),
                            ("error_message", 2, "string", False, None)],
            "GetModelStatusRequest": [("model_spec", 1, ".tensorflow.serving.ModelSpec", False, None)],
            "ModelVersionStatus": [
                ("version", 1, "int64", False, None),
                ("state", 2, "enum:.tensorflow.serving.ModelVersionStatus.State", False, None),
                ("status", 3, ".tensorflow.serving.StatusProto", False, None),
            ],
            "GetModelStatusResponse": [
                ("model_version_status", 1, ".tensorflow.serving.ModelVersionStatus", True, None),
            ],
        },
        {"ModelVersionStatus.State": [("UNKNOWN", 0), ("START", 10), ("LOADING", 20), ("AVAILABLE", 30),
                                      ("UNLOADING", 40), ("END", 50)]},
    ),
    "keras_fcn/serving/tensorflow_serving_metadata.proto": (
        "tensorflow.serving",
        ["google/protobuf/any.proto", "keras_fcn/serving/tensorflow_meta_graph.proto",
         "keras_fcn/serving/tensorflow_serving_predict.proto"],
        {
            "SignatureDefMap": [("signature_def", 1, "map:.tensorflow.SignatureDef", True, None)],
            "GetModelMetadataRequest": [("model_spec", 1, ".tensorflow.serving.ModelSpec", False, None),
                                        ("metadata_field", 2, "string", True, None)],
            "GetModelMetadataResponse": [("model_spec", 1, ".tensorflow.serving.ModelSpec", False, None),
                                         ("metadata", 2, "map:.google.protobuf.Any", True, None)],
        },
        {},
    ),
}  # fmt: skip


# A pool of our own: TensorFlow registers `tensorflow.TensorProto` in the default pool. google.protobuf's
# Int64Value is ModelSpec.version's type, Any GetModelMetadataResponse's.
_POOL = build_pool(
    [ProtoFile(name, package, messages, enums, deps) for name, (package, deps, messages, enums) in _FILES.items()],
    well_known=(wrappers_pb2, any_pb2),
)  # fmt: skip


def _message_class(full_name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


TensorShapeProto = _message_class("tensorflow.TensorShapeProto")
TensorProto = _message_class("tensorflow.TensorProto")
ModelSpec = _message_class("tensorflow.serving.ModelSpec")
PredictRequest = _message_class("tensorflow.serving.PredictRequest")
PredictResponse = _message_class("tensorflow.serving.PredictResponse")
StatusProto = _message_class("tensorflow.serving.StatusProto")
ModelVersionStatus = _message_class("tensorflow.serving.ModelVersionStatus")
GetModelStatusRequest = _message_class("tensorflow.serving.GetModelStatusRequest")
GetModelStatusResponse = _message_class("tensorflow.serving.GetModelStatusResponse")
TensorInfo = _message_class("tensorflow.TensorInfo")
SignatureDef = _message_class("tensorflow.SignatureDef")
SignatureDefMap = _message_class("tensorflow.serving.SignatureDefMap")
GetModelMetadataRequest = _message_class("tensorflow.serving.GetModelMetadataRequest")
GetModelMetadataResponse = _message_class("tensorflow.serving.GetModelMetadataResponse")
# {"DT_FLOAT": 1, ...}: the DataType numbers of the dtypes declared above.
DATA_TYPES = {value.name: value.number for value in _POOL.FindEnumTypeByName("tensorflow.DataType").values}

# {30: "AVAILABLE", ...}: the ModelVersionStatus.State names by number.
MODEL_VERSION_STATES = {
    value.number: value.name for value in _POOL.FindEnumTypeByName("tensorflow.serving.ModelVersionStatus.State").values
}

# The gRPC methods used (prediction_service.proto, model_service.proto).
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_METADATA_METHOD = "/tensorflow.serving.PredictionService/GetModelMetadata"
GET_MODEL_STATUS_METHOD = "/tensorflow.serving.ModelService/GetModelStatus"
