# SPDX-License-Identifier: Apache-2.0
"""The scheduler's native inference threads in a guest: one QEMU boot of Debian's 6.12
kernel loads mlos_ml in scheduler and full mode; in each, a real `mlos-core serve` (the
host's venv over 9p) loads an ONNX model with intra_op_threads 2. ONNX Runtime's pool
thread must run at SCHED_FIFO on the reserved CPU (read from /proc), be counted per model
in /metrics, and be gone from the metrics (and ended) after the model unloads, with
nothing logged as an error. gRPC's threads are throughput threads, kept off the reserved
CPU. The guest script is guest_threads_check.py.

MLOS_THREAD_LLAMA=1 adds a tiny llama.cpp model decoding with 2 threads (its OpenMP
worker FIFO on the reserved CPU, then dropped at unload). Off by default: the wheel
setup builds uses the build machine's AVX-512, which QEMU 7.2's TCG does not emulate
(the service dies of SIGILL loading the model); tests/unit/test_sched_threads.py runs
the same adoption with real llama.cpp on the host."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import mlos_guest as guest
import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(1500)]
MODES = tuple(os.environ.get("MLOS_THREAD_MODES", "scheduler,full").split(","))
LLAMA = os.environ.get("MLOS_THREAD_LLAMA") == "1"
FIFO, OTHER = 1, 0
RESERVED = "1"  # the module's reserved_cpus (guest_init.sh) and the service's setting
LAT = 'mlos_sched_threads{class="latency"}'


@pytest.fixture(scope="module")
def threads_guest(selftest_binaries: dict,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[guest.GuestRun]:
    work = tmp_path_factory.mktemp("threads-guest")
    run = guest.run_host_root_guest(
        work, selftest_binaries, guest.HERE / "guest_modes.sh", timeout=1400,
        append=f"mlos.modes={','.join(MODES)} mlos.gpus=0 mlos.fuzz=0 mlos.extra=1 "
               f"mlos.reserved={RESERVED} "
               "mlos.modes_script=tests/kernel/guest_threads_check.py"
               + (" mlos.llama=1" if LLAMA else ""))
    yield run
    shutil.rmtree(work, ignore_errors=True)


def named(threads: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [t for t in threads if t["name"].startswith(prefix)]


@pytest.mark.parametrize("mode", MODES)
def test_native_threads_in_mode(threads_guest: guest.GuestRun, mode: str) -> None:
    res = guest.modes_report(threads_guest, mode)
    log = res.get("serve_log")
    assert "error" not in res, (res.get("error"), res.get("returncode"), res.get("traceback"),
                                log)
    assert res["infer_ok"], res
    models = {"wide": {"latency": 1}, **({"tiny": {"latency": 1}} if LLAMA else {})}

    # ONNX Runtime's intra-op pool: one thread besides the caller, named after the model,
    # at SCHED_FIFO on the reserved CPU from the moment the model loaded.
    assert res["health_start"]["models"] == {"wide": {"latency": 1}}, res["health_start"]
    pool = named(res["threads_loaded"], "wide")
    assert len(pool) == 1 and pool[0]["policy"] == FIFO and pool[0]["cpus"] == RESERVED, pool

    # The data plane's inference threads (with llama.cpp, the OpenMP worker it started on
    # the one that decoded, carrying that thread's name): FIFO on the reserved CPU.
    served = res["threads_served"]
    infer = named(served, "inf-")
    assert infer and all(t["policy"] == FIFO and t["cpus"] == RESERVED for t in infer), infer
    by_name: dict[str, list[dict[str, Any]]] = {}
    for t in infer:
        by_name.setdefault(t["name"], []).append(t)
    m = res["metrics_served"]
    for model in models:
        assert m[f'mlos_sched_model_threads{{model="{model}",class="latency"}}'] == 1, m
    # The service's count is the module's: no entry the module does not have, or lacks.
    assert m[LAT] == res["module_served"]["sched_latency"], (m, res["module_served"])
    assert m[LAT] == len(infer) + 1, (m, infer)  # + ORT's pool thread
    assert res["health_served"]["models"] == models, res["health_served"]

    # gRPC calls run on the event loop's thread (grpc.aio; throughput, like REST); grpc
    # core's own threads (pollers, timers) are adopted throughput as `mlos-grpc`: kept off
    # the reserved CPU.
    grpc_core = named(served, "mlos-grpc")
    assert grpc_core and all(t["policy"] == OTHER and RESERVED not in t["cpus"].split(",")
                             for t in grpc_core), grpc_core

    if LLAMA:
        assert res["text"], res
        assert any(len(team) == 2 for team in by_name.values()), infer  # master + worker
        # A streamed completion's thread and its OpenMP worker: FIFO while it streams,
        # unregistered when it ends (the thread and its team end too).
        stream = res["stream"]
        assert stream["chunks"] >= 2 and len(stream["during"]) == 2, stream
        assert all(t["policy"] == FIFO and t["cpus"] == RESERVED
                   for t in stream["during"]), stream
        assert stream["after"] == [], stream
        assert res["metrics_streamed"][LAT] == m[LAT], (res["metrics_streamed"], m)

    # Unloaded: the model threads are gone from /metrics and /health, ORT's pool ended
    # (with llama.cpp: its OpenMP worker, kept by libgomp for its thread, is SCHED_OTHER).
    unloaded = res["metrics_unloaded"]
    assert not [k for k in unloaded if "mlos_sched_model_threads{" in k], unloaded
    assert unloaded[LAT] == m[LAT] - len(models) == res["module_unloaded"]["sched_latency"], (
        unloaded, res["module_unloaded"])
    assert res["health_unloaded"]["models"] == {}, res["health_unloaded"]
    assert res["health_unloaded"]["native_threads"] == 0, res["health_unloaded"]
    assert named(res["threads_unloaded"], "wide") == []
    if LLAMA:
        teams = [named(res["threads_unloaded"], name) for name in by_name]
        assert any({t["policy"] for t in team} == {FIFO, OTHER} for team in teams), teams
    # A second scrape: the same registrations (switch counters move on, nothing else).
    def steady(metrics: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in metrics.items() if "switches" not in k and "preempt" not in k}

    assert steady(res["metrics_again"]) == steady(unloaded), (res["metrics_again"], unloaded)
    assert unloaded["mlos_sched_threads_ended_total"] == 0, unloaded  # unload dropped them
    assert res["health_unloaded"]["register_failures"] == 0
    # Nothing logged as a failure, per scrape or otherwise.
    assert "Traceback" not in log and " ERROR " not in log and "cannot register" not in log, log
    # The service closed its descriptor: every registration is back.
    after = res["module_after"]
    assert after["sched_latency"] == after["sched_throughput"] == 0, after


def test_threads_guest_clean(threads_guest: guest.GuestRun) -> None:
    assert threads_guest.result("dmesg_bad") == ["0"], threads_guest.prefixed("MLOS-DMESG")
    for mode in MODES:
        assert threads_guest.result(mode, "rmmod") == ["ok"]
