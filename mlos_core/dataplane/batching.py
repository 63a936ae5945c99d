# SPDX-License-Identifier: Apache-2.0
"""Dynamic batching: the queue of one model version and the threads that turn it into
model executions (Triton's dynamic batcher).

Requests wait in one FIFO queue per batched model version. A batch is taken when the
queued rows (dim 0 of each request) reach the largest preferred batch size (or
max_batch_size when none is preferred), or when the oldest request has waited
max_queue_delay; it holds at most max_batch_size rows, and the largest preferred size
reached when there are preferred sizes. Each of `instances` threads takes a batch and runs
it (TensorInference._run_batch: merge, one model execution per group of compatible
requests, split), so while one batch computes the next one fills. Requests are validated
before they queue and their responses are built after, both on the receiving thread.

Every request keeps its own future: a request cancelled or timed out while queued is
skipped when the batch is taken (it never runs, it holds no rows), one that fails
validation never queues, and a result is set only on its own future.

Triton's statistics extension (statistics.py) is reported from these points:
    queued            DynamicBatcher.submit (Pending.queued_at); the queue time ends when
                      the request's model execution starts (TensorInference._execute), so
                      it is the time spent in this queue
    cancelled         DynamicBatcher._cancelled; the timeout is TensorInference._timed_out
    one execution     TensorInference._execute, after the model ran: record_execution
                      once, with the batch size sum(rows) (and metrics.batch: one
                      execution of sum(rows) rows for len(group) requests)
    compute start/end TensorInference._execute's compute_started / compute_done, shared
                      by every request of that execution (Computed.times)
    output done       TensorInference._batched_response (the request's outputs framed,
                      shared memory written): record_success per request, counting its
                      rows as inferences (and metrics.record)
    failure           TensorInference._queue (validation), _batch_failed (the model, the
                      split), _fail_all (unloading, unexpected errors) only answer the
                      request; the transports' infer wrappers record_failure, so every
                      failure counts once
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInputError, ServerBusyError
from .model_config import Batching
from .statistics import RequestTimes
from .types import InferRequest

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Computed:
    """A batched request's rows of the batch's outputs, `rows` of them, and the moments
    it passed (queued, its execution's start, compute start and end, shared with its
    batch mates; output_done is set when its response is framed)."""

    names: list[str]
    outputs: dict[str, np.ndarray]
    times: RequestTimes
    rows: int


#: A request's answer: a concurrent future for blocking callers (gRPC threads), an asyncio
#: future for event-loop callers (no cross-thread hand-off when the loop runs the batch).
Answer = concurrent.futures.Future[Computed] | asyncio.Future[Computed]


@dataclass(eq=False, slots=True)
class Pending:
    """One queued request, validated: `arrays` are the inputs the model gets, `names` the
    outputs it asked for, `rows` its dim 0 (its share of the batch), `key` what a batch
    mate must share (non-batch shapes, datatypes, outputs)."""

    request: InferRequest
    future: Answer
    queued_at: float
    rows: int
    arrays: dict[str, np.ndarray]
    names: list[str]
    key: tuple[Any, ...]
    #: For an event-loop caller (`future` an asyncio future): its loop and that loop's
    #: thread, where the answer is set directly; any other thread hands it over.
    loop: asyncio.AbstractEventLoop | None = None
    loop_thread: int = 0

    def start(self) -> bool:
        """False when cancelled (timed out) while queued: it must not run."""
        if isinstance(self.future, concurrent.futures.Future):
            return self.future.set_running_or_notify_cancel()
        return not self.future.done()

    def finish(self, result: Computed | None, exc: BaseException | None = None) -> None:
        """Answers the request (a result or `exc`), from whichever thread ran it."""
        future = self.future
        if isinstance(future, concurrent.futures.Future):
            if exc is None:
                future.set_result(result)  # type: ignore[arg-type]
            elif not future.done():
                future.set_exception(detached(exc))
        elif threading.get_ident() == self.loop_thread:
            _settle(future, result, exc)
        elif self.loop is not None:
            self.loop.call_soon_threadsafe(_settle, future, result, exc)


def _settle(future: asyncio.Future[Computed], result: Computed | None,
            exc: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile (its timeout)
        return
    if exc is None:
        future.set_result(result)  # type: ignore[arg-type]
    else:
        future.set_exception(detached(exc))


def request_rows(request: InferRequest) -> int:
    """The batch rows a request declares (dim 0 of its first input; every input must
    agree, which validation checks)."""
    if not request.inputs or not request.inputs[0].shape:
        raise InvalidInputError("a batched model needs inputs with a batch dimension")
    return request.inputs[0].shape[0]


class DynamicBatcher:
    def __init__(
        self,
        model: str,
        batching: Batching,
        execute: Callable[[list[Pending]], None],
        thread_started: Callable[[], None] = lambda: None,
        run_here: Callable[[list[Pending]], bool] | None = None,
    ) -> None:
        self.model = model
        self.batching = batching
        self._execute = execute
        #: Whether a batch gathered on an event loop may run right there (a model measured
        #: faster than the thread hand-off; only without a queue delay).
        self._run_here = run_here if batching.max_delay_s == 0 else None
        self._busy = 0  # batches the instance threads are running
        self._thread_started = thread_started
        self._queue: collections.deque[Pending] = collections.deque()
        self._rows = 0  # rows of the requests queued and not cancelled (approximately)
        self._cond = threading.Condition()
        self._closed = False
        #: Requests submitted from an event loop, joining the queue at the end of the
        #: loop's current iteration (per loop).
        self._gathered: dict[asyncio.AbstractEventLoop, list[Pending]] = {}
        #: Submits from event loops in their current iteration, and whether the last
        #: iteration had at most one (then a lone request runs at once; see submit).
        self._in_tick: dict[asyncio.AbstractEventLoop, int] = {}
        self._alone = True
        top = max(batching.preferred) if batching.preferred else batching.max_batch_size
        self._target = min(top, batching.max_batch_size)
        self._threads = [
            threading.Thread(target=self._loop, name=f"mlos-batch-{model}-{i}", daemon=True)
            for i in range(batching.instances)
        ]
        for thread in self._threads:
            thread.start()

    # ---- the request side --------------------------------------------------------------
    def submit(self, request: InferRequest, arrays: dict[str, np.ndarray], names: list[str],
               loop: asyncio.AbstractEventLoop | None = None) -> Answer:
        """Queue a request (statistics: its "queued" moment). Raises InvalidInputError
        for more rows than max_batch_size, ServerBusyError once closed.

        From an event loop (`loop`), requests that reach the data plane in the same loop
        iteration join the queue together, once that iteration's work is done: one lock
        and one wake-up for all of them, so they make one batch even with no queue delay
        (otherwise the batch thread would wake for the first and run it alone)."""
        rows = request_rows(request)
        if rows > self.batching.max_batch_size:
            raise InvalidInputError(
                f"batch size {rows} exceeds the model's max_batch_size "
                f"{self.batching.max_batch_size}")
        if self._closed:
            raise ServerBusyError(f"model {self.model!r} is unloading; retry")
        future: Answer = concurrent.futures.Future() if loop is None else loop.create_future()
        key = (tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(arrays.items())),
               tuple(names))
        pending = Pending(request, future, time.perf_counter(), rows, arrays, names, key,
                          loop, threading.get_ident() if loop is not None else 0)
        # A cancelled request gives its rows back, so it never makes a batch look full.
        # (A bound method, not a closure over `pending`: future -> callback -> pending ->
        # future would be a reference cycle holding the request's pooled body buffer
        # until a garbage collection.)
        future.add_done_callback(self._cancelled)
        if loop is None:
            self._enqueue([pending])
            return future
        seen = self._in_tick.get(loop, 0)
        self._in_tick[loop] = seen + 1
        if not seen:
            loop.call_soon(self._tick_done, loop)
            if self._alone and self._run_here is not None and self._idle() \
                    and self._run_here([pending]):
                # Requests come one at a time: waiting for this iteration to end would
                # only add latency. Run it now, as the unbatched inline path would.
                self._run_inline([pending])
                return future
        gathered = self._gathered.get(loop)
        if gathered is None:  # only this loop's thread touches its list
            gathered = self._gathered[loop] = []
            loop.call_soon(self._flush, loop)
        gathered.append(pending)
        return future

    def _tick_done(self, loop: asyncio.AbstractEventLoop) -> None:
        self._alone = self._in_tick.pop(loop, 0) <= 1

    def _idle(self) -> bool:
        with self._cond:
            return not self._queue and not self._busy and not self._closed

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        gathered = [p for p in self._gathered.pop(loop, ()) if not p.future.done()]
        if self._run_here is not None and gathered and self._run_here(gathered) \
                and self._idle():
            # Nothing queued before them and nothing running: the whole gathered set runs
            # here, in batches of at most max_batch_size rows, with no thread hand-off
            # (the inline path of a tiny model, batched).
            self._run_inline(gathered)
            return
        self._enqueue(gathered)

    def _run_inline(self, gathered: list[Pending]) -> None:
        batch: list[Pending] = []
        rows = 0
        for pending in gathered:
            if batch and rows + pending.rows > self.batching.max_batch_size:
                self._execute_now(batch)
                batch, rows = [], 0
            if pending.start():
                batch.append(pending)
                rows += pending.rows
        if batch:
            self._execute_now(batch)

    def _execute_now(self, batch: list[Pending]) -> None:
        try:
            self._execute(batch)
        except BaseException as exc:  # never leave a request without an answer
            log.exception("batch of model %s failed", self.model)
            _fail_all(batch, exc)

    def _enqueue(self, pending: list[Pending]) -> None:
        with self._cond:
            if not self._closed:
                self._queue.extend(pending)
                self._rows += sum(p.rows for p in pending)
                self._cond.notify()
                return
        _fail_all(pending, ServerBusyError(f"model {self.model!r} was unloaded; retry"))

    def _cancelled(self, future: Answer) -> None:
        if not future.cancelled():
            return
        with self._cond:
            for pending in self._queue:
                if pending.future is future:
                    self._queue.remove(pending)
                    self._rows -= pending.rows
                    return

    @property
    def queued(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        """Stop taking batches; requests still queued fail (the model is unloading)."""
        with self._cond:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._rows = 0
            self._cond.notify_all()
        for pending in left:
            if pending.start():
                pending.finish(None, ServerBusyError(f"model {self.model!r} was unloaded; retry"))

    # ---- the batch side ----------------------------------------------------------------
    def _take(self) -> list[Pending] | None:
        """Blocks until a batch is due; None once closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                if not self._queue:
                    self._cond.wait()
                    continue
                if self._rows >= self._target:
                    break
                wait = self._queue[0].queued_at + self.batching.max_delay_s \
                    - time.perf_counter()
                if wait <= 0:
                    break
                self._cond.wait(wait)
            cap = self.batching.max_batch_size
            reached = [p for p in self.batching.preferred if p <= self._rows]
            if reached:
                cap = max(reached)
            batch: list[Pending] = []
            taken = 0
            while self._queue and (not batch or taken + self._queue[0].rows <= cap):
                pending = self._queue.popleft()
                self._rows -= pending.rows
                # False: cancelled (timed out) while queued; it never runs.
                if pending.start():
                    batch.append(pending)
                    taken += pending.rows
            if self._queue:
                self._cond.notify()  # another instance may take the rest
            self._busy += 1
            return batch

    def _loop(self) -> None:
        self._thread_started()
        while True:
            batch = self._take()
            if batch is None:
                return
            if batch:
                self._execute_now(batch)
            with self._cond:
                self._busy -= 1
            # Not kept while waiting for the next batch: the requests hold their bodies.
            del batch


def _fail_all(batch: list[Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.finish(None, exc)


def detached(exc: BaseException) -> BaseException:
    """`exc` without its traceback and chained exceptions: their frames hold the batch
    (every request's arrays, pooled body buffers among them), and a future holding the
    exception would keep them in a reference cycle until a garbage collection."""
    exc.__traceback__ = None
    exc.__context__ = exc.__cause__ = None
    return exc
