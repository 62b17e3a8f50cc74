"""Our own minimal schema of Caffe's `NetParameter`, built with the protobuf runtime (no Caffe, no protoc).

Only the messages and fields that FCN and VGG16 weight files use are declared; every field number is the one
of BVLC/caffe's `src/caffe/proto/caffe.proto` (the numbers are the file format). Fields not declared here are
kept by protobuf as unknown fields and ignored. The classes read small messages (a layer without its blobs,
a blob's shape) and write test nets; `keras_fcn.caffe` reads the blobs' float arrays straight from the file.

Example:
>>> from keras_fcn.caffe_proto import NetParameter
>>> NetParameter.FromString(b"\\n\\x05fcn8s").name
'fcn8s'
"""

from __future__ import annotations

from google.protobuf import message_factory

from keras_fcn.proto_schema import ProtoFile, build_pool

# (message, [(field, number, type or ".caffe.Message"/"enum:.caffe.Enum", repeated, default or None)], enums)
# (the tables of `keras_fcn.proto_schema`; the enums are nested in their message)
_MESSAGES = [
    ("BlobShape", [("dim", 1, "int64", True, None)], {}),
    ("BlobProto", [
        ("num", 1, "int32", False, None), ("channels", 2, "int32", False, None),
        ("height", 3, "int32", False, None), ("width", 4, "int32", False, None),
        ("data", 5, "float", True, None), ("diff", 6, "float", True, None),
        ("shape", 7, ".caffe.BlobShape", False, None), ("double_data", 8, "double", True, None),
    ], {}),
    ("FillerParameter", [("type", 1, "string", False, "constant"), ("value", 2, "float", False, None)], {}),
    ("ParamSpec", [("name", 1, "string", False, None), ("lr_mult", 3, "float", False, "1"),
                   ("decay_mult", 4, "float", False, "1")], {}),
    ("ConvolutionParameter", [
        ("num_output", 1, "uint32", False, None), ("bias_term", 2, "bool", False, "true"),
        ("pad", 3, "uint32", True, None), ("kernel_size", 4, "uint32", True, None),
        ("group", 5, "uint32", False, "1"), ("stride", 6, "uint32", True, None),
        ("weight_filler", 7, ".caffe.FillerParameter", False, None),
        ("pad_h", 9, "uint32", False, None), ("pad_w", 10, "uint32", False, None),
        ("kernel_h", 11, "uint32", False, None), ("kernel_w", 12, "uint32", False, None),
        ("stride_h", 13, "uint32", False, None), ("stride_w", 14, "uint32", False, None),
        ("axis", 16, "int32", False, "1"), ("dilation", 18, "uint32", True, None),
    ], {}),
    ("InnerProductParameter", [
        ("num_output", 1, "uint32", False, None), ("bias_term", 2, "bool", False, "true"),
        ("axis", 5, "int32", False, "1"), ("transpose", 6, "bool", False, None),
    ], {}),
    ("PoolingParameter", [
        ("pool", 1, "enum:.caffe.PoolingParameter.PoolMethod", False, None),
        ("kernel_size", 2, "uint32", False, None), ("stride", 3, "uint32", False, "1"),
        ("pad", 4, "uint32", False, None), ("kernel_h", 5, "uint32", False, None),
        ("kernel_w", 6, "uint32", False, None), ("stride_h", 7, "uint32", False, None),
        ("stride_w", 8, "uint32", False, None), ("pad_h", 9, "uint32", False, None),
        ("pad_w", 10, "uint32", False, None), ("global_pooling", 12, "bool", False, None),
        ("round_mode", 13, "enum:.caffe.PoolingParameter.RoundMode", False, None),
    ], {"PoolMethod": [("MAX", 0), ("AVE", 1), ("STOCHASTIC", 2)], "RoundMode": [("CEIL", 0), ("FLOOR", 1)]}),
    ("ScaleParameter", [
        ("axis", 1, "int32", False, "1"), ("num_axes", 2, "int32", False, "1"),
        ("filler", 3, ".caffe.FillerParameter", False, None), ("bias_term", 4, "bool", False, None),
    ], {}),
    ("CropParameter", [("axis", 1, "int32", False, "2"), ("offset", 2, "uint32", True, None)], {}),
    ("EltwiseParameter", [("operation", 1, "enum:.caffe.EltwiseParameter.EltwiseOp", False, "SUM"),
                          ("coeff", 2, "float", True, None)],
     {"EltwiseOp": [("PROD", 0), ("SUM", 1), ("MAX", 2)]}),
    ("DropoutParameter", [("dropout_ratio", 1, "float", False, "0.5")], {}),
    ("InputParameter", [("shape", 1, ".caffe.BlobShape", True, None)], {}),
    ("PythonParameter", [("module", 1, "string", False, None), ("layer", 2, "string", False, None),
                         ("param_str", 3, "string", False, None)], {}),
    ("LayerParameter", [
        ("name", 1, "string", False, None), ("type", 2, "string", False, None),
        ("bottom", 3, "string", True, None), ("top", 4, "string", True, None),
        ("param", 6, ".caffe.ParamSpec", True, None), ("blobs", 7, ".caffe.BlobProto", True, None),
        ("convolution_param", 106, ".caffe.ConvolutionParameter", False, None),
        ("dropout_param", 108, ".caffe.DropoutParameter", False, None),
        ("eltwise_param", 110, ".caffe.EltwiseParameter", False, None),
        ("inner_product_param", 117, ".caffe.InnerProductParameter", False, None),
        ("pooling_param", 121, ".caffe.PoolingParameter", False, None),
        ("python_param", 130, ".caffe.PythonParameter", False, None),
        ("scale_param", 142, ".caffe.ScaleParameter", False, None),
        ("input_param", 143, ".caffe.InputParameter", False, None),
        ("crop_param", 144, ".caffe.CropParameter", False, None),
    ], {}),
    ("V1LayerParameter", [
        ("bottom", 2, "string", True, None), ("top", 3, "string", True, None),
        ("name", 4, "string", False, None), ("type", 5, "enum:.caffe.V1LayerParameter.LayerType", False, None),
        ("blobs", 6, ".caffe.BlobProto", True, None),
        ("convolution_param", 10, ".caffe.ConvolutionParameter", False, None),
        ("dropout_param", 12, ".caffe.DropoutParameter", False, None),
        ("inner_product_param", 17, ".caffe.InnerProductParameter", False, None),
        ("pooling_param", 19, ".caffe.PoolingParameter", False, None),
        ("eltwise_param", 24, ".caffe.EltwiseParameter", False, None),
    ], {"LayerType": [
        ("NONE", 0), ("ACCURACY", 1), ("CONCAT", 3), ("CONVOLUTION", 4), ("DATA", 5), ("DROPOUT", 6),
        ("FLATTEN", 8), ("IMAGE_DATA", 12), ("INNER_PRODUCT", 14), ("LRN", 15), ("POOLING", 17), ("RELU", 18),
        ("SOFTMAX", 20), ("SOFTMAX_LOSS", 21), ("SPLIT", 22), ("ELTWISE", 25), ("DECONVOLUTION", 39),
    ]}),
    ("NetParameter", [
        ("name", 1, "string", False, None), ("layers", 2, ".caffe.V1LayerParameter", True, None),
        ("input", 3, "string", True, None), ("input_dim", 4, "int32", True, None),
        ("input_shape", 8, ".caffe.BlobShape", True, None), ("layer", 100, ".caffe.LayerParameter", True, None),
    ], {}),
]  # fmt: skip
# Caffe declares these `[packed = true]`: the writer must pack them (readers accept both).
_PACKED = {("BlobShape", "dim"), ("BlobProto", "data"), ("BlobProto", "diff"), ("BlobProto", "double_data")}


_POOL = build_pool(
    [
        ProtoFile(
            "keras_fcn/caffe_minimal.proto",
            "caffe",
            {name: fields for name, fields, _ in _MESSAGES},
            {f"{name}.{enum}": values for name, _, enums in _MESSAGES for enum, values in enums.items()},
            syntax="proto2",
            packed=_PACKED,
        )
    ]
)


def _message_class(name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"caffe.{name}"))


BlobShape = _message_class("BlobShape")
BlobProto = _message_class("BlobProto")
FillerParameter = _message_class("FillerParameter")
ConvolutionParameter = _message_class("ConvolutionParameter")
InnerProductParameter = _message_class("InnerProductParameter")
PoolingParameter = _message_class("PoolingParameter")
ScaleParameter = _message_class("ScaleParameter")
CropParameter = _message_class("CropParameter")
EltwiseParameter = _message_class("EltwiseParameter")
ParamSpec = _message_class("ParamSpec")
LayerParameter = _message_class("LayerParameter")
V1LayerParameter = _message_class("V1LayerParameter")
NetParameter = _message_class("NetParameter")

# Field numbers the reader walks by hand (the blobs' float arrays are read in place, not copied by protobuf).
NET_LAYER, NET_LAYERS = 100, 2  # NetParameter.layer (LayerParameter), .layers (legacy V1LayerParameter)
LAYER_BLOBS, V1_LAYER_BLOBS = 7, 6
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_DIFF, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 6, 7, 8
# V1LayerParameter.LayerType numbers of the layers with weights, by their current type names.
V1_TYPE_NAMES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution", 17: "Pooling", 18: "ReLU",
                 6: "Dropout", 20: "Softmax", 21: "SoftmaxWithLoss", 25: "Eltwise", 5: "Data", 1: "Accuracy"}
