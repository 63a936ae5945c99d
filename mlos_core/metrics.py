# SPDX-License-Identifier: Apache-2.0
"""Prometheus metrics, rendered in the text exposition format (no client library needed).

Per model: requests, failures by reason, and histograms of queue time (waiting for an
inference thread or in the batch queue) and compute time (inside the backend); for
batched models, model executions and the requests and rows they ran."""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5, 5.0, 10.0)


class _Histogram:
    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(_BUCKETS, value)] += 1
        self.sum += value
        self.count += 1


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.failures: dict[tuple[str, str], int] = defaultdict(int)
        self.queue: dict[str, _Histogram] = defaultdict(_Histogram)
        self.compute: dict[str, _Histogram] = defaultdict(_Histogram)
        #: Dynamic batching, per model: model executions, the requests and rows they ran.
        self.batches: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self.in_flight = 0
        #: Extra renderers (e.g. the LLM token counters); each returns exposition text.
        self.collectors: list[Callable[[], str]] = []

    def record(self, model: str, protocol: str, queue_s: float, compute_s: float) -> None:
        with self._lock:
            self.requests[(model, protocol)] += 1
            self.queue[model].observe(queue_s)
            self.compute[model].observe(compute_s)

    def batch(self, model: str, requests: int, rows: int) -> None:
        with self._lock:
            counts = self.batches[model]
            counts[0] += 1
            counts[1] += requests
            counts[2] += rows

    def failure(self, model: str, protocol: str, reason: str) -> None:
        with self._lock:
            self.requests[(model, protocol)] += 1
            self.failures[(model, reason)] += 1

    def render(self, extra: dict[str, float] | None = None) -> str:
        lines: list[str] = []
        with self._lock:
            lines += [
                "# HELP mlos_inference_requests_total Inference requests, by model and protocol.",
                "# TYPE mlos_inference_requests_total counter",
            ]
            for (model, proto), n in sorted(self.requests.items()):
                lines.append(
                    f'mlos_inference_requests_total{{model="{_escape(model)}",'
                    f'protocol="{proto}"}} {n}'
                )
            lines += [
                "# HELP mlos_inference_failures_total Failed inference requests, by reason.",
                "# TYPE mlos_inference_failures_total counter",
            ]
            for (model, reason), n in sorted(self.failures.items()):
                lines.append(
                    f'mlos_inference_failures_total{{model="{_escape(model)}",'
                    f'reason="{reason}"}} {n}'
                )
            for metric, help_text, table in (
                ("mlos_queue_duration_seconds", "Time waiting for an inference thread.",
                 self.queue),
                ("mlos_compute_duration_seconds", "Time inside the backend.", self.compute),
            ):
                lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} histogram"]
                for model, hist in sorted(table.items()):
                    label = f'model="{_escape(model)}"'
                    cumulative = 0
                    for bound, count in zip(_BUCKETS, hist.counts, strict=False):
                        cumulative += count
                        lines.append(f'{metric}_bucket{{{label},le="{bound}"}} {cumulative}')
                    lines.append(f'{metric}_bucket{{{label},le="+Inf"}} {hist.count}')
                    lines.append(f"{metric}_sum{{{label}}} {hist.sum:.9f}")
                    lines.append(f"{metric}_count{{{label}}} {hist.count}")
            for index, (metric, help_text) in enumerate((
                ("mlos_batch_executions_total", "Model executions of batched models."),
                ("mlos_batch_requests_total", "Requests those executions served."),
                ("mlos_batch_rows_total", "Batch rows (dim 0) those executions ran."),
            )):
                if not self.batches:
                    break
                lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
                for model, counts in sorted(self.batches.items()):
                    lines.append(f'{metric}{{model="{_escape(model)}"}} {counts[index]}')
        for name, value in (extra or {}).items():
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        text = "\n".join(lines) + "\n"
        return text + "".join(collect() for collect in self.collectors)
