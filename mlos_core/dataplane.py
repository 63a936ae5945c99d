# SPDX-License-Identifier: Apache-2.0
"""The data plane: the one place that knows models, backends, validation and metrics.

REST and gRPC handlers convert a request into the neutral types below and call the same
method here; they hold no inference logic. Backends run on a bounded thread pool so the
event loop never blocks on compute.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .backends.base import Backend, ModelSource, TensorSpec
from .errors import (
    InvalidInputError,
    MLOSError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    RequestTimeoutError,
    ServerBusyError,
)
from .kernel_modes import KernelModes, versions
from .metrics import Metrics
from .plugins import PluginManager
from .protocols.shm import SharedMemoryRegistry
from .registry import ImportedFile, ModelRepository, RepositoryModel
from .runtime_mode import RuntimeMode, detect
from .settings import Settings
from .tensors import DTYPES, datatype_of, element_count, from_bytes, numpy_dtype, to_bytes

log = logging.getLogger(__name__)

SERVER_NAME = "mlos-core"
EXTENSIONS = ["binary_tensor_data", "model_repository", "system_shared_memory"]


@dataclass(slots=True)
class ShmRef:
    region: str
    offset: int
    byte_size: int


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | None = None  # None: read from `shm`
    shm: ShmRef | None = None


@dataclass(slots=True)
class OutputRequest:
    name: str
    binary: bool | None = None
    shm: ShmRef | None = None


@dataclass(slots=True)
class InferRequest:
    model: str
    version: str | None
    inputs: list[InputTensor]
    outputs: list[OutputRequest] | None = None
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    protocol: str = "rest"


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | None  # None: written to `shm`
    binary: bool | None = None
    shm: ShmRef | None = None


@dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    outputs: list[OutputTensor]
    id: str | None = None


@dataclass
class ModelState:
    name: str
    state: str = "UNAVAILABLE"  # READY | UNAVAILABLE | LOADING | UNLOADING
    reason: str = ""
    versions: dict[str, Backend] = field(default_factory=dict)

    @property
    def latest(self) -> Backend | None:
        if not self.versions:
            return None
        return self.versions[max(self.versions, key=int)]


class DataPlane:
    def __init__(
        self,
        settings: Settings,
        plugins: PluginManager | None = None,
        repository: ModelRepository | None = None,
    ) -> None:
        self.settings = settings
        self.plugins = plugins or PluginManager().discover()
        self.repository = repository or ModelRepository(settings.model_repository)
        self.metrics = Metrics()
        self.runtime: RuntimeMode = detect(settings.sysfs_root)
        self.kernel = KernelModes(
            self.runtime, settings.mlos_ml_device, settings.tensor_pool_mb,
            settings.reserved_cpus, settings.kernel_features,
        ).start()
        self.shm = SharedMemoryRegistry(self.kernel)
        self.metrics.collectors.append(self.kernel.render_metrics)
        self._versions = versions()
        self.models: dict[str, ModelState] = {}
        self.draining = False
        self._in_flight = 0
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.threads, thread_name_prefix="mlos-infer",
            initializer=self.kernel.inference_thread_started,
        )
        self._idle = threading.Condition(self._lock)
        # Recent compute time per loaded backend (EWMA, seconds): tiny models run inline.
        self._compute_ewma: dict[int, float] = {}
        self._inline_s = settings.inline_compute_us / 1e6

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Prepare the repository and load what it holds (failures are reported per model,
        never fatal: one corrupt model must not keep the others from being served)."""
        self.repository.ensure()
        for model in self.repository.scan():
            state = self.models.setdefault(model.name, ModelState(model.name))
            if not self.settings.load_models_at_start:
                continue
            try:
                self.load_model(model.name)
            except MLOSError as exc:
                log.warning("model %s not loaded: %s", model.name, exc)
                state.reason = str(exc)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for state in list(self.models.values()):
            for backend in state.versions.values():
                self._unload_backend(backend)
        self.shm.unregister()
        self.kernel.close()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def wait_idle(self, timeout: float) -> bool:
        """Block until no inference is in flight (graceful shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # ---- models ----------------------------------------------------------------------------
    def load_model(self, name: str) -> None:
        """(Re)load a model's versions from the repository. Triton's default policy: the
        latest version; `version_policy: all` in the model config loads every version."""
        repo_model = self.repository.get(name)
        with self._model_lock:
            state = self.models.setdefault(name, ModelState(name))
        backends = self._load_versions(repo_model)
        with self._model_lock:
            old = state.versions
            state.versions = backends
            state.state = "READY"
            state.reason = ""
        for version, backend in old.items():
            if backends.get(version) is not backend:
                self._unload_backend(backend)

    def _unload_backend(self, backend: Backend) -> None:
        self._compute_ewma.pop(id(backend), None)
        backend.unload()
        self.kernel.release_model(id(backend))

    def _load_versions(self, model: RepositoryModel) -> dict[str, Backend]:
        if not model.versions:
            raise ModelLoadError(f"model {model.name!r} has no version directory (e.g. 1/)")
        policy = model.config.get("version_policy", "latest")
        versions = model.versions if policy == "all" else model.versions[-1:]
        loaded: dict[str, Backend] = {}
        try:
            for version in versions:
                path = model.path / version
                cls, file = self.plugins.select(path, model.config)
                config = dict(model.config)
                source = ModelSource(model.name, version, path, config, file, self.settings)
                backend = cls(source)
                # The GPU manager's lease decides the device and memory limit the backend
                # gets (config["gpu_lease"]); no GPU: an empty device, the CPU.
                lease = self.kernel.place_model(id(backend), model.name, model.config)
                if lease:
                    config["gpu_lease"] = lease
                try:
                    # Native threads the load starts (ONNX Runtime's intra-op pool) are
                    # registered with the scheduler for this backend until it unloads.
                    with self.kernel.model_load(id(backend), model.name):
                        backend.load()
                except MLOSError:
                    self.kernel.release_model(id(backend))
                    raise
                except Exception as exc:  # a plugin's own error: still a load failure
                    self.kernel.release_model(id(backend))
                    raise ModelLoadError(f"{model.name} v{version}: {exc}") from exc
                loaded[version] = backend
        except Exception:
            for backend in loaded.values():
                self._unload_backend(backend)
            raise
        return loaded

    def unload_model(self, name: str) -> None:
        with self._model_lock:
            state = self.models.get(name)
            if state is None:
                self.repository.get(name)  # raises ModelNotFoundError when unknown
                return
            old, state.versions = state.versions, {}
            state.state, state.reason = "UNAVAILABLE", "unloaded"
        for backend in old.values():
            self._unload_backend(backend)

    def register_model(
        self,
        name: str,
        files: list[tuple[str, Path | bytes | ImportedFile]],
        version: str | None = None,
        config: dict[str, Any] | None = None,
        load: bool = True,
    ) -> tuple[str, str]:
        name, version = self.repository.add_version(
            name, files, version, config, check=self._load_check if load else None)
        with self._model_lock:
            self.models.setdefault(name, ModelState(name))
        if load:
            try:
                self.load_model(name)
            except MLOSError:
                # Registration of a file no backend can load must not leave a broken model.
                self.repository.delete(name, version)
                if not self.repository.get(name).versions:
                    self.repository.delete(name)
                    self.models.pop(name, None)
                raise
        return name, version

    def _load_check(self, staged: RepositoryModel) -> None:
        """A staged version must load before it is renamed into the repository: a crash
        between the rename and the real load then leaves a model that loads."""
        for backend in self._load_versions(staged).values():
            self._unload_backend(backend)

    def delete_model(self, name: str, version: str | None = None) -> None:
        if version is None:
            self.unload_model(name)
            self.repository.delete(name)
            self.models.pop(name, None)
        else:
            self.repository.delete(name, version)
            self.load_model(name)

    def repository_index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        index = []
        names = {m.name for m in self.repository.scan()} | set(self.models)
        for name in sorted(names):
            state = self.models.get(name) or ModelState(name)
            if ready_only and state.state != "READY":
                continue
            entry: dict[str, Any] = {"name": name, "state": state.state, "reason": state.reason}
            latest = state.latest
            if latest is not None:
                entry["version"] = latest.source.version
            index.append(entry)
        return index

    def backend(self, name: str, version: str | None = None) -> Backend:
        state = self.models.get(name)
        if state is None:
            raise ModelNotFoundError(f"unknown model {name!r}")
        if version:
            backend = state.versions.get(version)
            if backend is None:
                if state.state == "READY":
                    raise ModelNotFoundError(f"model {name!r} has no loaded version {version!r}")
                raise ModelNotReadyError(f"model {name!r} is not loaded ({state.reason})")
        else:
            backend = state.latest
            if backend is None:
                raise ModelNotReadyError(
                    f"model {name!r} is not loaded" + (f" ({state.reason})" if state.reason else "")
                )
        if not backend.ready:
            raise ModelNotReadyError(f"model {name!r} is not ready")
        return backend

    def models_with(self, capability: str) -> list[str]:
        """Names of loaded models whose backend has `capability` (for capability routers,
        e.g. the OpenAI API lists the text-generation models)."""
        names = []
        for name, state in sorted(self.models.items()):
            backend = state.latest
            if backend is not None and capability in getattr(backend, "capabilities", ()):
                names.append(name)
        return names

    def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            return self.backend(name, version).ready and not self.draining
        except ModelNotReadyError:
            return False

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        backend = self.backend(name, version)
        state = self.models[name]

        def specs(items: list[TensorSpec]) -> list[dict[str, Any]]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

        return {
            "name": name,
            "versions": sorted(state.versions, key=int),
            "platform": backend.name,
            "inputs": specs(backend.inputs),
            "outputs": specs(backend.outputs),
        }

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def health(self) -> dict[str, Any]:
        states = [m.state for m in self.models.values()]
        return {
            "status": "draining" if self.draining else "ok",
            "version": __version__,
            **self.runtime.to_dict(),
            "models": {
                "total": len(states),
                "ready": states.count("READY"),
                "unavailable": len(states) - states.count("READY"),
            },
            "backends": self.plugins.formats(),
            **self._versions,
            **self.kernel.health(),
        }

    # ---- inference -------------------------------------------------------------------------
    def _admit(self) -> None:
        with self._lock:
            if self.draining:
                raise ServerBusyError("the server is shutting down; retry on another instance")
            if self._in_flight >= self.settings.max_concurrency:
                raise ServerBusyError(
                    f"{self._in_flight} requests in flight (max_concurrency); retry later"
                )
            self._in_flight += 1

    def _release(self, _future: Any = None) -> None:
        with self._lock:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.notify_all()

    def _inline(self, backend: Backend) -> bool:
        """Whether this model is fast enough that the thread hand-off would cost more than
        the compute itself (measured, never guessed: the first requests use the pool)."""
        ewma = self._compute_ewma.get(id(backend))
        return ewma is not None and ewma < self._inline_s

    def _run_inline(self, backend: Backend, request: InferRequest) -> InferResponse:
        self._admit()
        try:
            return self._run(backend, request, time.perf_counter())
        finally:
            self._release()

    def _submit(
        self, request: InferRequest, backend: Backend
    ) -> concurrent.futures.Future[InferResponse]:
        self._admit()
        try:
            future = self._executor.submit(self._run, backend, request, time.perf_counter())
        except RuntimeError:  # executor shut down
            self._release()
            raise ServerBusyError("the server is shutting down") from None
        future.add_done_callback(self._release)
        return future

    async def infer(self, request: InferRequest) -> InferResponse:
        try:
            backend = self.backend(request.model, request.version)
            if self._inline(backend):
                return self._run_inline(backend, request)
            future = self._submit(request, backend)
            try:
                return await asyncio.wait_for(
                    asyncio.wrap_future(future), self.settings.request_timeout_s
                )
            except asyncio.TimeoutError:
                future.cancel()
                raise RequestTimeoutError(
                    f"inference took longer than {self.settings.request_timeout_s}s"
                ) from None
        except MLOSError as exc:
            self.metrics.failure(request.model, request.protocol, type(exc).__name__)
            raise

    def infer_blocking(self, request: InferRequest) -> InferResponse:
        """For transports that run on their own threads (the gRPC server)."""
        try:
            backend = self.backend(request.model, request.version)
            if self._inline(backend):
                return self._run_inline(backend, request)
            future = self._submit(request, backend)
            try:
                return future.result(self.settings.request_timeout_s)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise RequestTimeoutError(
                    f"inference took longer than {self.settings.request_timeout_s}s"
                ) from None
        except MLOSError as exc:
            self.metrics.failure(request.model, request.protocol, type(exc).__name__)
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
            targets = self.shm.targets(shm_outputs)  # None: POSIX regions, written after
            if targets is not None:
                results = backend.infer_into(arrays, targets)
        written = results is not None
        if results is None and self.kernel.pool is not None:
            results = self._infer_pooled(backend, arrays, names)
        if results is None:
            results = backend.infer(arrays, names)
        compute_done = time.perf_counter()
        key = id(backend)
        self.kernel.computed(key, request.model)  # first run here: adopt its native threads
        previous = self._compute_ewma.get(key)
        # Clipped, so one preempted run on a busy machine does not flip a tiny model to
        # the pool; a model that is really slow still crosses the threshold in a few runs.
        spent = min(compute_done - compute_started, 2 * self._inline_s)
        self._compute_ewma[key] = spent if previous is None else 0.8 * previous + 0.2 * spent
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
        return InferResponse(request.model, backend.source.version, outputs, request.id)

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
