"""Classify: serialized tf.Examples through a classification signature, as TF Serving runs it.

The signature needs one input `inputs` (the examples) and an output `scores` (float32, shape
[batch, classes]) and/or `classes` (string labels of the same shape). TF Serving does not require
the `tensorflow/serving/classify` method name unless `--enable_signature_method_name_check` is set
(`method_name_check` here), so a TF2 SavedModel whose signatures all say `predict` classifies too.
"""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format
from tensorflow_serving.apis import classification_pb2

from ..errors import invalid_argument
from ..models.versions import DEFAULT_SIGNATURE, LoadedVersion
from ..wire.examples import serialized_examples

CLASSIFY_METHOD = "tensorflow/serving/classify"
INPUTS, CLASSES, SCORES = "inputs", "classes", "scores"



def debug_string(signature_def) -> str:
    """A SignatureDef in protobuf text format, as TF Serving quotes it in errors."""
    return text_format.MessageToString(signature_def)


def check_signature(signature_def, method_name_check: bool = False) -> list[str]:
    """TF Serving's checks of a classification signature; returns the output aliases to fetch."""
    if method_name_check and signature_def.method_name != CLASSIFY_METHOD:
        raise invalid_argument(
            f"Expected classification signature method_name to be {CLASSIFY_METHOD}. Was: {signature_def.method_name}"
        )
    if len(signature_def.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature_def.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature_def.outputs)}")
    if INPUTS not in signature_def.inputs:
        raise invalid_argument(f"No classification inputs found in SignatureDef: {debug_string(signature_def)}")
    aliases = [alias for alias in (CLASSES, SCORES) if alias in signature_def.outputs]
    if not aliases:
        raise invalid_argument(
            f'Expected classification signature outputs to contain at least one of "{CLASSES}" or "{SCORES}". '
            f"Signature was: {debug_string(signature_def)}"
        )
    return aliases


def classification_signature(version: LoadedVersion, signature_name: str, method_name_check: bool = False):
    """(name, SignatureDef, function) of a classification signature (empty name: serving_default)."""
    return example_signature(version, signature_name, check_signature, method_name_check)


def example_signature(version: LoadedVersion, signature_name: str, check, method_name_check: bool = False):
    """(name, SignatureDef, function) of a signature that reads tf.Examples, checked by `check`
    (classification's or regression's `check_signature`); INVALID_ARGUMENT when there is none."""
    name = signature_name or DEFAULT_SIGNATURE
    if name not in version.signature_defs or name not in version.functions:
        raise invalid_argument(f"No signature was found with the name: {name}")
    signature_def = version.signature_defs[name]
    check(signature_def, method_name_check)
    return name, signature_def, version.functions[name]


def classification_result(num_examples: int, outputs: dict) -> classification_pb2.ClassificationResult:
    """The ClassificationResult of a signature's `classes`/`scores` outputs, checked as TF Serving does."""
    classes, scores = outputs.get(CLASSES), outputs.get(SCORES)
    for alias, value, dtype in ((CLASSES, classes, "DT_STRING"), (SCORES, scores, "DT_FLOAT")):
        if value is None:
            continue
        if value.ndim != 2:
            raise invalid_argument(f"Expected Tensor shape: [batch_size num_classes] but got {list(value.shape)}")
        if (alias == CLASSES and value.dtype.kind not in "OS") or (alias == SCORES and value.dtype != np.float32):
            raise invalid_argument(f"Expected {alias} Tensor of {dtype}. Got: {value.dtype}")
        if value.shape[0] != num_examples:
            raise invalid_argument(f"Expected {alias} output batch size of {num_examples}. Got: {value.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(
            f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    num_classes = (classes if classes is not None else scores).shape[1]
    result = classification_pb2.ClassificationResult()
    for i in range(num_examples):
        classifications = result.classifications.add()
        for c in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                label = classes[i, c]
                entry.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else label
            if scores is not None:
                entry.score = float(scores[i, c])
    return result


def classify(
    version: LoadedVersion, request: classification_pb2.ClassificationRequest, run, method_name_check: bool = False
):
    """TF Serving's Classify on one loaded version; `run(function, inputs)` makes the call."""
    signature_name = request.model_spec.signature_name
    name, signature_def, function = classification_signature(version, signature_name, method_name_check)
    examples = serialized_examples(request.input)
    aliases = check_signature(signature_def)
    outputs = run(function, {INPUTS: examples})
    response = classification_pb2.ClassificationResponse()
    response.model_spec.name = version.model_name
    response.model_spec.version.value = version.version
    response.model_spec.signature_name = name
    response.result.CopyFrom(classification_result(len(examples), {a: outputs[a] for a in aliases}))
    return response
