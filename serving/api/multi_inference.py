"""MultiInference: several classify/regress tasks of one model over one set of tf.Examples.

As TF Serving: every task names the same model, each signature once; the examples are fed once
per signature and each task's result comes back in the order of the tasks.
"""

from __future__ import annotations

import grpc
from tensorflow_serving.apis import inference_pb2

from ..errors import ServingError, invalid_argument
from ..models.versions import DEFAULT_SIGNATURE, LoadedVersion
from ..wire.examples import serialized_examples
from . import classify as classify_lib
from . import regress as regress_lib

_METHODS = {
    classify_lib.CLASSIFY_METHOD: (classify_lib.check_signature, classify_lib.classification_result),
    regress_lib.REGRESS_METHOD: (regress_lib.check_signature, regress_lib.regression_result),
}



def check_tasks(request: inference_pb2.MultiInferenceRequest) -> None:
    """The model-name checks TF Serving makes before it looks the model up."""
    names = set()
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        names.add(task.model_spec.name)
    if len(names) > 1:
        raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access the same model name.")


def multi_inference(
    version: LoadedVersion, request: inference_pb2.MultiInferenceRequest, run, method_name_check: bool = False
):
    """TF Serving's MultiInference on one loaded version; `run(function, inputs)` makes each call."""
    check_tasks(request)
    plans, seen = [], set()
    for task in request.tasks:
        name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if name in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {name}")
        seen.add(name)
        if name not in version.signature_defs or name not in version.functions:
            raise invalid_argument(f"Requested signature not found in model graph: {name}")
        if task.method_name not in _METHODS:
            raise ServingError(
                grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}"
            )
        check, make_result = _METHODS[task.method_name]
        aliases = check(version.signature_defs[name], method_name_check)
        plans.append((task, name, aliases, make_result))
    examples = serialized_examples(request.input)
    response = inference_pb2.MultiInferenceResponse()
    for task, name, aliases, make_result in plans:
        outputs = run(version.functions[name], {classify_lib.INPUTS: examples})
        result = response.results.add()
        result.model_spec.name = task.model_spec.name
        result.model_spec.signature_name = name
        result.model_spec.version.value = version.version
        field = "classification_result" if task.method_name == classify_lib.CLASSIFY_METHOD else "regression_result"
        getattr(result, field).CopyFrom(make_result(len(examples), {a: outputs[a] for a in aliases}))
    return response
