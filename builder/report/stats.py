# SPDX-License-Identifier: Apache-2.0
"""Latency percentiles per repetition, and the spread of a figure across repetitions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def summarize_latencies(latencies_s: Sequence[float], wall_s: float, errors: int) -> dict[str, Any]:
    """One repetition's figures: percentiles in milliseconds and requests per second."""
    ok = len(latencies_s)
    out: dict[str, Any] = {"requests": ok + errors, "ok": ok, "errors": errors,
                           "wall_s": round(wall_s, 6)}
    if ok:
        ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        out.update(p50_ms=float(p50), p95_ms=float(p95), p99_ms=float(p99),
                   mean_ms=float(ms.mean()), max_ms=float(ms.max()))
    else:
        out.update(p50_ms=None, p95_ms=None, p99_ms=None, mean_ms=None, max_ms=None)
    out["throughput_rps"] = ok / wall_s if wall_s > 0 else None
    return out


def spread(values: Sequence[float | None]) -> dict[str, float] | None:
    """min / median / max of one figure over repetitions (None entries are failed runs)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {"min": min(vals), "median": float(np.median(vals)), "max": max(vals), "n": len(vals)}


def fmt(value: float) -> str:
    """A figure for people: 3 significant digits, never scientific notation."""
    if value == 0 or abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if abs(value) >= 0.001 else f"{value:.2e}"
