"""Request errors with their gRPC status code, and TensorFlow messages cleaned for clients."""

from __future__ import annotations

import logging
import time

import grpc

log = logging.getLogger("keras_fcn.serving")

MAX_ERROR_CHARS = 1024  # TF Serving cuts longer messages


class ServingError(Exception):
    """A request error with its gRPC status code (also mapped to an HTTP code by the REST API)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        if len(message) > MAX_ERROR_CHARS:
            message = message[:MAX_ERROR_CHARS] + "...TRUNCATED"
        super().__init__(message)
        self.code = code
        self.message = message


def clean_tf_message(message: str) -> str:
    """The useful lines of a TensorFlow runtime error (without node names and stack headers)."""
    lines = []
    for line in message.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("Graph execution error", "Detected at node", "<stack traces", "[[")):
            continue
        lines.append(stripped.split(" [Op:")[0])
    return "\n".join(lines) or message


def check_deadline(deadline: float | None, what: str = "the request ran") -> None:
    """DEADLINE_EXCEEDED once `time.monotonic()` is past `deadline` (None: no deadline)."""
    if deadline is not None and time.monotonic() > deadline:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, f"Deadline exceeded before {what}")


def invalid_argument(message: str) -> ServingError:
    """An INVALID_ARGUMENT error (HTTP 400): what TF Serving answers to a request it cannot use."""
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)
