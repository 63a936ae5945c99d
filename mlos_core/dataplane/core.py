# SPDX-License-Identifier: Apache-2.0
"""The DataPlane: models, tensor inference and text generation over one admission gate,
one set of inference threads, one metrics registry and the kernel integration."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any

from .. import __version__
from ..backends.base import Backend
from ..errors import MLOSError
from ..kernel.modes import KernelModes, versions
from ..kernel.runtime_mode import RuntimeMode, detect
from ..metrics import Metrics
from ..plugins import PluginManager
from ..registry import ModelRepository
from ..settings import Settings
from .admission import Admission
from .cuda_shm import CudaSharedMemory
from .decoding import Decoder
from .generation import TextGeneration
from .inference import TensorInference
from .llm_metrics import LLMMetrics
from .model_config import ModelIO
from .models import ModelLifecycle, ModelState
from .server_settings import LogSettings, trace_settings, update_trace_settings
from .statistics import Statistics
from .system_shm import SharedMemoryRegistry

log = logging.getLogger(__name__)

SERVER_NAME = "mlos-core"
#: What the server metadata says is implemented; each has its routes in REST and gRPC
#: (tests/unit/test_core_triton_examples.py checks). Not listed: cuda_shared_memory (its
#: routes answer, but registration is refused without a CUDA device) and trace (always
#: off); docs/core.md says why.
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration", "statistics",
              "system_shared_memory", "logging"]


class DataPlane(ModelLifecycle, TensorInference, TextGeneration):
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
        self.llm_metrics = LLMMetrics()
        self.metrics.collectors.append(self.llm_metrics.render)
        self.statistics = Statistics()
        self.runtime: RuntimeMode = detect(settings.sysfs_root)
        self.kernel = KernelModes(
            self.runtime, settings.mlos_ml_device, settings.tensor_pool_mb,
            settings.reserved_cpus, settings.kernel_features,
        ).start()
        self.shm = SharedMemoryRegistry(self.kernel)
        self.cuda_shm = CudaSharedMemory()
        self.log_settings = LogSettings()
        self.metrics.collectors.append(self.kernel.render_metrics)
        self._versions = versions()
        self.models: dict[str, ModelState] = {}
        self.model_ids: dict[str, str] = {}
        self.admission = Admission(settings.max_concurrency)
        self.decoder = Decoder(settings)
        self._model_lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.threads, thread_name_prefix="mlos-infer",
            initializer=self.kernel.inference_thread_started,
        )
        # Recent compute time per loaded backend (EWMA, seconds) and the largest request
        # (input bytes) measured under it: tiny models run inline for requests that size.
        self._compute_ewma: dict[int, tuple[float, int]] = {}
        self._inline_s = settings.inline_compute_us / 1e6
        self._io = {}
        self._batchers = {}

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Prepare the repository and load what it holds (failures are reported per model,
        never fatal: one corrupt model must not keep the others from being served)."""
        self.repository.ensure()
        for model in self.repository.scan():
            state = self.models.setdefault(model.name, ModelState(model.name))
            self.remember_model_id(model)
            if not self.settings.load_models_at_start:
                continue
            try:
                self.load_model(model.name)
            except MLOSError as exc:
                log.warning("model %s not loaded: %s", model.name, exc)
                state.reason = str(exc)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.decoder.close()
        for state in list(self.models.values()):
            for backend in state.versions.values():
                self._unload_backend(backend)
        self.shm.unregister()
        self.kernel.close()

    # ModelLifecycle's stubs come first in the MRO; the per-backend serving state (served
    # tensors, batchers, inline measurements) is TensorInference's.
    def _forget_backend(self, backend: Backend) -> None:
        TensorInference._forget_backend(self, backend)

    def _serve_as(self, backend: Backend, io: ModelIO) -> None:
        TensorInference._serve_as(self, backend, io)

    def served_io(self, backend: Backend) -> ModelIO:
        return TensorInference.served_io(self, backend)

    # ---- admission -------------------------------------------------------------------------
    @property
    def draining(self) -> bool:  # type: ignore[override]
        return self.admission.draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self.admission.draining = value

    @property
    def in_flight(self) -> int:
        """Requests of every kind admitted and not finished (nor timed out)."""
        return self.admission.in_flight

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request is in flight (graceful shutdown)."""
        return self.admission.wait_idle(timeout)

    # ---- server ----------------------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model_statistics(
        self, name: str | None = None, version: str | None = None
    ) -> list[dict[str, Any]]:
        """Triton's statistics extension: every loaded version of every model, of one
        model, or one version (unknown or unloaded ones are the lookup's errors)."""
        if name:
            self.backend(name, version)  # raises when unknown or not loaded
            names = [name]
        else:
            names = sorted(self.models)
        stats = []
        for model in names:
            versions = self.models[model].versions
            for ver in sorted(versions, key=int):
                if version and ver != version:
                    continue
                stats.append(self.statistics.snapshot(id(versions[ver]), model, ver))
        return stats

    def trace_settings(
        self, settings: dict[str, Any] | None = None, model: str | None = None
    ) -> dict[str, Any]:
        """Triton's trace extension (global or per model): tracing is off and stays off
        (server_settings.py); `settings` is an update to check."""
        if model:
            self.backend(model)  # an unknown or unloaded model is the lookup's error
        return trace_settings() if settings is None else update_trace_settings(settings)

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
