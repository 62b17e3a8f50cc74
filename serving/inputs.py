"""TF Serving's checks of a request's inputs and output filter against a SignatureDef."""

from __future__ import annotations

import grpc
import tensorflow as tf

from .errors import ServingError


def check_inputs(signature_def, inputs: dict) -> None:
    """TF Serving's input checks: names, then dtypes, then shapes; INVALID_ARGUMENT on a mismatch."""
    expected = sorted(signature_def.inputs)
    sent = sorted(inputs)
    if sent != expected:
        extra = sorted(set(sent) - set(expected))
        missing = sorted(set(expected) - set(sent))
        raise ServingError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sent)}}}) != "
            f"len({{{','.join(expected)}}}). Sent extra: {{{','.join(extra)}}}. "
            f"Missing but required: {{{','.join(missing)}}}.",
        )
    for position, alias in enumerate(expected):
        info, array = signature_def.inputs[alias], inputs[alias]
        want = tf.dtypes.as_dtype(info.dtype)
        got = tf.dtypes.as_dtype(array.dtype) if array.dtype.kind not in "OSU" else tf.string
        if want != got:
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Expects arg[{position}] to be {want.name} but {got.name} is provided",
            )
        if info.tensor_shape.unknown_rank:
            continue
        dims = [d.size for d in info.tensor_shape.dim]
        if len(dims) != array.ndim or any(d not in (-1, s) for d, s in zip(dims, array.shape, strict=False)):
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input '{alias}' has shape {list(array.shape)}, the signature expects {dims} (-1: any size)",
            )


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
