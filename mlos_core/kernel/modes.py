# SPDX-License-Identifier: Apache-2.0
"""What MLOS Core uses of the mlos_ml kernel module, and how it falls back without it.

At start the service opens /dev/mlos-ml (when the module's parameters say it is loaded)
and takes each feature the module offers and the configuration allows:

- memory manager: a pinned pool (pools.TensorPool); binary REST request bodies are read
  into its buffers (protocols/bodies.py) and response tensors are written by ONNX Runtime
  (IO binding) straight into them, reused from request to request; Triton shared-memory
  regions may be mlos-ml buffers (see dataplane/system_shm.py). Without it, request bodies
  go to a host pool of the same shape (pools.HostPool), so they are pooled in every mode;
- scheduler: the inference threads, and the native threads ONNX Runtime and llama.cpp
  start for them, are registered latency-critical (SCHED_FIFO on the reserved CPUs); the
  HTTP, gRPC and helper threads throughput (see thread_registry.py, native_threads.py);
- GPU manager: models whose config asks for a GPU get a lease that picks the device and
  the memory limit given to the backend.

Anything missing (no device node, permission denied, a feature switched off by its module
parameter or by `kernel_features`, an ioctl failing) is recorded with its reason, logged
once, shown on /health and never fails a request: the data plane falls back per request.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import threading
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from . import mlos_ml, native_threads
from .pools import REQUEST, BufferPool, HostPool
from .pools import TensorPool as TensorPool
from .runtime_mode import USERSPACE, RuntimeMode
from .thread_registry import LATENCY, THROUGHPUT, ThreadRegistry

log = logging.getLogger(__name__)

MEMORY = "memory_manager"
SCHEDULER = "scheduler"
GPU = "gpu_manager"
FEATURES = (MEMORY, SCHEDULER, GPU)
#: Names accepted in the `kernel_features` setting.
SETTING_NAMES = {"memory": MEMORY, "scheduler": SCHEDULER, "gpu": GPU}
_PARAM = {MEMORY: "enable_tmm", SCHEDULER: "enable_scheduler", GPU: "enable_gpu_manager"}


def parse_cpus(text: str) -> list[int]:
    """A kernel-style CPU list ("1", "2-3", "0,2-3") as CPU numbers."""
    cpus: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def versions() -> dict[str, str | None]:
    """Versions /health reports (the validation report reads them)."""

    def dist(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"kernel": platform.release(), "onnxruntime": dist("onnxruntime"),
            "llama_cpp": dist("llama_cpp_python")}


@dataclass
class Feature:
    in_use: bool = False
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"in_use": self.in_use, "reason": self.reason, **self.detail}


@dataclass
class GpuPlacement:
    """What a model that asked for a GPU was given (or why not)."""

    model: str
    requested_bytes: int
    lease: mlos_ml.GpuLease | None = None
    reason: str | None = None

    def config(self) -> dict[str, Any]:
        if self.lease is None:
            return {"device": None, "memory_limit": 0, "reason": self.reason}
        return {"device": self.lease.gpu, "memory_limit": self.lease.size}


def wants_gpu(config: dict[str, Any]) -> int:
    """Bytes of GPU memory a model config asks for (0: none). Accepted: `gpu: true`,
    `gpu_memory_mb: N`, or Triton's `instance_group: [{kind: KIND_GPU}]`."""
    mb = config.get("gpu_memory_mb")
    if mb:
        return int(mb) << 20
    groups = config.get("instance_group") or []
    asks = bool(config.get("gpu")) or any(
        isinstance(g, dict) and str(g.get("kind", "")).upper() == "KIND_GPU" for g in groups)
    return (1 << 30) if asks else 0


class KernelModes:
    """The service's use of mlos_ml: one descriptor, the features taken, their figures."""

    def __init__(self, runtime: RuntimeMode, device_path: str = mlos_ml.DEVICE,
                 pool_mb: int = 128, reserved_cpus: str = "",
                 wanted: str = "memory,scheduler,gpu") -> None:
        self.runtime = runtime
        self.device_path = device_path
        self.pool_mb = pool_mb
        self.reserved_cpus = parse_cpus(reserved_cpus) if reserved_cpus else []
        self.wanted = {SETTING_NAMES[n.strip()] for n in wanted.split(",")
                       if n.strip() in SETTING_NAMES}
        self.features = {name: Feature() for name in FEATURES}
        self.device: mlos_ml.Device | None = None
        self.pool: TensorPool | None = None
        # Request bodies are pooled in every mode: in the mlos-ml pool when the memory
        # manager is in use, else here (nothing is allocated until a request needs it).
        self.host_pool: HostPool | None = HostPool(pool_mb << 20) if pool_mb > 0 else None
        self._lock = threading.Lock()
        self.threads: ThreadRegistry | None = None  # the scheduler in use
        self.gpus: list[dict[str, Any]] = []
        self.placements: dict[int, GpuPlacement] = {}
        self.fallbacks: dict[str, int] = {}

    # ---- start / stop ------------------------------------------------------------------
    def start(self) -> KernelModes:
        params = self.runtime.parameters
        # A module loaded with enable_tmm=0 reports userspace but may still offer the
        # scheduler: negotiate with the device whenever the module is loaded.
        if params is None:
            self._all_unavailable("the mlos_ml module is not loaded (userspace mode)")
            return self
        try:
            self.device = mlos_ml.Device.open(self.device_path)
        except mlos_ml.MlosMlError as exc:
            why = (f"{self.device_path} not found although the module is loaded"
                   if isinstance(exc, mlos_ml.DeviceNotFoundError) else str(exc))
            self._all_unavailable(why)
            return self
        except OSError as exc:
            self._all_unavailable(f"cannot open {self.device_path}: {exc}")
            return self
        offered = {MEMORY: self.device.has_memory, SCHEDULER: self.device.has_scheduler,
                   GPU: self.device.has_gpu_manager}
        for name in FEATURES:
            if not offered[name]:
                self._unavailable(name, f"disabled by the module parameter {_PARAM[name]}")
            elif name not in self.wanted:
                self._unavailable(name, "not enabled in the kernel_features setting")
        if offered[MEMORY] and MEMORY in self.wanted:
            self._start_memory()
        if offered[SCHEDULER] and SCHEDULER in self.wanted:
            self.features[SCHEDULER] = Feature(True, None, {
                "reserved_cpus": self.reserved_cpus or params.get("reserved_cpus") or None})
            self.threads = ThreadRegistry(self.device, self.reserved_cpus)
        if offered[GPU] and GPU in self.wanted:
            self._start_gpu()
        in_use = [n for n, f in self.features.items() if f.in_use]
        log.info("mlos_ml: runtime mode %s, features in use: %s", self.runtime.mode,
                 ", ".join(in_use) or "none")
        return self

    def _all_unavailable(self, reason: str) -> None:
        for name in FEATURES:
            self.features[name] = Feature(False, reason)
        if self.runtime.mode != USERSPACE:
            log.warning("mlos_ml features unavailable: %s; serving in userspace mode", reason)

    def _unavailable(self, name: str, reason: str) -> None:
        self.features[name] = Feature(False, reason)
        log.warning("mlos_ml %s unavailable: %s", name, reason)

    def _start_memory(self) -> None:
        assert self.device is not None
        if self.pool_mb <= 0:
            self._unavailable(MEMORY, "tensor_pool_mb is 0")
            return
        try:
            self.pool = TensorPool(self.device, self.pool_mb << 20)
        except mlos_ml.MlosMlError as exc:
            self._unavailable(MEMORY, f"cannot create a {self.pool_mb} MiB pool: {exc}")
            return
        self.features[MEMORY] = Feature(True, None, {"pool_bytes": self.pool.size})

    def _start_gpu(self) -> None:
        assert self.device is not None
        try:
            self.gpus = self.device.gpus()
        except mlos_ml.MlosMlError as exc:
            self._unavailable(GPU, f"cannot list GPUs: {exc}")
            return
        detail: dict[str, Any] = {"gpus": len(self.gpus)}
        if not self.gpus:
            detail["note"] = "no GPU present: models that ask for one run on the CPU"
        self.features[GPU] = Feature(True, None, detail)

    @property
    def request_pool(self) -> BufferPool | None:
        """Where request bodies are read to: the pinned pool, else the host pool."""
        return self.pool if self.pool is not None else self.host_pool

    def close(self) -> None:
        if self.host_pool is not None:
            self.host_pool.close()
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.device is not None:
            self.threads = None
            self.device.close()  # restores every registered thread, ends every lease
            self.device = None

    # ---- scheduler ---------------------------------------------------------------------
    # Thread names given here (prefix-tid) let the native threads a thread starts be told
    # apart later (see native_threads); without the scheduler nothing is named.
    def register_thread(self, latency: bool, prefix: str | None = None) -> None:
        """Register the calling thread (latency-critical or throughput). Never raises."""
        if self.threads is not None:
            self.threads.register_current(LATENCY if latency else THROUGHPUT, prefix)

    def inference_thread_started(self) -> None:
        """ThreadPoolExecutor initializer of the data plane's inference threads."""
        self.register_thread(latency=True, prefix="inf")

    def service_thread_started(self, prefix: str = "aux") -> None:
        """Initializer of the threads that serve requests or housekeeping (the gRPC
        server's workers, the asyncio helper threads that load models): throughput."""
        self.register_thread(latency=False, prefix=prefix)

    @contextlib.contextmanager
    def service_threads(self, prefix: str) -> Iterator[None]:
        """Around starting a server whose library runs threads of its own (grpc core's
        pollers and timers under grpc.aio, whose calls run on the registered event
        loop): the native threads started inside are registered throughput, named
        `prefix`."""
        if self.threads is None:
            yield
            return
        with native_threads.spawn_scope(f"mlos-{prefix}") as started:
            yield
        if started:
            self.threads.adopt(started, THROUGHPUT, None, owner=prefix, name=f"mlos-{prefix}")

    @contextlib.contextmanager
    def model_load(self, key: Hashable, model: str) -> Iterator[None]:
        """Around a backend's load(): the native threads it starts and keeps (ONNX
        Runtime's intra-op pool) are registered latency-critical for this model, named
        after it, and dropped by release_model(key)."""
        if self.threads is None:
            yield
            return
        with native_threads.spawn_scope() as started:
            yield
        if started:
            n = self.threads.adopt(started, LATENCY, model, owner=key, name=model)
            log.info("mlos_ml: %d native thread(s) of model %s registered latency-critical",
                     n, model)

    def computed(self, key: Hashable, model: str) -> None:
        """Called by a thread after running a model: the first time per thread and model,
        the native threads the run started (llama.cpp's OpenMP team) join its class."""
        if self.threads is not None:
            self.threads.adopt_started(key, model)

    @contextlib.contextmanager
    def compute_thread(self, model: str, prefix: str = "llm") -> Iterator[Callable[[], int]]:
        """A thread started for one piece of compute (an LLM generation): registered
        latency-critical for the block, with the native threads it starts (call the
        yielded function after the first compute step); all dropped at the end."""
        registry = self.threads
        if registry is None:
            yield lambda: 0
            return
        registry.register_current(LATENCY, prefix)
        try:
            yield lambda: registry.adopt_started(model, model)
        finally:
            registry.release_owner(threading.get_native_id())

    # ---- GPU ---------------------------------------------------------------------------
    def place_model(self, key: int, model: str, config: dict[str, Any]) -> dict[str, Any]:
        """The GPU a model gets (a `gpu_lease` dict for its backend), or {} when the model
        does not ask for one. Never raises: no GPU means the CPU, reported on /health."""
        size = wants_gpu(config)
        if not size:
            return {}
        placement = GpuPlacement(model, size)
        if self.device is None or not self.features[GPU].in_use:
            placement.reason = self.features[GPU].reason or "GPU manager not in use"
        else:
            try:
                placement.lease = self.device.lease_gpu(size)
            except mlos_ml.NoDeviceError:
                placement.reason = "no GPU present"
            except mlos_ml.MlosMlError as exc:
                placement.reason = str(exc)
        if placement.reason:
            log.info("model %s asked for a GPU: none leased (%s); it runs on the CPU", model,
                     placement.reason)
        with self._lock:
            self.placements[key] = placement
        return placement.config()

    def release_model(self, key: int) -> None:
        if self.threads is not None:
            self.threads.release_owner(key)
        with self._lock:
            placement = self.placements.pop(key, None)
        if placement is None or placement.lease is None or self.device is None:
            return
        with contextlib.suppress(mlos_ml.MlosMlError):
            self.device.release_gpu(placement.lease)

    # ---- reporting ---------------------------------------------------------------------
    def fallback(self, what: str) -> None:
        with self._lock:
            self.fallbacks[what] = self.fallbacks.get(what, 0) + 1

    def effective_mode(self) -> str:
        f = self.features
        return mlos_ml.mode_for(f[MEMORY].in_use, f[SCHEDULER].in_use, f[GPU].in_use)

    def health(self) -> dict[str, Any]:
        features = {name: f.to_dict() for name, f in self.features.items()}
        if self.pool is not None:
            features[MEMORY].update(self.pool.stats())
        if self.threads is not None:
            features[SCHEDULER].update(self.threads.health())
        if self.features[GPU].in_use or self.placements:
            with self._lock:
                placements = list(self.placements.values())
            features[GPU]["leases"] = [
                {"model": p.model, "requested_bytes": p.requested_bytes, **p.config()}
                for p in placements]
        features[MEMORY]["request_buffers"] = self.request_buffers()
        return {"features": features,
                "features_in_use": [n for n, f in self.features.items() if f.in_use],
                "effective_mode": self.effective_mode(),
                "kernel_fallbacks": dict(self.fallbacks)}

    def request_buffers(self) -> dict[str, Any]:
        """Request-body pooling: where the bodies go and how often a buffer was reused."""
        pool = self.request_pool
        if pool is None:
            return {"pooled": False, "reason": "tensor_pool_mb is 0"}
        with self._lock:
            fallbacks = self.fallbacks.get("request_body", 0)
        stats = pool.stats()
        return {"pooled": True, "pool": pool.kind, **pool.purpose_stats(REQUEST),
                "fallbacks": fallbacks, "held_bytes": stats["in_use_bytes"] + stats["idle_bytes"]}

    @staticmethod
    def _sched_metrics(registry: ThreadRegistry) -> list[str]:
        per_class, per_model = registry.figures()
        lines: list[str] = []
        for metric, key, kind, help_text in (
            ("mlos_sched_threads", "threads", "gauge", "Threads registered, by class."),
            ("mlos_sched_preemptions_total", "preemptions", "counter",
             "Involuntary context switches of registered threads."),
            ("mlos_sched_voluntary_switches_total", "voluntary", "counter",
             "Voluntary context switches of registered threads."),
        ):
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
            for klass in (LATENCY, THROUGHPUT):
                row = per_class.get(klass, {})
                lines.append(f'{metric}{{class="{klass}"}} {row.get(key, 0)}')
        lines += ["# HELP mlos_sched_model_threads Native threads (ONNX Runtime's intra-op "
                  "pool, llama.cpp's OpenMP team) registered for a model, by class.",
                  "# TYPE mlos_sched_model_threads gauge"]
        for (model, klass), n in sorted(per_model.items()):
            lines.append(f'mlos_sched_model_threads{{model="{model}",class="{klass}"}} {n}')
        lines += ["# HELP mlos_sched_threads_ended_total Registrations dropped because "
                  "their thread exited.", "# TYPE mlos_sched_threads_ended_total counter",
                  f"mlos_sched_threads_ended_total {registry.ended}",
                  "# TYPE mlos_sched_register_failures_total counter",
                  f"mlos_sched_register_failures_total {registry.failures}"]
        return lines

    def render_metrics(self) -> str:
        lines: list[str] = [
            "# HELP mlos_kernel_feature_in_use Whether an mlos_ml feature is in use (1) or not.",
            "# TYPE mlos_kernel_feature_in_use gauge"]
        for name, f in self.features.items():
            lines.append(f'mlos_kernel_feature_in_use{{feature="{name}"}} {int(f.in_use)}')
        lines += ["# HELP mlos_kernel_fallbacks_total Requests that fell back from a kernel "
                  "feature to the userspace path.", "# TYPE mlos_kernel_fallbacks_total counter"]
        for what, n in sorted(self.fallbacks.items()):
            lines.append(f'mlos_kernel_fallbacks_total{{what="{what}"}} {n}')
        if self.pool is not None:
            stats = self.pool.stats()
            for key, kind, help_text in (
                ("acquired", "counter", "Tensor buffers handed out from the mlos-ml pool."),
                ("reused", "counter", "Tensor buffers reused without a new allocation."),
                ("allocated", "counter", "Buffers allocated from the kernel pool."),
                ("failures", "counter", "Pool allocations that failed (request fell back)."),
                ("bytes", "counter", "Tensor bytes that went through pool buffers."),
                ("in_use_bytes", "gauge", "Bytes of pool buffers held by requests now."),
                ("idle_bytes", "gauge", "Bytes of pool buffers waiting for reuse."),
                ("pool_size", "gauge", "Bytes pinned by the pool."),
                ("pool_free", "gauge", "Bytes of the pool in no buffer."),
                ("pool_peak_used", "gauge", "Most pool bytes in buffers at once."),
                ("pool_buffers", "gauge", "Live buffers of the pool."),
            ):
                if key not in stats:
                    continue
                name = f"mlos_pool_{key}" + ("_total" if kind == "counter" else "")
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
                          f"{name} {stats[key]}"]
        lines += self._request_buffer_metrics()
        if self.threads is not None:
            lines += self._sched_metrics(self.threads)
        if self.features[GPU].in_use:
            with self._lock:
                placements = list(self.placements.values())
            leased = [p for p in placements if p.lease is not None]
            lines += ["# HELP mlos_gpu_devices GPUs the module discovered.",
                      "# TYPE mlos_gpu_devices gauge", f"mlos_gpu_devices {len(self.gpus)}",
                      "# HELP mlos_gpu_leases Models holding a GPU lease.",
                      "# TYPE mlos_gpu_leases gauge", f"mlos_gpu_leases {len(leased)}",
                      "# HELP mlos_gpu_leased_bytes GPU memory leased to models.",
                      "# TYPE mlos_gpu_leased_bytes gauge",
                      f"mlos_gpu_leased_bytes {sum(p.lease.size for p in leased if p.lease)}",
                      "# HELP mlos_gpu_lease_denied Models that asked for a GPU and got none.",
                      "# TYPE mlos_gpu_lease_denied gauge",
                      f"mlos_gpu_lease_denied {len(placements) - len(leased)}"]
        if self.device is not None:
            try:
                module = self.device.stats()
            except mlos_ml.MlosMlError:
                module = {}
            for key in ("pools", "buffers", "pinned_bytes", "qos_active", "gpus", "leases",
                        "leased_bytes"):
                if key in module:
                    lines += [f"# TYPE mlos_module_{key} gauge",
                              f"mlos_module_{key} {module[key]}"]
            threads = module.get("sched_threads") or {}
            if threads:
                lines.append("# TYPE mlos_module_sched_threads gauge")
                for klass, n in sorted(threads.items()):
                    lines.append(f'mlos_module_sched_threads{{class="{klass}"}} {n}')
        return "\n".join(lines) + "\n"

    def _request_buffer_metrics(self) -> list[str]:
        figures = self.request_buffers()
        if not figures["pooled"]:
            return []
        label = f'{{pool="{figures["pool"]}"}}'
        lines: list[str] = []
        for key, kind, help_text in (
            ("acquired", "counter", "Request bodies read into a pool buffer."),
            ("reused", "counter", "Request buffers reused without a new allocation."),
            ("allocated", "counter", "Request buffers newly allocated in the pool."),
            ("failures", "counter", "Request buffers the pool could not give."),
            ("fallbacks", "counter", "Request bodies read into a per-request allocation."),
            ("bytes", "counter", "Request body bytes read into pool buffers."),
            ("held_bytes", "gauge", "Bytes the request pool holds (in use and idle)."),
        ):
            name = f"mlos_request_buffers_{key}" + ("_total" if kind == "counter" else "")
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}",
                      f"{name}{label} {figures[key]}"]
        return lines
