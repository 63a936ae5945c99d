# SPDX-License-Identifier: Apache-2.0
"""Tensor inference: validation against the model's inputs, the inference threads, the
inline fast path for tiny models, dynamic batching (batching.py queues, _run_batch runs),
pooled and shared-memory outputs, and metrics.

Backends run on a bounded thread pool so the event loop never blocks on compute; only a
model measured to be faster than the thread hand-off runs on the receiving thread, and
only for requests no larger than those it was measured on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from typing import Any

import numpy as np

from ..backends.base import Backend
from ..backends.capabilities import TextGenerator
from ..errors import InvalidInputError, MLOSError, RequestTimeoutError, ServerBusyError
from ..kernel.modes import KernelModes
from ..metrics import Metrics
from ..settings import Settings
from ..tensors import DTYPES, datatype_of, element_count, from_bytes, numpy_dtype, to_bytes
from .admission import Admission, Slot
from .batching import Answer, Computed, DynamicBatcher, Pending
from .model_config import ModelIO
from .statistics import RequestTimes, Statistics
from .system_shm import SharedMemoryRegistry
from .types import InferRequest, InferResponse, InputTensor, OutputTensor, ShmRef

log = logging.getLogger(__name__)


def request_bytes(request: InferRequest) -> int:
    """Input bytes a request carries (shape times item size for shared-memory inputs)."""
    total = 0
    for tensor in request.inputs:
        if tensor.data is not None:
            total += tensor.data.nbytes
        elif tensor.shm is not None:
            total += tensor.shm.byte_size
    return total


class TensorInference:
    """The tensor half of the DataPlane (mixed into it; the state is set up there)."""

    settings: Settings
    kernel: KernelModes
    metrics: Metrics
    statistics: Statistics
    shm: SharedMemoryRegistry
    admission: Admission
    _executor: concurrent.futures.ThreadPoolExecutor
    _compute_ewma: dict[int, tuple[float, int]]
    _inline_s: float
    #: Per loaded backend: the tensors clients see (model_config.ModelIO), and its
    #: dynamic batcher when the config enables batching.
    _io: dict[int, ModelIO]
    _batchers: dict[int, DynamicBatcher]

    def backend(self, name: str, version: str | None = None) -> Backend:
        raise NotImplementedError  # ModelLifecycle.backend

    def _forget_backend(self, backend: Backend) -> None:
        self._compute_ewma.pop(id(backend), None)
        self._io.pop(id(backend), None)
        batcher = self._batchers.pop(id(backend), None)
        if batcher is not None:
            batcher.close()
        self.statistics.forget(id(backend))

    def _serve_as(self, backend: Backend, io: ModelIO) -> None:
        """Called once a version has loaded: its served tensors and, when its config
        enables dynamic batching, the batcher and its instance threads."""
        self._io[id(backend)] = io
        self.statistics.open(id(backend))
        if io.batching is not None:
            self._batchers[id(backend)] = DynamicBatcher(
                backend.source.name, io.batching,
                functools.partial(self._run_batch, backend, io),
                self.kernel.inference_thread_started,
                functools.partial(self._batch_inline, backend))

    def served_io(self, backend: Backend) -> ModelIO:
        return self._io.get(id(backend)) or ModelIO.of(backend)

    def _inline(self, backend: Backend, request: InferRequest) -> bool:
        """Whether this model is fast enough that the thread hand-off would cost more than
        the compute itself (measured, never guessed: the first requests use the pool), and
        this request no larger than those measured (a 192 MiB batch of a tiny model is not
        tiny: it goes to the pool, under the request timeout)."""
        measured = self._compute_ewma.get(id(backend))
        if measured is None:
            return False
        ewma, largest = measured
        return ewma < self._inline_s and request_bytes(request) <= largest

    def _batch_inline(self, backend: Backend, batch: list[Pending]) -> bool:
        """_inline for a batch gathered on the event loop: the model's batch executions
        measured faster than the hand-off, and no larger than those measured."""
        measured = self._compute_ewma.get(id(backend))
        if measured is None:
            return False
        ewma, largest = measured
        return ewma < self._inline_s and sum(request_bytes(p.request) for p in batch) <= largest

    def _run_inline(self, backend: Backend, request: InferRequest) -> InferResponse:
        slot = self.admission.admit()
        try:
            return self._run(backend, request, time.perf_counter())
        finally:
            slot.release()

    def _submit(
        self, request: InferRequest, backend: Backend
    ) -> tuple[concurrent.futures.Future[InferResponse], Slot]:
        slot = self.admission.admit()
        try:
            future = self._executor.submit(self._run, backend, request, time.perf_counter())
        except RuntimeError:  # executor shut down
            slot.release()
            raise ServerBusyError("the server is shutting down") from None
        future.add_done_callback(slot.release)
        return future, slot

    def _queue(
        self, batcher: DynamicBatcher, backend: Backend, io: ModelIO, request: InferRequest,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> tuple[Answer, Slot]:
        """Into the model's batch queue, under the same admission as unbatched work.
        Validated here, on the receiving thread: a malformed request fails alone before
        it is queued, and the batch thread does nothing per request but merge and split
        (its Python work would compete with the event loop for the GIL)."""
        slot = self.admission.admit()
        try:
            arrays = self._validated_inputs(backend, request, io)
            names = self._output_names(request, io)
            future = batcher.submit(request, arrays, names, loop)
        except BaseException:
            slot.release()
            raise
        future.add_done_callback(slot.release)
        return future, slot

    def _batched_response(self, backend: Backend, io: ModelIO, request: InferRequest,
                          computed: Computed) -> InferResponse:
        """A batched request's response from its rows of the batch, on the receiving
        thread (statistics: its output done; success)."""
        response = self._respond(backend, io, request, computed.names, computed.outputs,
                                 False)
        times = computed.times
        times.output_done = time.perf_counter()
        self.metrics.record(request.model, request.protocol,
                            times.input_started - times.queued,
                            times.infer_done - times.infer_started)
        # Statistics hook: this request's success, with its batch's shared compute times.
        self.statistics.record_success(id(backend), times, computed.rows)
        return response

    def _timed_out(self, future: concurrent.futures.Future[Any] | asyncio.Future[Any],
                   slot: Slot) -> MLOSError:
        # Work not started yet never starts; the slot is free for the next request now.
        future.cancel()
        slot.release()
        return RequestTimeoutError(
            f"inference took longer than {self.settings.request_timeout_s}s "
            "(request_timeout_s); send a smaller batch or raise the timeout"
        )

    def _lookup(self, request: InferRequest) -> Backend:
        try:
            return self.backend(request.model, request.version)
        except MLOSError as exc:
            self.metrics.failure(request.model, request.protocol, type(exc).__name__)
            raise

    async def infer(self, request: InferRequest) -> InferResponse:
        backend = self._lookup(request)
        if isinstance(backend, TextGenerator):  # each prompt is a generation (own metrics)
            return await self._infer_text(backend, request)  # type: ignore[attr-defined,no-any-return]
        arrived = time.perf_counter()
        try:
            batcher = self._batchers.get(id(backend))
            if batcher is not None:
                io = self.served_io(backend)
                batched, slot = self._queue(batcher, backend, io, request,
                                            asyncio.get_running_loop())
                assert isinstance(batched, asyncio.Future)
                if batched.done():  # run at once (a lone request of a tiny model)
                    computed = batched.result()
                else:
                    try:
                        computed = await asyncio.wait_for(batched,
                                                          self.settings.request_timeout_s)
                    except asyncio.TimeoutError:
                        raise self._timed_out(batched, slot) from None
                return self._batched_response(backend, io, request, computed)
            if self._inline(backend, request):
                return self._run_inline(backend, request)
            future, slot = self._submit(request, backend)
            try:
                return await asyncio.wait_for(
                    asyncio.wrap_future(future), self.settings.request_timeout_s
                )
            except asyncio.TimeoutError:
                raise self._timed_out(future, slot) from None
        except MLOSError as exc:
            self.metrics.failure(request.model, request.protocol, type(exc).__name__)
            self.statistics.record_failure(id(backend), arrived)  # statistics hook: failure
            raise

    def infer_blocking(self, request: InferRequest) -> InferResponse:
        """For transports that run on their own threads (the gRPC server)."""
        backend = self._lookup(request)
        if isinstance(backend, TextGenerator):
            return self._infer_text_blocking(backend, request)  # type: ignore[attr-defined,no-any-return]
        arrived = time.perf_counter()
        try:
            batcher = self._batchers.get(id(backend))
            if batcher is not None:
                io = self.served_io(backend)
                batched, slot = self._queue(batcher, backend, io, request)
                assert isinstance(batched, concurrent.futures.Future)
                try:
                    computed = batched.result(self.settings.request_timeout_s)
                except concurrent.futures.TimeoutError:
                    raise self._timed_out(batched, slot) from None
                return self._batched_response(backend, io, request, computed)
            if self._inline(backend, request):
                return self._run_inline(backend, request)
            future, slot = self._submit(request, backend)
            try:
                return future.result(self.settings.request_timeout_s)
            except concurrent.futures.TimeoutError:
                raise self._timed_out(future, slot) from None
        except MLOSError as exc:
            self.metrics.failure(request.model, request.protocol, type(exc).__name__)
            self.statistics.record_failure(id(backend), arrived)  # statistics hook: failure
            raise

    def _run(self, backend: Backend, request: InferRequest, queued_at: float) -> InferResponse:
        started = time.perf_counter()
        io = self.served_io(backend)
        arrays = self._validated_inputs(backend, request, io)
        names = self._output_names(request, io)
        wanted = request.outputs
        compute_started = time.perf_counter()
        results = None
        shm_outputs = {o.name: o.shm for o in wanted or () if o.shm is not None}
        if shm_outputs and len(shm_outputs) == len(names):
            shm_targets = self.shm.targets(shm_outputs)  # None: POSIX regions, written after
            if shm_targets is not None:
                results = backend.infer_into(arrays, shm_targets)
        written = results is not None
        if results is None:
            results = self._compute(backend, arrays, names)
        compute_done = time.perf_counter()
        key = id(backend)
        self.kernel.computed(key, request.model)  # first run here: adopt its native threads
        self._measure(key, compute_done - compute_started, request_bytes(request))
        response = self._respond(backend, io, request, names, results, written)
        self.metrics.record(
            request.model, request.protocol, started - queued_at, compute_done - compute_started
        )
        # Statistics hooks: one model execution of this one request.
        times = RequestTimes(queued_at, started, compute_started, compute_done,
                             time.perf_counter())
        rows = request.inputs[0].shape[0] if io.max_batch_size and request.inputs \
            and request.inputs[0].shape else 1
        self.statistics.record_alone(key, times, rows)
        return response

    def _compute(self, backend: Backend, arrays: dict[str, np.ndarray],
                 names: list[str]) -> dict[str, np.ndarray]:
        """One model execution (into pooled buffers when the memory manager has them)."""
        results = None
        if self.kernel.pool is not None:
            results = self._infer_pooled(backend, arrays, names)
        if results is None:
            results = backend.infer(arrays, names)
        return results

    def _output_names(self, request: InferRequest, io: ModelIO) -> list[str]:
        known = {o.name for o in io.outputs}
        if not request.outputs:
            return [o.name for o in io.outputs]
        for requested in request.outputs:
            if requested.name not in known:
                raise InvalidInputError(
                    f"model {request.model!r} has no output {requested.name!r}; "
                    f"outputs: {sorted(known)}"
                )
        return [o.name for o in request.outputs]

    def _respond(self, backend: Backend, io: ModelIO, request: InferRequest, names: list[str],
                 results: dict[str, np.ndarray], written: bool) -> InferResponse:
        """The response from the model's outputs: the config's dims (reshape), shared
        memory written unless the model already wrote it there."""
        outputs: list[OutputTensor] = []
        requests_by_name = {o.name: o for o in request.outputs or ()}
        for name in names:
            array = np.asarray(results[name])
            dims = io.output_reshape.get(name)
            if dims is not None:
                lead = (array.shape[0],) if io.max_batch_size else ()
                try:
                    array = array.reshape(lead + dims)
                except ValueError:
                    raise InvalidInputError(
                        f"output {name!r}: the model gave shape {list(array.shape)}, which "
                        f"the config's dims {list(dims)} cannot hold") from None
            req = requests_by_name.get(name)
            tensor = OutputTensor(name, datatype_of(array), array.shape, array)
            if req is not None:
                tensor.binary = req.binary
                if req.shm is not None:
                    if not written:
                        self._write_shm(req.shm, array, name)
                    tensor.shm, tensor.data = req.shm, None
            outputs.append(tensor)
        return InferResponse(request.model, backend.source.version, outputs, request.id)

    # ---- dynamic batching ----------------------------------------------------------------
    def _run_batch(self, backend: Backend, io: ModelIO, batch: list[Pending]) -> None:
        """One batch taken from a model's queue: one model execution per group of
        requests with the same non-batch shapes, datatypes and outputs."""
        groups: dict[tuple[Any, ...], list[Pending]] = {}
        for pending in batch:
            groups.setdefault(pending.key, []).append(pending)
        for group in groups.values():
            self._execute(backend, group)

    def _execute(self, backend: Backend, group: list[Pending]) -> None:
        """One model execution for `group`, its outputs split back per request.
        Statistics: the execution once, with its batch size (sum(rows)); per request, the
        queue ends when this execution starts, and compute start and end are the
        execution's (their success is recorded when each response is framed)."""
        started = time.perf_counter()
        names = group[0].names
        total = sum(pending.rows for pending in group)
        if len(group) == 1:
            merged = group[0].arrays  # alone: its own arrays, no copy
        else:
            merged = {name: np.concatenate([pending.arrays[name] for pending in group])
                      for name in group[0].arrays}
        compute_started = time.perf_counter()
        try:
            results = self._compute(backend, merged, names)
        except MLOSError as exc:
            if len(group) > 1 and isinstance(exc, InvalidInputError):
                # The model rejected values in one of them: each alone, so only that one fails.
                for pending in group:
                    self._execute(backend, [pending])
                return
            for pending in group:
                self._batch_failed(pending, exc)
            return
        compute_done = time.perf_counter()
        self.kernel.computed(id(backend), backend.source.name)
        self._measure(id(backend), compute_done - compute_started,
                      sum(request_bytes(pending.request) for pending in group))
        self.metrics.batch(backend.source.name, len(group), total)
        for name in names:
            whole = results[name]
            if whole.ndim == 0 or whole.shape[0] != total:
                error = InvalidInputError(
                    f"output {name!r} of shape {list(whole.shape)} has no batch dimension "
                    f"of {total} rows; the model cannot be batched")
                self.statistics.record_execution(id(backend), total, compute_started - started,
                                                 compute_done - compute_started, 0.0)
                for pending in group:
                    self._batch_failed(pending, error)
                return
        parts = []
        offset = 0
        for pending in group:
            parts.append({name: results[name][offset:offset + pending.rows] for name in names})
            offset += pending.rows
        # Statistics hook: one execution of `total` rows (its output: the split).
        self.statistics.record_execution(id(backend), total, compute_started - started,
                                         compute_done - compute_started,
                                         time.perf_counter() - compute_done)
        for pending, part in zip(group, parts, strict=True):
            times = RequestTimes(pending.queued_at, started, compute_started, compute_done, 0.0)
            pending.finish(Computed(names, part, times, pending.rows))

    @staticmethod
    def _batch_failed(pending: Pending, exc: MLOSError) -> None:
        """A batched request's failure in its batch (statistics: its failure; the
        transport-facing infer counts it in /metrics)."""
        pending.finish(None, exc)

    def _measure(self, key: int, spent: float, nbytes: int) -> None:
        previous = self._compute_ewma.get(key)
        # Clipped, so one preempted run on a busy machine does not flip a tiny model to
        # the pool; a model that is really slow still crosses the threshold in a few runs.
        spent = min(spent, 2 * self._inline_s)
        if previous is None:
            self._compute_ewma[key] = (spent, nbytes if spent < self._inline_s else 0)
            return
        ewma, largest = previous
        # The size measured fast grows only with runs that were fast themselves.
        if spent < self._inline_s:
            largest = max(largest, nbytes)
        self._compute_ewma[key] = (0.8 * ewma + 0.2 * spent, largest)

    def _infer_pooled(
        self, backend: Backend, arrays: dict[str, np.ndarray], names: list[str]
    ) -> dict[str, np.ndarray] | None:
        """Memory manager: the backend writes the outputs straight into pooled mlos-ml
        buffers (ONNX Runtime IO binding). None when this model or request cannot (unknown
        output shapes, BYTES outputs) or the module fails: the caller then runs the plain
        path, so a module error never fails the request."""
        pool = self.kernel.pool
        shapes = backend.output_shapes(arrays)
        if pool is None or shapes is None:
            return None
        kinds = {spec.name: spec.datatype for spec in backend.outputs}
        targets: dict[str, memoryview] = {}
        try:
            for name in names:
                dtype = DTYPES.get(kinds.get(name, ""))
                if dtype is None or dtype.kind == "O" or name not in shapes:
                    return None
                nbytes = max(1, element_count(shapes[name]) * dtype.itemsize)
                targets[name] = pool.acquire(nbytes).data
            return backend.infer_into(arrays, targets)
        except MLOSError:
            raise
        except Exception as exc:  # an mlos_ml error (pool full, ioctl failing): fall back
            self.kernel.fallback("pool")
            log.debug("pool buffers unavailable for this request: %s", exc)
            return None

    def _validated_inputs(self, backend: Backend, request: InferRequest,
                          io: ModelIO) -> dict[str, np.ndarray]:
        """The request's inputs checked against the served tensors (the model's, as its
        config narrows them: model_config.model_io) and reshaped as the config says."""
        specs = {s.name: s for s in io.inputs}
        arrays: dict[str, np.ndarray] = {}
        for tensor in request.inputs:
            spec = specs.get(tensor.name)
            if spec is None:
                raise InvalidInputError(
                    f"model {request.model!r} has no input {tensor.name!r}; "
                    f"inputs: {sorted(specs)}"
                )
            if tensor.name in arrays:
                raise InvalidInputError(f"input {tensor.name!r} given twice")
            if tensor.datatype != spec.datatype:
                raise InvalidInputError(
                    f"input {tensor.name!r}: datatype {tensor.datatype} but the model expects "
                    f"{spec.datatype}"
                )
            shape = tensor.shape
            if io.max_batch_size and shape:
                rows = request.inputs[0].shape[0] if request.inputs[0].shape else 0
                if shape[0] > io.max_batch_size:
                    raise InvalidInputError(
                        f"input {tensor.name!r}: batch size {shape[0]} exceeds the model's "
                        f"max_batch_size {io.max_batch_size}")
                if shape[0] != rows:
                    raise InvalidInputError(
                        f"input {tensor.name!r}: batch size {shape[0]}, but "
                        f"{request.inputs[0].name!r} has {rows}; every input needs the same")
            if spec.shape and (
                len(shape) != len(spec.shape)
                or any(s != -1 and s != d for s, d in zip(spec.shape, shape, strict=True))
            ):
                raise InvalidInputError(
                    f"input {tensor.name!r}: shape {list(shape)} does not match the model's "
                    f"{list(spec.shape)} (-1 is any size)"
                )
            data = tensor.data
            if data is None:
                if tensor.shm is None:
                    raise InvalidInputError(f"input {tensor.name!r} has no data")
                data = self._read_shm(tensor)
            inner = io.input_reshape.get(tensor.name)
            if inner is not None:
                lead = (shape[0],) if io.max_batch_size else ()
                try:
                    data = data.reshape(lead + inner)
                except ValueError:
                    raise InvalidInputError(
                        f"input {tensor.name!r}: shape {list(shape)} cannot be reshaped to "
                        f"the model's {list(lead + inner)} (config reshape)") from None
            arrays[tensor.name] = data
        missing = set(specs) - set(arrays)
        if missing:
            raise InvalidInputError(f"missing inputs {sorted(missing)} for model {request.model!r}")
        return arrays

    def _read_shm(self, tensor: InputTensor) -> np.ndarray:
        assert tensor.shm is not None
        region = self.shm.get(tensor.shm.region)
        dtype = numpy_dtype(tensor.datatype)
        needed = element_count(tensor.shape) * dtype.itemsize
        if tensor.datatype != "BYTES" and tensor.shm.byte_size != needed:
            raise InvalidInputError(
                f"input {tensor.name!r}: shared_memory_byte_size {tensor.shm.byte_size} but shape "
                f"{list(tensor.shape)} of {tensor.datatype} needs {needed}"
            )
        view = region.read(tensor.shm.offset, tensor.shm.byte_size)
        return from_bytes(view, tensor.datatype, tensor.shape, tensor.name)

    def _write_shm(self, ref: ShmRef, array: np.ndarray, name: str) -> None:
        data = to_bytes(array)
        size = len(data) if isinstance(data, bytes) else data.nbytes
        if size > ref.byte_size:
            raise InvalidInputError(
                f"output {name!r} needs {size} bytes; shared memory gives {ref.byte_size}"
            )
        self.shm.get(ref.region).write(ref.offset, data)
