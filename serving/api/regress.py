"""Regress: serialized tf.Examples through a regression signature, as TF Serving runs it.

The signature needs one input `inputs` (the examples) and one output `outputs` (float32, shape
[batch] or [batch, 1]). As for Classify, the `tensorflow/serving/regress` method name is only
required with `method_name_check` (TF Serving's `--enable_signature_method_name_check`).
"""

from __future__ import annotations

import numpy as np
from tensorflow_serving.apis import regression_pb2

from ..errors import invalid_argument
from ..models.versions import LoadedVersion
from ..wire.examples import serialized_examples
from .classify import debug_string, example_signature

REGRESS_METHOD = "tensorflow/serving/regress"
INPUTS, OUTPUTS = "inputs", "outputs"



def check_signature(signature_def, method_name_check: bool = False) -> list[str]:
    """TF Serving's checks of a regression signature; returns the output alias to fetch."""
    if method_name_check and signature_def.method_name != REGRESS_METHOD:
        was = signature_def.method_name
        raise invalid_argument(f"Expected regression signature method_name to be {REGRESS_METHOD}. Was: {was}")
    if len(signature_def.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature_def.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if INPUTS not in signature_def.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {debug_string(signature_def)}")
    if OUTPUTS not in signature_def.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {debug_string(signature_def)}")
    return [OUTPUTS]


def regression_signature(version: LoadedVersion, signature_name: str, method_name_check: bool = False):
    """(name, SignatureDef, function) of a regression signature (empty name: serving_default)."""
    return example_signature(version, signature_name, check_signature, method_name_check)


def regression_result(num_examples: int, outputs: dict) -> regression_pb2.RegressionResult:
    """The RegressionResult of a signature's `outputs` tensor, checked as TF Serving does."""
    value = np.asarray(outputs[OUTPUTS])
    if not (value.ndim == 1 or (value.ndim == 2 and value.shape[1] == 1)):
        raise invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{list(value.shape)}"
        )
    if value.shape[0] != num_examples:
        raise invalid_argument(f"Input batch size did not match output batch size: {num_examples} vs. {value.shape[0]}")
    if value.dtype != np.float32:
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {value.dtype}")
    result = regression_pb2.RegressionResult()
    for number in value.ravel().tolist():
        result.regressions.add(value=number)
    return result


def regress(
    version: LoadedVersion, request: regression_pb2.RegressionRequest, run, method_name_check: bool = False
):
    """TF Serving's Regress on one loaded version; `run(function, inputs)` makes the call."""
    name, _, function = regression_signature(version, request.model_spec.signature_name, method_name_check)
    examples = serialized_examples(request.input)
    outputs = run(function, {INPUTS: examples})
    response = regression_pb2.RegressionResponse()
    response.model_spec.name = version.model_name
    response.model_spec.version.value = version.version
    response.model_spec.signature_name = name
    response.result.CopyFrom(regression_result(len(examples), outputs))
    return response
