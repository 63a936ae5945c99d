# SPDX-License-Identifier: Apache-2.0
"""The benchmark suite: what runs against the service, in which order, into one results dict."""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mlos_build.report import heavy, llm, load, sched_probe, tensors
from mlos_build.report.contention import (
    Hogs,
    client_priority,
    measure_memory_bandwidth,
    set_client_rt_priority,
)
from mlos_build.report.modes import mode_card, versions_from_health
from mlos_build.report.service import ServiceError, Target, llm_models, onnx_models

SCHEMA = "mlos-validation-report/1"


@dataclass
class SuiteSettings:
    """What to measure and how often; recorded in the results so a run can be repeated."""

    repetitions: int = 5
    requests: int = 200
    warmup: int = 20
    concurrency: list[int] = field(default_factory=lambda: [1, 8])
    protocols: list[str] = field(default_factory=lambda: list(load.PROTOCOLS))
    models: list[str] | None = None
    contention: bool = True
    hogs: int = os.cpu_count() or 2
    mem_hogs: int = 1
    mem_hog_mib: float = 128.0
    hogs_where: str = "local"
    hog_command: str | None = None
    heavy_model: bool = True
    tensor_model: str | None = None
    tensor_sizes_mib: list[float] = field(default_factory=lambda: [1.0, 4.0, 16.0])
    tensor_requests: int = 10
    json_requests: int = 2
    json_max_mib: float = 16.0
    llm: bool = True
    llm_requests: int = 3
    llm_max_tokens: int = 16
    client_rt_priority: int = 0  # >0: the load generator at SCHED_FIFO (contention.py)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def client_host() -> dict[str, Any]:
    """The machine driving the load (not necessarily the service's machine)."""
    return {"hostname": socket.gethostname(), "cpus": os.cpu_count(),
            "kernel": platform.release(), "python": platform.python_version(),
            **client_priority(),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def run_suite(target: Target, settings: SuiteSettings, label: str | None = None,
              progress: Callable[[str], None] | None = None,
              wait_s: float = 60.0) -> dict[str, Any]:
    """Run everything; every failure is recorded in the results rather than raised."""
    say = progress or (lambda msg: print(f"[report] {msg}", file=sys.stderr, flush=True))
    started = _now()
    set_client_rt_priority(settings.client_rt_priority)  # before any client thread starts
    health = target.wait_healthy(wait_s)
    try:
        server_meta = target.get("/v2") or {}
    except ServiceError as exc:
        server_meta = {"error": str(exc)}
    runtime_mode = health.get("runtime_mode")
    say(f"service {target.rest_url}: runtime_mode={runtime_mode!r} ({mode_card(runtime_mode)})")
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "label": label or runtime_mode or "run",
        "started_at": started,
        "target": {"rest_url": target.rest_url, "grpc_url": target.grpc_url},
        "client_host": client_host(),
        "health": health,
        "server_metadata": server_meta,
        "runtime_mode": runtime_mode,
        "mode_card": mode_card(runtime_mode),
        "versions": versions_from_health(health, server_meta),
        "settings": asdict(settings),
        "contention": _describe_contention(settings, say),
        "heavy_model": None,
        "models": [],
        "benchmarks": [],
        "tensor_series": None,
        "llm": None,
        "notes": [],
        "sched_probe": _sched_probe_info(target),
    }
    served = onnx_models(target)
    if settings.heavy_model and (not settings.models or heavy.NAME in settings.models):
        info = results["heavy_model"] = heavy.register(target, [m["name"] for m in served])
        if "error" in info:
            results["notes"].append(f"heavy-compute model not measured: {info['error']}")
        else:
            say(f"heavy-compute model {heavy.NAME}: {info['flops'] / 1e6:.0f} MFLOP a request")
            served = onnx_models(target)
    try:
        models = [m for m in served if not settings.models or m["name"] in settings.models]
        results["models"] = models
        if not models:
            results["notes"].append(
                "the service listed no ready ONNX model in /v2/repository/index")
        for model in models:
            _bench_model(target, settings, model, results, say)
        _bench_tensors(target, settings, served, results, say)
        if settings.llm:
            ids = llm_models(target)
            if ids:
                say(f"LLM: {ids[0]} via /v1/completions")
                results["llm"] = llm.measure(target, ids[0], settings, _hogs_factory(settings))
    finally:
        if results["heavy_model"]:
            heavy.unregister(target, results["heavy_model"])
    results["finished_at"] = _now()
    results["health_after"] = _health_or_error(target)
    return results


def _sched_probe_info(target: Target) -> dict[str, Any]:
    """Whether the heavy model's repetitions are probed (sched_probe): only where the
    service runs on this machine, as in the validation guest."""
    url = urllib.parse.urlsplit(target.rest_url)
    pid = (sched_probe.listening_pid(url.port or 80)
           if url.hostname in ("127.0.0.1", "::1", "localhost") else None)
    if pid is None:
        return {"pid": None, "unavailable": f"no process on this machine listens on {url.netloc}"}
    return {"pid": pid, **sched_probe.rt_throttling()}


def _health_or_error(target: Target) -> dict[str, Any]:
    try:
        return target.get("/health")  # type: ignore[no-any-return]
    except ServiceError as exc:
        return {"error": str(exc)}


def _hogs(settings: SuiteSettings) -> Hogs:
    return Hogs(settings.hogs, settings.hogs_where, settings.hog_command,
                mem_hogs=settings.mem_hogs, mem_mib=settings.mem_hog_mib)


def _hogs_factory(settings: SuiteSettings) -> Callable[[], Hogs] | None:
    if not settings.contention:
        return None
    return lambda: _hogs(settings)


def _describe_contention(settings: SuiteSettings,
                         say: Callable[[str], None]) -> dict[str, Any] | None:
    """What the contended repetitions run beside the service, with the memory hog's
    bandwidth measured here once, on a quiet machine."""
    if not settings.contention:
        return None
    hogs = _hogs(settings)
    out = hogs.describe()
    if hogs.mem_hogs:
        try:
            out["memory_hog_gib_s"] = measure_memory_bandwidth(hogs.mem_mib)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            out["memory_hog_error"] = str(exc)[:300]
    say(f"contention: {out['hogs']} CPU hogs, {out['memory_hogs']} memory hogs "
        f"({out.get('memory_hog_gib_s', '?')} GiB/s each) at nice {out['nice']}")
    return out


def _bench_model(target: Target, settings: SuiteSettings, model: dict[str, Any],
                 results: dict[str, Any], say: Callable[[str], None]) -> None:
    name, version = model["name"], model.get("version", "")
    try:
        inputs = load.sample_inputs(model["inputs"])
    except load.LoadError as exc:
        results["notes"].append(f"model {name}: skipped: {exc}")
        return
    outputs = [str(o["name"]) for o in model["outputs"]]
    hogs = _hogs_factory(settings)
    # Where the service's threads ran is recorded for the heavy model, where compute
    # dominates and the scheduler should show (the probe reads /proc 10 times a second).
    probe_pid = results["sched_probe"]["pid"] if name == heavy.NAME else None

    def repetition(conc: int) -> dict[str, Any]:
        into: dict[str, Any] = {}
        with sched_probe.probed(probe_pid, into):
            rep = load.run_repetition(work, conc, settings.requests)
        return {**rep, **into}

    for protocol in settings.protocols:
        work = load.Workload(target, protocol, name, version, inputs, outputs)
        try:
            error = load.warm_up(work, settings.warmup)
        except load.LoadError as exc:
            error = str(exc)
        if error:
            results["notes"].append(f"model {name} over {protocol}: not measured: {error}")
            say(f"{name}/{protocol}: cannot call it: {error}")
            continue
        for conc in settings.concurrency:
            plain: list[dict[str, Any]] = []
            loaded: list[dict[str, Any]] = []
            t0 = time.monotonic()
            # Alternate quiet and contended repetitions so drift on a shared machine
            # affects both alike.
            for _ in range(settings.repetitions):
                plain.append(repetition(conc))
                if hogs is not None:
                    with hogs():
                        loaded.append(repetition(conc))
            for contended, reps in ((False, plain), (True, loaded)):
                if reps:
                    results["benchmarks"].append({
                        "model": name, "version": version, "protocol": protocol,
                        "concurrency": conc, "contention": contended, "repetitions": reps})
            p99 = sorted(r["p99_ms"] or 0.0 for r in plain)[len(plain) // 2]
            say(f"{name}/{protocol}/c{conc}: {len(plain)} reps, median p99 {p99:.2f} ms "
                f"({time.monotonic() - t0:.1f} s)")


def _bench_tensors(target: Target, settings: SuiteSettings, models: list[dict[str, Any]],
                   results: dict[str, Any], say: Callable[[str], None]) -> None:
    if not settings.tensor_sizes_mib:
        return
    model = tensors.pick_model(models, settings.tensor_model)
    if model is None:
        why = (f"model {settings.tensor_model!r} is not served" if settings.tensor_model
               else "no served model has a single dynamic FP32 input")
        results["tensor_series"] = {"model": None, "skipped": why, "points": []}
        results["notes"].append(f"large-tensor series skipped: {why}")
        return
    say(f"large tensors through {model['name']}: {settings.tensor_sizes_mib} MiB")
    transports = tuple(t for t in tensors.TRANSPORTS
                       if t != "grpc" or "grpc" in settings.protocols)
    points = tensors.measure_series(target, model, settings.tensor_sizes_mib,
                                    settings.tensor_requests, settings.json_requests,
                                    settings.json_max_mib, transports)
    results["tensor_series"] = {"model": model["name"], "points": points}
