# SPDX-License-Identifier: Apache-2.0
"""Contention: "hog" processes running while a load phase is measured.

The mix follows "mixed workloads": one busy-loop CPU hog per CPU at normal priority
(nice 0, SCHED_OTHER: what other tenants' batch jobs get), plus memory-bandwidth hogs
that stream through buffers far larger than the caches, so the service also competes
for the memory bus and loses its cache lines.

Where the hogs run decides what a contended figure means, so the results record it:
- `local`: the hogs on this machine, the same machine as a local service;
- `host`: the hogs on the host while the service runs in a QEMU guest: they compete with
  the guest's vCPU threads (the guest sees stolen time, not an in-guest competitor);
- `command`: a user-given shell command that starts hogs on the target (for example
  over ssh into the guest) and runs until it is stopped; its process group is ended
  after the phase. What it runs is up to the command: no memory hog is added.

The load generator itself may run at a real-time priority (`set_client_rt_priority`,
the suite's `--client-rt-priority`): in a guest where the hogs run beside it, a client
at nice 0 waits a time slice behind a hog at every wake-up and measures that wait as
service latency, in every mode alike. At SCHED_FIFO below the service's own (mlos-ml's
`rt_priority`, 10 by default) no hog delays it; the hogs, its children, are put back to
SCHED_OTHER whatever the suite's policy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from types import TracebackType
from typing import Any

from mlos_build.report.sched_probe import POLICIES, normal_policy

WHERES = ("local", "host", "command")
# The hogs' priority: normal, like other tenants' batch jobs, set explicitly whatever the
# suite's own (recorded apart as client_host.nice).
HOG_NICE = 0

_CPU_HOG = "while True:\n    pass\n"

# Two buffers of `mib` MiB each; every pass reads one and writes the other. It says
# "ready" once every page is touched; with `seconds` > 0 it then measures for that long
# and prints GiB/s moved (read + write).
_MEM_HOG = """
import sys, time
import numpy as np
mib, seconds = float(sys.argv[1]), float(sys.argv[2])
src = np.ones(int(mib * 2**20) // 8)
dst = np.empty_like(src)
np.copyto(dst, src)  # touch every page before timing
print("ready", flush=True)
passes, t0 = 0, time.perf_counter()
while seconds <= 0 or time.perf_counter() - t0 < seconds:
    np.copyto(dst, src)
    passes += 1
print(2 * passes * src.nbytes / 2**30 / (time.perf_counter() - t0))
"""


class ClientPriorityError(RuntimeError):
    """The load generator could not be given the real-time priority asked for."""


def set_client_rt_priority(priority: int) -> None:
    """Put the calling thread (and the threads it starts after) at SCHED_FIFO `priority`;
    0 leaves it as it is."""
    if priority <= 0:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as exc:
        raise ClientPriorityError(
            f"cannot run the load generator at SCHED_FIFO {priority} ({exc}): run the suite "
            f"as root (or with CAP_SYS_NICE, or a RLIMIT_RTPRIO of at least {priority}), or "
            "leave --client-rt-priority out") from exc


def client_priority() -> dict[str, Any]:
    """The calling thread's policy, real-time priority and nice (recorded with results)."""
    policy = os.sched_getscheduler(0)
    return {"policy": POLICIES.get(policy, str(policy)),
            "rt_priority": os.sched_getparam(0).sched_priority,
            "nice": os.getpriority(os.PRIO_PROCESS, 0)}


def hog_nice(wanted: int = HOG_NICE) -> int:
    """The nice value hogs get: raising one needs no privilege, lowering one does, so a
    suite run unprivileged at a higher nice than `wanted` leaves its hogs at its own."""
    own = os.getpriority(os.PRIO_PROCESS, 0)
    return wanted if own <= wanted or os.geteuid() == 0 else own


def _as_hog(nice: int) -> None:
    """In a hog's child before exec: SCHED_OTHER at `nice`, not the suite's policy."""
    normal_policy()
    os.setpriority(os.PRIO_PROCESS, 0, nice)


def measure_memory_bandwidth(mib: float, seconds: float = 1.0) -> float:
    """GiB/s one memory hog moves on a quiet machine (what it takes from the others)."""
    out = subprocess.run([sys.executable, "-c", _MEM_HOG, str(mib), str(seconds)],
                         capture_output=True, text=True, timeout=60 + 10 * seconds, check=True,
                         preexec_fn=lambda: _as_hog(hog_nice()))
    return round(float(out.stdout.split()[-1]), 2)


class Hogs:
    """A context manager that keeps `count` CPU hogs and `mem_hogs` memory hogs running."""

    def __init__(self, count: int, where: str = "local", command: str | None = None,
                 settle_s: float = 0.3, mem_hogs: int = 0, mem_mib: float = 128.0,
                 nice: int = HOG_NICE) -> None:
        if where not in WHERES:
            raise ValueError(f"contention place {where!r}: expected one of {WHERES}")
        if where == "command" and not command:
            raise ValueError("contention place 'command' needs --hog-command")
        self.count = count
        self.where = where
        self.command = command
        self.settle_s = settle_s
        self.mem_hogs = 0 if where == "command" else mem_hogs
        self.mem_mib = mem_mib
        self.nice = hog_nice(nice)
        self.procs: list[subprocess.Popen[bytes]] = []

    def describe(self) -> dict[str, Any]:
        return {"hogs": self.count, "where": self.where, "command": self.command,
                "nice": self.nice, "memory_hogs": self.mem_hogs,
                "memory_hog_mib": self.mem_mib if self.mem_hogs else None}

    def _at_hog_priority(self) -> None:
        _as_hog(self.nice)

    def __enter__(self) -> Hogs:
        try:
            if self.where == "command":
                assert self.command is not None
                cmd = self.command.replace("{n}", str(self.count))
                self.procs.append(subprocess.Popen(cmd, shell=True, start_new_session=True,
                                                   stdout=subprocess.DEVNULL,
                                                   preexec_fn=self._at_hog_priority))
            else:
                for _ in range(self.count):
                    self.procs.append(subprocess.Popen(
                        [sys.executable, "-c", _CPU_HOG], start_new_session=True,
                        preexec_fn=self._at_hog_priority))
                for _ in range(self.mem_hogs):
                    self.procs.append(subprocess.Popen(
                        [sys.executable, "-c", _MEM_HOG, str(self.mem_mib), "0"],
                        start_new_session=True, stdout=subprocess.PIPE,
                        preexec_fn=self._at_hog_priority))
                # Filling the buffers takes seconds in a slow guest: measure only once
                # every memory hog streams.
                for proc in self.procs[self.count:]:
                    assert proc.stdout is not None
                    if proc.stdout.readline().strip() != b"ready":
                        raise RuntimeError("a memory hog did not start (numpy missing, or "
                                           "no memory for its buffers?)")
        except BaseException:
            self.stop()
            raise
        # Let the hogs reach the run queue (and the memory hogs fill their buffers).
        time.sleep(self.settle_s)
        for proc in self.procs:
            if proc.poll() is not None:
                code = proc.returncode
                self.stop()
                raise RuntimeError(f"contention process exited early with status {code}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """End every process this object started (by its own process group id)."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs.clear()
