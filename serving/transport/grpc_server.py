"""The gRPC side of the server: the PredictionService and ModelService servicers, and the interceptor that
parses requests without raising, refuses calls while draining and counts calls in flight."""

from __future__ import annotations

import threading
import time

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from ..api.service import ServingService
from ..errors import MAX_ERROR_CHARS, ServingError, log


def _deadline(context) -> float | None:
    """The client's gRPC deadline as a `time.monotonic()` time; None without one."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e8 else time.monotonic() + remaining


def _answer(context, handler, request):
    """Runs a handler; a ServingError becomes its gRPC status, anything else INTERNAL (server stays up)."""
    try:
        return handler(request)
    except ServingError as error:
        context.abort(error.code, error.message)
    except Exception as error:
        log.exception("gRPC request failed")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"[: MAX_ERROR_CHARS])


class _Malformed:
    """A request message that did not parse; answered INVALID_ARGUMENT instead of gRPC's INTERNAL."""

    def __init__(self, error: Exception):
        self.error = error


class RequestGuard(grpc.ServerInterceptor):
    """Parses request messages without raising, refuses new calls while draining, counts calls in flight.

    gRPC itself answers a message that fails to parse with INTERNAL ("Exception deserializing request"):
    here it gets INVALID_ARGUMENT. Once `drain` starts, new calls get UNAVAILABLE from the handler,
    while gRPC's own stop would cancel calls it has received but not yet started (CANCELLED).
    """

    def __init__(self):
        self.draining = False
        self.refused = 0  # calls refused UNAVAILABLE because the drain had begun
        self._in_flight = 0
        self._condition = threading.Condition()

    @property
    def in_flight(self) -> int:
        """Calls being answered now (in a handler)."""
        with self._condition:
            return self._in_flight

    def drain(self, deadline: float) -> int:
        """Refuses new calls; waits until the calls in flight are answered or `time.monotonic()` passes `deadline`.

        Returns:
            How many calls were still running at the deadline.
        """
        with self._condition:
            self.draining = True
            while self._in_flight and time.monotonic() < deadline:
                self._condition.wait(max(deadline - time.monotonic(), 0.01))
            return self._in_flight

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        parse, behaviour = handler.request_deserializer, handler.unary_unary

        def safe_parse(data: bytes):
            try:
                return parse(data)
            except Exception as error:
                return _Malformed(error)

        def run(request, context):
            # The drain flag is read and the call counted under one lock: `drain` sees every call it lets in.
            with self._condition:
                refused = self.draining
                self.refused += refused
                self._in_flight += not refused
            if refused:
                context.abort(grpc.StatusCode.UNAVAILABLE, "Server is shutting down")
            try:
                if isinstance(request, _Malformed):
                    message = f"Could not parse the request message: {type(request.error).__name__}: {request.error}"
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, message[:MAX_ERROR_CHARS])
                return behaviour(request, context)
            finally:
                with self._condition:
                    self._in_flight -= 1
                    self._condition.notify_all()

        return handler._replace(request_deserializer=safe_parse, unary_unary=run)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, service: ServingService):
        self.service = service

    def Predict(self, request, context):  # noqa: N802 - gRPC method names
        return _answer(context, lambda r: self.service.predict(r, _deadline(context)), request)

    def GetModelMetadata(self, request, context):  # noqa: N802
        return _answer(context, self.service.metadata, request)

    def Classify(self, request, context):  # noqa: N802
        return _answer(context, lambda r: self.service.classify(r, _deadline(context)), request)

    def Regress(self, request, context):  # noqa: N802
        return _answer(context, lambda r: self.service.regress(r, _deadline(context)), request)

    def MultiInference(self, request, context):  # noqa: N802
        return _answer(context, lambda r: self.service.multi_inference(r, _deadline(context)), request)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, service: ServingService):
        self.service = service

    def GetModelStatus(self, request, context):  # noqa: N802
        return _answer(context, self.service.status, request)

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        if not self.service.model_management:
            context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                "model management is turned off on this server (--enable_model_management=false)",
            )
        return _answer(context, self.service.reload, request)
