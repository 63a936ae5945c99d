# SPDX-License-Identifier: Apache-2.0
"""The scheduling probe: a real busy process read through this machine's /proc, the
service found by its listening port, phases merged, and the report's table."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from mlos_build.report import heavy, sched_probe
from mlos_build.report.render import sched_section

# Two threads: one spins, one sleeps; the spinning one renames itself with a name that
# holds a space and a parenthesis, as a thread name may (comm is cut to 15 bytes).
BUSY = r"""
import threading, time
def spin():
    open("/proc/self/task/%d/comm" % threading.get_native_id(), "w").write("spin (x) y")
    end = time.monotonic() + 30
    while time.monotonic() < end:
        pass
threading.Thread(target=spin).start()
time.sleep(30)
"""


@pytest.fixture
def busy() -> int:
    proc = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            names = {s.name for s in sched_probe.read_threads(proc.pid).values()}
            if "spin (x) y" in names:
                break
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_spinning_thread_is_seen_running_under_its_own_name(busy: int) -> None:
    probe = sched_probe.Probe(busy)
    probe.start()
    time.sleep(1.0)
    result = probe.stop()
    threads = {t["name"]: t for t in result["threads"]}
    spin = threads["spin (x) y"]
    assert spin["policy"] == "other" and spin["rt_priority"] == 0
    # It spun for most of the second (beside QEMU on a 2-core machine, at least 5%).
    assert 50 < spin["run_ms"] <= 1200, spin
    assert spin["wait_ms"] >= 0 and spin["slices"] > 0
    assert sum(spin["seen_on"].values()) >= 3
    assert all(int(c) < (os.cpu_count() or 1) for c in spin["seen_on"])
    # Most run time first; the sleeping main thread ran little if at all.
    assert result["threads"][0]["name"] == "spin (x) y"
    assert sum(t["run_ms"] for t in result["threads"][1:]) < spin["run_ms"] / 10


def test_the_service_is_the_process_listening_on_the_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert sched_probe.listening_pid(port) == os.getpid()
    assert sched_probe.listening_pid(port) is None  # closed: nobody listens


def test_phases_merge_threads_by_name_and_policy() -> None:
    def thread(tid: int, name: str, policy: str, run: float, cpu: str) -> dict[str, object]:
        return {"tid": tid, "name": name, "policy": policy, "rt_priority": 50 * (policy == "fifo"),
                "nice": 0, "allowed": "0-1", "seen_on": {cpu: 2}, "run_ms": run,
                "wait_ms": run / 10, "slices": 4, "nonvoluntary": 1, "voluntary": 3}

    reps = [{"sched": {"threads": [thread(1, "ort", "fifo", 80, "1"),
                                   thread(2, "ort", "fifo", 20, "1"),
                                   thread(3, "uvicorn", "other", 5, "0")],
                       "cpus": [{"cpu": 0, "run_ms": 10, "wait_ms": 4, "slices": 9}]}},
            {"sched": {"threads": [thread(1, "ort", "fifo", 100, "0")],
                       "cpus": [{"cpu": 0, "run_ms": 10, "wait_ms": 6, "slices": 1}]}},
            {"p99_ms": 3.0}]  # a repetition without a probe counts for nothing
    merged = sched_probe.merge(reps)
    assert merged is not None and merged["repetitions"] == 2
    ort, uvicorn = merged["threads"]
    assert (ort["name"], ort["policy"], ort["threads"], ort["run_ms"]) == ("ort", "fifo", 2, 200)
    assert ort["seen_on"] == {"1": 4, "0": 2} and ort["slices"] == 12
    assert ort["wait_per_slice_ms"] == pytest.approx(20 / 12)
    assert uvicorn["name"] == "uvicorn" and uvicorn["threads"] == 1
    assert merged["cpus"] == [{"cpu": 0, "run_ms": 20, "wait_ms": 10, "slices": 10}]
    assert sched_probe.merge([{"p99_ms": 1.0}]) is None

    run = {"label": "kernel_scheduler", "runtime_mode": "kernel_scheduler",
           "sched_probe": {"pid": 7, "sched_rt_runtime_us": 950000,
                           "sched_rt_period_us": 1000000},
           "benchmarks": [{"model": heavy.NAME, "protocol": "http", "concurrency": 4,
                           "contention": True, "repetitions": reps}]}
    reps[0]["sched_client"] = {"threads": [thread(9, "python3", "other", 30, "0")],
                               "cpus": []}
    client = sched_probe.merge(reps, "sched_client")
    assert client is not None and client["repetitions"] == 1
    html = sched_section([run], ["scheduler"])
    assert "c4 http contended" in html and "fifo 50" in html and "ort ×2" in html
    assert "client: python3 ×1" in html
    assert "950000 of 1000000" in html
    assert sched_section([{**run, "benchmarks": []}], ["scheduler"]) == ""
