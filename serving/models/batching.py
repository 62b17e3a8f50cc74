"""Server-side batching: concurrent requests to one signature run as one call, as TF Serving does.

Requests join a queue; a batch thread takes the oldest request and every queued request that can
be concatenated with it (same signature function, same dtypes and per-example shapes), waiting
up to `batch_timeout_micros` for the batch to fill to `max_batch_size`. The batch is padded to the
next `allowed_batch_sizes` entry by repeating its first example, run once, and split again.
If a batched call fails, the batch is halved and rerun until the failing request stands alone, so
each error reaches its own sender and the other requests still get their answers.
Stopping the scheduler fails the requests still queued with UNAVAILABLE, as a shutting-down
TF Serving answers, so no sender waits forever.
"""

from __future__ import annotations

import collections
import math
import threading
import time

import grpc
import numpy as np

from ..errors import ServingError, check_deadline
from .config import BatchingParameters
from .signatures import run_signature

SHUTTING_DOWN = "Server is shutting down; the request was not run"
DEADLINE_PASSED = "Deadline exceeded before the request ran"


class _Task:
    def __init__(self, function, inputs: dict, deadline: float | None = None):
        self.function, self.inputs, self.deadline = function, inputs, deadline
        self.size = int(next(iter(inputs.values())).shape[0]) if inputs else 0
        shapes = tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))
        self.key = (id(function), shapes)
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.outputs = self.error = None


class BatchScheduler:
    """Runs signature calls in batches; `scheduler.run` has the signature of `signatures.run_signature`."""

    def __init__(self, parameters: BatchingParameters):
        self.parameters = parameters
        self._queue: collections.deque[_Task] = collections.deque()
        self._queued_examples = 0
        self._condition = threading.Condition()
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"batch-{i}", daemon=True)
            for i in range(parameters.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()
        self.batches_run = 0  # counters, read by tests and the benchmark
        self.examples_run = 0

    def run(self, function, inputs: dict, deadline: float | None = None) -> dict:
        """Queues one call and waits for its outputs (a numpy dict), or raises its error.

        A request still queued at its `deadline` (`time.monotonic()` seconds) is not run: it fails
        with DEADLINE_EXCEEDED, since its sender has given up.
        """
        check_deadline(deadline)
        task = _Task(function, inputs, deadline)
        batchable = (
            inputs and all(v.ndim >= 1 for v in inputs.values()) and len({v.shape[0] for v in inputs.values()}) == 1
        )
        if not batchable or task.size == 0 or task.size > self.parameters.max_batch_size:
            return run_signature(function, inputs)  # cannot share a batch: run it on its own
        with self._condition:
            if self._stopped:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            pending_batches = math.ceil((self._queued_examples + task.size) / self.parameters.max_batch_size)
            if pending_batches > self.parameters.max_enqueued_batches:
                raise ServingError(
                    grpc.StatusCode.UNAVAILABLE,
                    "The batch scheduling queue to which this task was submitted is full",
                )
            self._queue.append(task)
            self._queued_examples += task.size
            self._condition.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def stop(self) -> None:
        """Stops the batch threads; queued requests fail with UNAVAILABLE instead of waiting forever."""
        with self._condition:
            self._stopped = True
            stranded = list(self._queue)
            self._queue.clear()
            self._queued_examples = 0
            self._condition.notify_all()
        for task in stranded:
            task.error = ServingError(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
            task.done.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _take_batch(self) -> list[_Task] | None:
        limit = self.parameters.max_batch_size
        timeout = self.parameters.batch_timeout_micros / 1e6
        with self._condition:
            while True:
                if self._stopped:
                    return None
                if not self._queue:
                    self._condition.wait()
                    continue
                now = time.monotonic()
                for task in [t for t in self._queue if t.deadline is not None and t.deadline < now]:
                    self._queue.remove(task)
                    self._queued_examples -= task.size
                    task.error = ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_PASSED)
                    task.done.set()
                if not self._queue:
                    continue
                first = self._queue[0]
                mates = [t for t in self._queue if t.key == first.key]
                size = sum(t.size for t in mates)
                remaining = first.enqueued + timeout - time.monotonic()
                if size >= limit or remaining <= 0:
                    break
                # Wake up at the soonest deadline too, so an expired request is answered in time.
                deadlines = [t.deadline - time.monotonic() for t in self._queue if t.deadline is not None]
                self._condition.wait(max(min([remaining, *deadlines]), 0.001))
            batch, total = [], 0
            for task in mates:
                if total + task.size > limit:
                    break
                batch.append(task)
                total += task.size
            for task in batch:
                self._queue.remove(task)
            self._queued_examples -= total
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            except BaseException as error:  # never leave a sender waiting
                for task in batch:
                    if not task.done.is_set():
                        task.error = error
                        task.done.set()

    def _padded_size(self, size: int) -> int:
        return next((s for s in self.parameters.allowed_batch_sizes if s >= size), size)

    def _run_batch(self, batch: list[_Task]) -> None:
        try:
            outputs = self._call(batch)
        except ServingError as error:
            if len(batch) == 1:
                batch[0].error = error
                batch[0].done.set()
                return
            # One request's input broke the shared call (a corrupt image, another image size):
            # halve the batch until the failing request stands alone, the others still batched.
            half = len(batch) // 2
            self._run_batch(batch[:half])
            self._run_batch(batch[half:])
            return
        start = 0
        for task in batch:
            task.outputs = {alias: value[start : start + task.size] for alias, value in outputs.items()}
            start += task.size
            task.done.set()

    def _call(self, batch: list[_Task]) -> dict:
        sizes = [task.size for task in batch]
        total = sum(sizes)
        padded = self._padded_size(total)
        inputs = {}
        for alias in batch[0].inputs:
            parts = [task.inputs[alias] for task in batch]
            if padded > total:  # TF Serving pads with copies of the first example
                parts.append(np.repeat(parts[0][:1], padded - total, axis=0))
            inputs[alias] = np.concatenate(parts, axis=0)
        outputs = run_signature(batch[0].function, inputs)
        self.batches_run += 1
        self.examples_run += total
        return outputs
