# SPDX-License-Identifier: Apache-2.0
"""Triton's statistics extension: per model version, what its requests and model
executions cost, in the shape `GET /v2/models/{m}/stats` and gRPC `ModelStatistics` answer.

The inference path reports at three points, and nothing else here knows how requests are
scheduled (one request per execution, or a dynamic batcher's several, batching.py):

    record_execution(key, batch_size, input_s, infer_s, output_s)
        once per model execution (`execution_count`, `batch_stats`): batch_size is the
        rows it ran (1 for a model without max_batch_size);
    record_success(key, RequestTimes, inferences)
        once per request answered: its queue, compute input/infer/output and total time
        (every request of one batched execution shares its compute start and end), and
        `inferences` (`inference_count` counts batch elements, as Triton's does);
    record_failure(key, arrived)
        once per request that failed after its model was found (a batch's failure is
        counted once per request, by the transport-facing infer, never by the batcher).

`key` is the serving backend's identity (`id(backend)`): `open(key)` starts its counters
at zero when it starts serving (a reload starts from zero, as Triton's does) and
`forget(key)` drops them when it unloads; a report for a key not open (a request that
finished after its backend unloaded) is dropped, so an id Python reuses never inherits
them. Times are `time.perf_counter()` seconds, the clock the inference path already
reads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

_NS = 1_000_000_000


@dataclass(slots=True)
class RequestTimes:
    """The points one request passed (perf_counter seconds): admitted and queued, its
    inputs taken up by an inference thread, the model started, the model done, the
    outputs ready."""

    queued: float
    input_started: float
    infer_started: float
    infer_done: float
    output_done: float


@dataclass(slots=True)
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        ns = int(seconds * _NS)
        if ns > 0:
            self.ns += ns

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
           "cache_hit", "cache_miss")


@dataclass(slots=True)
class _VersionStats:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    phases: dict[str, _Duration] = field(
        default_factory=lambda: {name: _Duration() for name in _PHASES})
    #: batch size -> (compute_input, compute_infer, compute_output)
    batches: dict[int, tuple[_Duration, _Duration, _Duration]] = field(default_factory=dict)


class Statistics:
    """Counters per serving backend, updated under one lock (a handful of additions per
    request)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[int, _VersionStats] = {}

    def open(self, key: int) -> None:
        with self._lock:
            self._stats[key] = _VersionStats()

    # ---- the hooks the inference path calls ----------------------------------------------
    def record_execution(
        self, key: int, batch_size: int, input_s: float, infer_s: float, output_s: float
    ) -> None:
        with self._lock:
            stats = self._stats.get(key)
            if stats is not None:
                _add_execution(stats, batch_size, input_s, infer_s, output_s)

    def record_success(self, key: int, times: RequestTimes, inferences: int = 1) -> None:
        now_ms = int(time.time() * 1000)
        with self._lock:
            stats = self._stats.get(key)
            if stats is not None:
                _add_success(stats, times, inferences, now_ms)

    def record_alone(self, key: int, times: RequestTimes, rows: int = 1) -> None:
        """record_execution and record_success for a request that ran alone (one
        execution of its own rows), under one lock: the per-request cost of the inline
        path is mostly bookkeeping like this."""
        now_ms = int(time.time() * 1000)
        with self._lock:
            stats = self._stats.get(key)
            if stats is None:
                return
            _add_execution(stats, rows, times.infer_started - times.input_started,
                           times.infer_done - times.infer_started,
                           times.output_done - times.infer_done)
            _add_success(stats, times, rows, now_ms)

    def record_failure(self, key: int, arrived: float) -> None:
        now_ms = int(time.time() * 1000)
        with self._lock:
            stats = self._stats.get(key)
            if stats is None:
                return
            stats.last_inference_ms = now_ms
            stats.phases["fail"].add(time.perf_counter() - arrived)

    def forget(self, key: int) -> None:
        with self._lock:
            self._stats.pop(key, None)

    # ---- reading -------------------------------------------------------------------------
    def snapshot(self, key: int, name: str, version: str) -> dict[str, Any]:
        """One model version in Triton's JSON shape (the gRPC message has the same fields)."""
        with self._lock:
            stats = self._stats.get(key) or _VersionStats()
            return {
                "name": name,
                "version": version,
                "last_inference": stats.last_inference_ms,
                "inference_count": stats.inference_count,
                "execution_count": stats.execution_count,
                "inference_stats": {k: d.to_dict() for k, d in stats.phases.items()},
                "batch_stats": [
                    {"batch_size": size,
                     "compute_input": batch[0].to_dict(),
                     "compute_infer": batch[1].to_dict(),
                     "compute_output": batch[2].to_dict()}
                    for size, batch in sorted(stats.batches.items())
                ],
                "memory_usage": [],
            }


# ---- under the lock ------------------------------------------------------------------------
def _add_execution(stats: _VersionStats, batch_size: int, input_s: float, infer_s: float,
                   output_s: float) -> None:
    stats.execution_count += 1
    batch = stats.batches.get(batch_size)
    if batch is None:
        batch = stats.batches[batch_size] = (_Duration(), _Duration(), _Duration())
    for duration, seconds in zip(batch, (input_s, infer_s, output_s), strict=True):
        duration.add(seconds)


def _add_success(stats: _VersionStats, times: RequestTimes, inferences: int,
                 now_ms: int) -> None:
    stats.inference_count += inferences
    stats.last_inference_ms = now_ms
    phases = stats.phases
    phases["success"].add(times.output_done - times.queued)
    phases["queue"].add(times.input_started - times.queued)
    phases["compute_input"].add(times.infer_started - times.input_started)
    phases["compute_infer"].add(times.infer_done - times.infer_started)
    phases["compute_output"].add(times.output_done - times.infer_done)
