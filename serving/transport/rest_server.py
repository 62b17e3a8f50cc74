"""The REST port's HTTP server: Tornado reads every request, a bounded pool of workers answers it.

Why Tornado: one event loop reads the requests of every connection, so a client that sends its
headers or body slowly holds a socket, not a worker; it parses HTTP/1.1 (keep-alive, chunked bodies,
`Expect: 100-continue`) and bounds header sizes and read times; it is a well-kept library that
Jupyter and others run in production. What a request does is `rest.respond`, run on a worker once
the whole body is in memory.

Bounds, each answered without a worker:
- at most `max_connections` open connections; one more is answered 503 and closed;
- a request's headers must arrive within `timeout_ms`, its body within `timeout_ms` more (else the
  connection is closed), and an idle keep-alive connection is closed after `timeout_ms`;
- a body larger than `max_body_bytes` is answered 413: from its Content-Length before any of it is
  read, or as soon as a chunked body passes the limit; bodies being received hold at most
  `max_buffered_bytes` together (503 past it);
- `num_threads` workers answer requests and at most `max_queued` more whole requests wait for one;
  a further one is answered 429 at once;
- a request not answered within `timeout_ms` of its first byte gets 504.
`drain(grace)` stops accepting, answers new requests 503, and lets those in flight finish.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent import futures

import grpc
import tornado.httpserver
import tornado.web

from .. import monitoring
from ..api import rest
from ..errors import log

DEFAULT_MAX_CONNECTIONS = 1024
# A body past the limit by at most this much is read and dropped before its 413, so that a client that
# sends its whole body before reading (Python's http.client, requests) reads the answer; a larger one is
# answered at once and its connection closed.
DISCARD_BYTES = 16 << 20
SERVER_NAME = "keras-fcn-model-server"
_REASONS = {413: "Payload Too Large", 429: "Too Many Requests", 503: "Service Unavailable"}
# The gRPC status a refusal is counted with in the metrics.
_REFUSED_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


class RestFront:
    """The REST port: binds at construction (so a taken port fails at once), serves after `start()`.

    Args:
        service: the `ServingService` that answers.
        host, port: where to listen; port 0 picks a free one (`self.port`).
        num_threads: workers answering requests (`--rest_api_num_threads`).
        max_queued: whole requests that may wait for a worker (`--max_queued_requests`).
        max_body_bytes: the largest body (`--rest_api_max_body_bytes`).
        timeout_ms: `--rest_api_timeout_in_ms`: the request's deadline, and the read deadlines.
        max_connections: open connections at most (`--rest_api_max_connections`).
        max_elements: `--max_request_elements`, checked on the body before it is parsed.
        metrics: a `monitoring.Metrics` that counts every REST call, or None.
        prometheus_path: the metrics page's path, or None.
        states: a callable returning the versions' states, for the metrics page.
    """

    def __init__(
        self,
        service,
        host: str,
        port: int,
        *,
        num_threads: int = rest.DEFAULT_THREADS,
        max_queued: int = rest.DEFAULT_MAX_QUEUED,
        max_body_bytes: int = rest.MAX_BODY_BYTES,
        timeout_ms: int = rest.DEFAULT_TIMEOUT_MS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_buffered_bytes: int | None = None,
        max_elements: int = 1 << 62,
        metrics=None,
        prometheus_path: str | None = None,
        states=None,
    ):
        if num_threads < 1 or max_queued < 0 or max_connections < 1:
            raise ValueError(
                "num_threads and max_connections must be >= 1 and max_queued >= 0. Received: "
                f"num_threads={num_threads}, max_queued={max_queued}, max_connections={max_connections}"
            )
        self.service, self.metrics, self.prometheus_path, self.states = service, metrics, prometheus_path, states
        self.max_body_bytes, self.timeout_ms, self.max_elements = max_body_bytes, timeout_ms, max_elements
        self.max_buffered_bytes = max_buffered_bytes or 2 * max_body_bytes
        self.max_connections = max_connections
        self.draining = False
        self.refused = 0  # requests answered 503 because the drain had begun
        self._capacity = num_threads + max_queued  # requests answered or waiting for a worker, at most
        self._admitted = 0
        self._in_flight = 0  # requests whose headers arrived and that are not yet answered
        self._buffered = 0  # body bytes reserved by requests being received
        self._lock = threading.Condition()
        self._workers = futures.ThreadPoolExecutor(num_threads, thread_name_prefix="rest")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.create_server((host, port), family=family, backlog=1024)
        self._socket.setblocking(False)
        self.port = self._socket.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._http = None
        self._thread = threading.Thread(target=self._serve, name="rest-front", daemon=True)

    # --- the counters, shared by the event loop, the workers and `drain` ---------------------------

    @property
    def in_flight(self) -> int:
        """Requests begun (headers received) and not yet answered."""
        with self._lock:
            return self._in_flight

    @property
    def admitted(self) -> int:
        """Requests being answered by a worker or waiting for one."""
        with self._lock:
            return self._admitted

    @property
    def connections(self) -> int:
        """Open connections."""
        return self._http.open_connections if self._http is not None else 0

    def enter(self) -> bool:
        """Counts a request in flight, unless the drain has begun: one lock, so `drain` misses none."""
        with self._lock:
            if self.draining:
                self.refused += 1
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._lock.notify_all()

    def reserve(self, size: int) -> bool:
        with self._lock:
            if self._buffered + size > self.max_buffered_bytes:
                return False
            self._buffered += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._buffered -= size

    def admit(self) -> bool:
        with self._lock:
            if self._admitted >= self._capacity:
                return False
            self._admitted += 1
            return True

    def done(self) -> None:
        with self._lock:
            self._admitted -= 1

    # --- serving ------------------------------------------------------------------------------------

    def start(self) -> RestFront:
        started = threading.Event()
        self._thread.start()
        self._loop.call_soon_threadsafe(started.set)
        started.wait(30)
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        timeout = max(self.timeout_ms / 1000, 0.001)
        application = tornado.web.Application([(r".*", _Handler, {"front": self})], compress_response=False)
        self._http = _LimitedHTTPServer(
            application,
            self.max_connections,
            idle_connection_timeout=timeout,  # Tornado's deadline for a request's headers too
            body_timeout=timeout,
            max_body_size=1 << 62,  # the handler answers 413 itself
            max_header_size=64 << 10,
        )
        self._http.add_socket(self._socket)
        self._loop.run_forever()
        self._loop.close()

    def drain(self, grace: float) -> int:
        """Stops accepting, answers new requests 503, lets those in flight finish for up to `grace` s, closes.

        Returns:
            How many requests were still in flight after `grace` s (their connections are closed).
        """
        deadline = time.monotonic() + grace
        with self._lock:
            self.draining = True
        if not self._thread.is_alive():
            self._socket.close()
            self._workers.shutdown(wait=False)
            return 0
        asyncio.run_coroutine_threadsafe(_stop_accepting(self._http), self._loop).result(10)
        with self._lock:
            while self._in_flight and time.monotonic() < deadline:
                self._lock.wait(max(deadline - time.monotonic(), 0.01))
            unfinished = self._in_flight
        try:  # idle keep-alive connections, and any past the grace time
            asyncio.run_coroutine_threadsafe(self._http.close_all_connections(), self._loop).result(5)
        except (futures.TimeoutError, TimeoutError):
            log.warning("REST connections still open 5 s after the drain")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._workers.shutdown(wait=False, cancel_futures=True)
        return unfinished

    def record(self, handler, reply: rest.Reply, started: float) -> None:
        """Counts a REST call in the metrics, before its answer is sent (a client holding its answer finds it
        counted)."""
        if self.metrics is None:
            return
        match = rest.PATH.match(handler.request.path)
        name, verb, version = (match["name"], match["verb"] or "", match["version"] or "") if match else ("", "", "")
        status = reply.status or (grpc.StatusCode.OK if reply.code == 200 else grpc.StatusCode.INTERNAL)
        version, signature_name = reply.answered or (version, "")
        self.metrics.record_request(name, verb, "REST", status, time.perf_counter() - started, version, signature_name)


async def _stop_accepting(server) -> None:
    server.stop()


class _LimitedHTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server with a bound on open connections: one more is answered 503 and closed."""

    def initialize(self, application, max_connections: int, **kwargs):
        super().initialize(application, **kwargs)
        self.max_connections = max_connections
        self.open_connections = 0  # counted here: Tornado's own set is private

    def handle_stream(self, stream, address) -> None:
        if self.open_connections >= self.max_connections:
            message = f"too many open connections (--rest_api_max_connections={self.max_connections})"
            stream.write(_refusal(503, message)).add_done_callback(lambda _: stream.close())
            return
        self.open_connections += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)


def _refusal(code: int, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = f"HTTP/1.1 {code} {_REASONS[code]}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"Connection: close\r\n\r\n" + body


@tornado.web.stream_request_body
class _Handler(tornado.web.RequestHandler):
    """Reads one request's body into one buffer (bounded), then has a worker answer it."""

    SUPPORTED_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")

    def initialize(self, front: RestFront) -> None:
        self.front = front
        self._started = time.perf_counter()
        self._counted = False
        self._reserved = 0
        self._body: bytearray | None = None
        self._size = 0
        self._too_large: str | None = None  # the 413's message, once the body is known to pass the limit

    def set_default_headers(self) -> None:
        self.set_header("Server", SERVER_NAME)
        self.clear_header("Content-Type")

    def compute_etag(self):
        return None

    def log_exception(self, typ, value, tb) -> None:
        log.error("REST front error", exc_info=(typ, value, tb))

    def _refuse(self, code: int, message: str, close: bool = False) -> None:
        self.front.record(self, rest.Reply(code=code, status=_REFUSED_STATUS.get(code)), self._started)
        self.set_status(code, _REASONS.get(code))
        self.set_header("Content-Type", "application/json")
        if close or self.front.draining:
            self.set_header("Connection", "close")
        self.finish(json.dumps({"error": message}))

    def prepare(self) -> None:
        self._started = time.perf_counter()
        self._deadline = time.monotonic() + self.front.timeout_ms / 1000
        if not self.front.enter():
            self._refuse(503, "the server is shutting down", close=True)
            return
        self._counted = True
        limit = self.front.max_body_bytes
        headers = self.request.headers
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            self._body, self._chunked = bytearray(), True
            return
        self._chunked = False
        text = (headers.get("Content-Length") or "0").strip()
        if not (text.isascii() and text.isdecimal()):
            self._refuse(400, f"Content-Length must be a non-negative integer; received {text[:40]!r}", close=True)
            return
        length = int(text)
        if length > limit:
            if length > DISCARD_BYTES:
                self._refuse(413, rest.too_large(length, limit), close=True)
            else:
                self._too_large = rest.too_large(length, limit)  # read, dropped, then answered
            return
        if not self.front.reserve(length):
            self._refuse(503, "the server holds too many request bodies being received; retry later", close=True)
            return
        self._reserved = length
        self._body = bytearray(length)  # filled in place: the body's one copy

    def data_received(self, chunk: bytes) -> None:
        if self._finished:
            return
        end = self._size + len(chunk)
        if self._too_large is not None:  # dropped
            self._size = end
            if end > DISCARD_BYTES:
                self._refuse(413, self._too_large, close=True)
            return
        if self._chunked:
            if end > self.front.max_body_bytes:
                self._too_large = rest.too_large(end, self.front.max_body_bytes, "at least ")
                self._free_body()
                self._size = end
                if end > DISCARD_BYTES:
                    self._refuse(413, self._too_large, close=True)
                return
            if not self.front.reserve(len(chunk)):
                self._refuse(503, "the server holds too many request bodies being received; retry later", close=True)
                return
            self._reserved += len(chunk)
            self._body += chunk
        else:
            self._body[self._size : end] = chunk
        self._size = end

    async def _answer(self) -> None:
        if self._finished:
            return
        if self._too_large is not None:
            self._refuse(413, self._too_large)
            return
        if self._size < len(self._body or b""):
            self._refuse(400, f"the request body ended after {self._size} of its {len(self._body)} bytes", True)
            return
        request = self.request
        front = self.front
        if request.method == "GET" and front.prometheus_path and request.path == front.prometheus_path:
            self.set_header("Content-Type", monitoring.CONTENT_TYPE)
            self.finish(front.metrics.exposition(front.states()).encode("utf-8"))
            return
        if not front.admit():
            reply = rest.Reply(status=grpc.StatusCode.RESOURCE_EXHAUSTED)
            reply.json(429, {"error": "too many REST requests at once; retry later"})
        else:
            try:
                reply = await asyncio.get_running_loop().run_in_executor(
                    front._workers,
                    rest.respond,
                    front.service,
                    request.method,
                    request.uri,
                    self._body or b"",
                    self._deadline,
                    front.timeout_ms,
                    front.max_elements,
                )
            finally:
                front.done()
        self._free_body()
        front.record(self, reply, self._started)
        self.set_status(reply.code)
        self.set_header("Content-Type", reply.content_type)
        for key, value in reply.headers.items():
            self.set_header(key, value)
        if reply.close or front.draining:
            self.set_header("Connection", "close")
        self.finish(reply.data)

    def _free_body(self) -> None:
        self._body = None
        if self._reserved:
            self.front.release(self._reserved)
            self._reserved = 0

    async def get(self, *args):
        await self._answer()

    post = put = delete = patch = head = get

    def options(self, *args) -> None:  # a CORS preflight: 200 with an Origin, else 400 (both empty)
        if not rest.API.fullmatch(self.request.path):
            self._refuse(404, f"Not found: OPTIONS {self.request.uri}")
            return
        origin = self.request.headers.get("Origin", "")
        self.set_status(200 if ("http://" in origin or "https://" in origin) else 400)
        self.finish()

    def on_finish(self) -> None:
        self._close_out()

    def on_connection_close(self) -> None:
        self._close_out()

    def _close_out(self) -> None:
        self._free_body()
        if self._counted:
            self._counted = False
            self.front.leave()


