# SPDX-License-Identifier: Apache-2.0
"""Tensor inference: validation against the model's inputs, the inference threads, the
inline fast path for tiny models, pooled and shared-memory outputs, and metrics.

Backends run on a bounded thread pool so the event loop never blocks on compute; only a
model measured to be faster than the thread hand-off runs on the receiving thread, and
only for requests no larger than those it was measured on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any

import numpy as np

from ..backends.base import Backend
from ..backends.capabilities import TextGenerator
from ..errors import InvalidInputError, MLOSError, RequestTimeoutError, ServerBusyError
from ..kernel_modes import KernelModes
from ..metrics import Metrics
from ..protocols.shm import SharedMemoryRegistry
from ..settings import Settings
from ..tensors import DTYPES, datatype_of, element_count, from_bytes, numpy_dtype, to_bytes
from .admission import Admission, Slot
from .statistics import RequestTimes, Statistics
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

    def backend(self, name: str, version: str | None = None) -> Backend:
        raise NotImplementedError  # ModelLifecycle.backend

    def _forget_backend(self, backend: Backend) -> None:
        self._compute_ewma.pop(id(backend), None)
        self.statistics.forget(id(backend))

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

    def _timed_out(self, future: concurrent.futures.Future[Any], slot: Slot) -> MLOSError:
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
        arrays = self._validated_inputs(backend, request)
        wanted = request.outputs
        known = {o.name: o for o in backend.outputs}
        if wanted:
            for requested in wanted:
                if requested.name not in known:
                    raise InvalidInputError(
                        f"model {request.model!r} has no output {requested.name!r}; "
                        f"outputs: {sorted(known)}"
                    )
            names = [o.name for o in wanted]
        else:
            names = list(known)
        compute_started = time.perf_counter()
        results = None
        shm_outputs = {o.name: o.shm for o in wanted or () if o.shm is not None}
        if shm_outputs and len(shm_outputs) == len(names):
            shm_targets = self.shm.targets(shm_outputs)  # None: POSIX regions, written after
            if shm_targets is not None:
                results = backend.infer_into(arrays, shm_targets)
        written = results is not None
        if results is None and self.kernel.pool is not None:
            results = self._infer_pooled(backend, arrays, names)
        if results is None:
            results = backend.infer(arrays, names)
        compute_done = time.perf_counter()
        key = id(backend)
        self.kernel.computed(key, request.model)  # first run here: adopt its native threads
        self._measure(key, compute_done - compute_started, request_bytes(request))
        outputs: list[OutputTensor] = []
        requests_by_name = {o.name: o for o in wanted or ()}
        for name in names:
            array = np.asarray(results[name])
            req = requests_by_name.get(name)
            tensor = OutputTensor(name, datatype_of(array), array.shape, array)
            if req is not None:
                tensor.binary = req.binary
                if req.shm is not None:
                    if not written:
                        self._write_shm(req.shm, array, name)
                    tensor.shm, tensor.data = req.shm, None
            outputs.append(tensor)
        self.metrics.record(
            request.model, request.protocol, started - queued_at, compute_done - compute_started
        )
        # Statistics hooks: one model execution of one request (a batcher records the
        # execution once per batch and the success once per request in it).
        times = RequestTimes(queued_at, started, compute_started, compute_done,
                             time.perf_counter())
        self.statistics.record_execution(
            key, 1, compute_started - started, compute_done - compute_started,
            times.output_done - compute_done)
        self.statistics.record_success(key, times)
        return InferResponse(request.model, backend.source.version, outputs, request.id)

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

    def _validated_inputs(self, backend: Backend, request: InferRequest) -> dict[str, np.ndarray]:
        specs = {s.name: s for s in backend.inputs}
        max_batch = backend.source.config.get("max_batch_size") or 0
        if type(max_batch) is not int:
            max_batch = 0
        # A configuration override's narrower input dims (dataplane/model_config.py).
        declared = backend.source.config.get("declared_shapes")
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
            expected = declared.get(tensor.name, spec.shape) if declared else spec.shape
            if max_batch and shape and shape[0] > max_batch:
                raise InvalidInputError(
                    f"input {tensor.name!r}: batch of {shape[0]} exceeds the model's "
                    f"max_batch_size {max_batch}"
                )
            if expected and (
                len(shape) != len(expected)
                or any(s != -1 and s != d for s, d in zip(expected, shape, strict=True))
            ):
                raise InvalidInputError(
                    f"input {tensor.name!r}: shape {list(shape)} does not match the model's "
                    f"{list(expected)} (-1 is any size)"
                )
            data = tensor.data
            if data is None:
                if tensor.shm is None:
                    raise InvalidInputError(f"input {tensor.name!r} has no data")
                data = self._read_shm(tensor)
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
