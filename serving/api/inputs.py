"""TF Serving's checks of a Predict request's inputs and output filter against a SignatureDef.

As TF Serving, the names are checked (a signature's `defaults` fill inputs left out) and the
dtypes must match; the shapes are not compared with the signature's: whatever is sent is fed,
and only the graph's own ops may refuse it.
"""

from __future__ import annotations

import grpc
import tensorflow as tf

from ..errors import ServingError
from ..wire.tensor_codec import data_type_string, request_array


def _join(names) -> str:
    return ",".join(sorted(names))


def check_inputs(signature_def, inputs: dict) -> dict:
    """The arrays to feed, by alias (defaults filled in); INVALID_ARGUMENT as TF Serving words it.

    Args:
        signature_def: the SignatureDef run.
        inputs: the request's arrays by alias.

    Returns:
        {alias: array} for every input of the signature.

    Raises:
        ServingError: on a missing or extra input name, or a dtype the signature does not take.
    """
    expected, defaults = signature_def.inputs, signature_def.defaults
    if len(inputs) > len(expected) or (len(inputs) < len(expected) and not defaults):
        extra, missing = set(inputs) - set(expected), set(expected) - set(inputs)
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(inputs)}!={len(expected)} len({{{_join(inputs)}}}) != "
            f"len({{{_join(expected)}}}). Sent extra: {{{_join(extra)}}}. Missing but required: {{{_join(missing)}}}.",
        )
    feed = {}
    for alias in sorted(expected):
        if alias in inputs:
            feed[alias] = inputs[alias]
        elif alias in defaults:
            feed[alias] = request_array(alias, defaults[alias])
        else:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Signature input alias: {alias}(feed name: {expected[alias].name}) not found in request and no "
                f"default value provided. Inputs expected to be in the request {{{_join(inputs)}}}, or default "
                f"input alias set: {_join(defaults)}",
            )
    used = set(inputs) & set(expected)
    if inputs and len(used) != len(inputs):
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Inputs contains invalid name. Used request inputs: {_join(used)}, request input: {_join(inputs)}",
        )
    for position, (alias, array) in enumerate(feed.items()):
        want = tf.dtypes.as_dtype(expected[alias].dtype)
        got = tf.dtypes.as_dtype(array.dtype) if array.dtype.kind not in "OSU" else tf.string
        if want != got:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{position}] to be {data_type_string(want)} but {data_type_string(got)} is provided",
            )
    return feed


def check_output_filter(signature_def, output_filter) -> list[str]:
    """The output aliases to return (all when the filter is empty); TF Serving's errors otherwise."""
    aliases = list(output_filter)
    for index, alias in enumerate(aliases):
        if alias not in signature_def.outputs:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(signature_def.outputs))}}}.",
            )
        if alias in aliases[:index]:
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"duplicate output tensor alias: {alias}")
    return aliases or sorted(signature_def.outputs)
