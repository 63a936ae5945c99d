# SPDX-License-Identifier: Apache-2.0
"""LLM latency through the OpenAI-compatible /v1/completions route (optional part)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlos_build.report.contention import Hogs
from mlos_build.report.service import ServiceError, Target
from mlos_build.report.stats import summarize_latencies

if TYPE_CHECKING:
    from mlos_build.report.suite import SuiteSettings

PROMPT = "The capital of France is"


def _repetition(target: Target, model: str, requests: int, max_tokens: int) -> dict[str, Any]:
    latencies: list[float] = []
    tokens = 0
    errors = 0
    first_error = None
    start = time.perf_counter()
    for _ in range(requests):
        t0 = time.perf_counter()
        try:
            answer = target.request("POST", "/v1/completions", {
                "model": model, "prompt": PROMPT, "max_tokens": max_tokens,
                "temperature": 0.0})
        except ServiceError as exc:
            errors += 1
            first_error = first_error or str(exc)[:300]
            continue
        latencies.append(time.perf_counter() - t0)
        tokens += int((answer or {}).get("usage", {}).get("completion_tokens", 0))
    wall = time.perf_counter() - start
    rep = summarize_latencies(latencies, wall, errors)
    rep["completion_tokens"] = tokens
    rep["tokens_per_s"] = tokens / sum(latencies) if latencies and sum(latencies) > 0 else None
    if first_error:
        rep["first_error"] = first_error
    return rep


def _scheduler_view(health: Any, model: str) -> tuple[dict[str, Any], dict[str, int]]:
    sched = ((health or {}).get("features") or {}).get("scheduler") or {}
    if not isinstance(sched, dict):
        return {}, {}
    return sched, dict((sched.get("models") or {}).get(model) or {})


def registered_threads(target: Target, model: str, max_tokens: int) -> dict[str, Any]:
    """Which of the model's threads the service registered with mlos-ml, seen on /health
    while one completion runs: llama.cpp's threads are registered per generation and
    released after it, so a /health read between requests would show none."""
    done = threading.Event()
    failure: list[str] = []

    def complete() -> None:
        try:
            target.request("POST", "/v1/completions", {
                "model": model, "prompt": PROMPT, "max_tokens": max_tokens,
                "temperature": 0.0})
        except ServiceError as exc:
            failure.append(str(exc)[:300])
        finally:
            done.set()

    worker = threading.Thread(target=complete, daemon=True)
    worker.start()
    most: dict[str, int] = {}
    sched: dict[str, Any] = {}
    polls = 0
    while not done.is_set():
        try:
            sched, seen = _scheduler_view(target.get("/health"), model)
        except ServiceError:
            seen = {}
        polls += 1
        for klass, n in seen.items():
            most[klass] = max(most.get(klass, 0), int(n))
        done.wait(0.02)
    worker.join()
    out: dict[str, Any] = {"scheduler_in_use": sched.get("in_use"),
                           "reason": sched.get("reason"), "registered": most,
                           "health_polls": polls}
    if failure:
        out["error"] = failure[0]
    return out


def measure(target: Target, model: str, settings: SuiteSettings,
            hogs: Callable[[], Hogs] | None) -> dict[str, Any]:
    """Serial completions, quiet and (if enabled) contended, `repetitions` times each,
    after one warm-up completion that also records the model's registered threads."""
    threads = registered_threads(target, model, settings.llm_max_tokens)
    plain: list[dict[str, Any]] = []
    loaded: list[dict[str, Any]] = []
    for _ in range(settings.repetitions):
        plain.append(_repetition(target, model, settings.llm_requests, settings.llm_max_tokens))
        if hogs is not None:
            with hogs():
                loaded.append(_repetition(target, model, settings.llm_requests,
                                          settings.llm_max_tokens))
    return {"model": model, "route": "/v1/completions", "prompt": PROMPT,
            "max_tokens": settings.llm_max_tokens, "threads": threads,
            "runs": [{"contention": False, "repetitions": plain}]
            + ([{"contention": True, "repetitions": loaded}] if loaded else [])}
