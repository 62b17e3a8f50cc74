"""Predict: a request's tensors through one signature of one loaded version, as TF Serving runs it.

Any signature runs (predict, classify or regress method), as TF Serving's Predict does by default;
with `method_name_check` (TF Serving's `--enable_signature_method_name_check`) a signature of
another method is refused.
"""

from __future__ import annotations

import grpc
from tensorflow_serving.apis import predict_pb2

from ..errors import ServingError
from ..models.signatures import run_signature
from ..models.versions import LoadedVersion
from ..wire.tensor_codec import MAX_REQUEST_ELEMENTS, check_request_size, make_tensor_proto, request_array
from .inputs import check_inputs, check_output_filter

PREDICT_METHODS = ("tensorflow/serving/predict", "tensorflow/serving/classify", "tensorflow/serving/regress")


def predict_arrays(
    version: LoadedVersion,
    signature_name: str,
    inputs: dict,
    output_filter=(),
    run=run_signature,
    method_name_check: bool = False,
):
    """TF Serving's Predict checks and call on numpy inputs; returns (signature name, outputs).

    `run(function, inputs)` makes the call (the batching scheduler passes its own).
    """
    name, signature_def, function = version.signature(signature_name)
    if method_name_check and signature_def.method_name not in PREDICT_METHODS:
        raise ServingError(
            grpc.StatusCode.INTERNAL,
            f"Expected prediction signature method_name to be one of {{{', '.join(PREDICT_METHODS)}}}. "
            f"Was: {signature_def.method_name}",
        )
    inputs = check_inputs(signature_def, inputs)
    aliases = check_output_filter(signature_def, output_filter)
    outputs = run(function, inputs)
    return name, {alias: outputs[alias] for alias in aliases}


def predict(
    version: LoadedVersion,
    request: predict_pb2.PredictRequest,
    run=run_signature,
    method_name_check: bool = False,
    max_elements: int = MAX_REQUEST_ELEMENTS,
) -> predict_pb2.PredictResponse:
    """TF Serving's Predict on one loaded version, from request proto to response proto.

    The shapes the request declares are checked against `max_elements` before any array is built.
    """
    check_request_size(request.inputs, max_elements)
    inputs = {alias: request_array(alias, proto) for alias, proto in request.inputs.items()}
    signature_name, output_filter = request.model_spec.signature_name, request.output_filter
    name, outputs = predict_arrays(version, signature_name, inputs, output_filter, run, method_name_check)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = version.model_name
    response.model_spec.version.value = version.version
    response.model_spec.signature_name = name
    for alias, value in outputs.items():
        make_tensor_proto(value, response.outputs[alias], typed=True)  # TF Serving's typed fields
    return response
