# SPDX-License-Identifier: Apache-2.0
"""Where the service's threads ran while a repetition was measured, read from /proc.

Used when the suite runs on the service's own machine (the validation guest): for each
thread of the service process, its scheduling policy and priority, the CPUs it may use and
the CPUs it was seen on, its run time, its run-queue wait (`/proc/<pid>/task/<tid>/schedstat`,
the time it was runnable but not running) and its involuntary switches (preemptions); per
CPU, the same run and wait totals from /proc/schedstat. This is what tells an end-to-end
p99 apart: whether the thread that computes waited, or another one on the request path.

Only the standard library and /proc: the probe runs wherever the suite does, and says
"unavailable" (with the reason) where /proc has none of it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROC = Path("/proc")
# sched(7) policy numbers as /proc/<pid>/stat field 41 gives them.
POLICIES = {0: "other", 1: "fifo", 2: "rr", 3: "batch", 5: "idle", 6: "deadline"}


def normal_policy() -> None:
    """Put the calling thread back to SCHED_OTHER (a real-time suite's threads and children
    start at its policy); always allowed."""
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


SAMPLE_S = 0.1  # how often the CPU each thread last ran on is read


@dataclass
class ThreadSample:
    name: str
    policy: str
    rt_priority: int
    nice: int
    cpu: int
    allowed: str
    run_ns: int
    wait_ns: int
    slices: int
    voluntary: int
    nonvoluntary: int


def listening_pid(port: int, proc: Path = PROC) -> int | None:
    """The process on this machine that listens on TCP `port` (IPv4 or IPv6): the service
    the suite drives, told apart from other services and from the suite itself."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            words = line.split()
            # local_address is HEXADDR:HEXPORT; state 0A is LISTEN; word 9 the inode.
            if len(words) > 9 and words[3] == "0A" and int(words[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{words[9]}]")
    if not inodes:
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return int(entry.name)
            except OSError:
                continue
    return None


def read_thread(task: Path) -> ThreadSample | None:
    """One thread's scheduling state; None once it has exited."""
    try:
        stat = (task / "stat").read_text()
        schedstat = (task / "schedstat").read_text().split()
        status = (task / "status").read_text()
    except OSError:
        return None
    # The name is in parentheses and may hold spaces: the fields start after the last ')'.
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); field n is fields[n - 3].
    status_of = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return ThreadSample(
        name=name, policy=POLICIES.get(int(fields[38]), fields[38]),
        rt_priority=int(fields[37]), nice=int(fields[16]), cpu=int(fields[36]),
        allowed=status_of.get("Cpus_allowed_list", "?").strip(),
        run_ns=int(schedstat[0]), wait_ns=int(schedstat[1]), slices=int(schedstat[2]),
        voluntary=int(status_of.get("voluntary_ctxt_switches", "0")),
        nonvoluntary=int(status_of.get("nonvoluntary_ctxt_switches", "0")))


def read_threads(pid: int, proc: Path = PROC) -> dict[int, ThreadSample]:
    out = {}
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return {}
    for task in tasks:
        sample = read_thread(task)
        if sample is not None:
            out[int(task.name)] = sample
    return out


def read_cpus(proc: Path = PROC) -> dict[int, tuple[int, int, int]]:
    """Per CPU: (run ns, run-queue wait ns, slices) from /proc/schedstat (version 15+:
    fields 7-9 of each `cpuN` line)."""
    out = {}
    try:
        lines = (proc / "schedstat").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        words = line.split()
        if words and words[0].startswith("cpu") and words[0][3:].isdigit() and len(words) >= 10:
            out[int(words[0][3:])] = (int(words[7]), int(words[8]), int(words[9]))
    return out


def rt_throttling(proc: Path = PROC) -> dict[str, Any]:
    """The RT bandwidth limit (sched_rt_runtime_us of sched_rt_period_us): a SCHED_FIFO
    thread that would use more of each period than that is throttled."""
    out: dict[str, Any] = {}
    for key in ("sched_rt_runtime_us", "sched_rt_period_us"):
        try:
            out[key] = int((proc / "sys" / "kernel" / key).read_text())
        except (OSError, ValueError):
            out[key] = None
    return out


@dataclass
class Probe:
    """Samples one process's threads while a repetition runs; `result()` gives the deltas."""

    pid: int
    proc: Path = PROC
    before: dict[int, ThreadSample] = field(default_factory=dict)
    cpus_before: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    seen_on: dict[int, dict[int, int]] = field(default_factory=dict)
    last: dict[int, ThreadSample] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.before = read_threads(self.pid, self.proc)
        self.cpus_before = read_cpus(self.proc)
        self.last = dict(self.before)
        self._thread = threading.Thread(target=self._sample, name="sched-probe", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        # Never ahead of the service: a load generator at a real-time priority
        # (--client-rt-priority) would otherwise start this thread at it too.
        normal_policy()
        while not self._stop.wait(SAMPLE_S):
            self._record(read_threads(self.pid, self.proc))

    def _record(self, now: dict[int, ThreadSample]) -> None:
        for tid, sample in now.items():
            if sample.run_ns != self.last.get(tid, sample).run_ns or tid not in self.last:
                cpus = self.seen_on.setdefault(tid, {})
                cpus[sample.cpu] = cpus.get(sample.cpu, 0) + 1
            self.last[tid] = sample

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._record(read_threads(self.pid, self.proc))
        return self.result(read_cpus(self.proc))

    def result(self, cpus_after: dict[int, tuple[int, int, int]]) -> dict[str, Any]:
        threads: list[dict[str, Any]] = []
        for tid, end in self.last.items():
            start = self.before.get(tid)
            run = end.run_ns - (start.run_ns if start else 0)
            if run <= 0:
                continue  # idle for the whole repetition
            threads.append({
                "tid": tid, "name": end.name, "policy": end.policy,
                "rt_priority": end.rt_priority, "nice": end.nice, "allowed": end.allowed,
                "seen_on": {str(c): n for c, n in sorted(self.seen_on.get(tid, {}).items())},
                "run_ms": run / 1e6,
                "wait_ms": (end.wait_ns - (start.wait_ns if start else 0)) / 1e6,
                "slices": end.slices - (start.slices if start else 0),
                "nonvoluntary": end.nonvoluntary - (start.nonvoluntary if start else 0),
                "voluntary": end.voluntary - (start.voluntary if start else 0)})
        threads.sort(key=lambda t: -t["run_ms"])
        cpus = [{"cpu": cpu, "run_ms": (after[0] - self.cpus_before[cpu][0]) / 1e6,
                 "wait_ms": (after[1] - self.cpus_before[cpu][1]) / 1e6,
                 "slices": after[2] - self.cpus_before[cpu][2]}
                for cpu, after in sorted(cpus_after.items()) if cpu in self.cpus_before]
        return {"threads": threads, "cpus": cpus}


@contextmanager
def probed(pid: int | None, into: dict[str, Any]) -> Iterator[None]:
    """Runs the block under probes of the service `pid` and of this process (the load
    generator, whose own waits are part of every latency it measures) and stores their
    results as into["sched"] and into["sched_client"]; with no pid, does nothing."""
    if pid is None:
        yield
        return
    service, client = Probe(pid), Probe(os.getpid())
    service.start()
    client.start()
    try:
        yield
    finally:
        into["sched"] = service.stop()
        into["sched_client"] = client.stop()


def merge(reps: list[dict[str, Any]], key: str = "sched") -> dict[str, Any] | None:
    """One phase's repetitions summed (key "sched": the service, "sched_client": the load
    generator), threads grouped by name and policy (ONNX Runtime's pool threads share a
    name): what the report shows."""
    samples = [r[key] for r in reps if isinstance(r.get(key), dict)]
    if not samples:
        return None
    groups: dict[tuple[str, str, int, str], dict[str, Any]] = {}
    cpus: dict[int, dict[str, float]] = {}
    for sample in samples:
        for t in sample["threads"]:
            group = (t["name"], t["policy"], t["rt_priority"], t["allowed"])
            g = groups.setdefault(group, {"name": group[0], "policy": group[1],
                                          "rt_priority": group[2], "allowed": group[3],
                                          "threads": set(), "seen_on": {}, "run_ms": 0.0,
                                          "wait_ms": 0.0, "slices": 0, "nonvoluntary": 0})
            g["threads"].add(t["tid"])
            for cpu, n in t["seen_on"].items():
                g["seen_on"][cpu] = g["seen_on"].get(cpu, 0) + n
            for k in ("run_ms", "wait_ms", "slices", "nonvoluntary"):
                g[k] += t[k]
        for c in sample["cpus"]:
            acc = cpus.setdefault(c["cpu"], {"run_ms": 0.0, "wait_ms": 0.0, "slices": 0})
            for k in ("run_ms", "wait_ms", "slices"):
                acc[k] += c[k]
    rows = sorted(groups.values(), key=lambda g: -g["run_ms"])
    for g in rows:
        g["threads"] = len(g["threads"])
        g["wait_per_slice_ms"] = g["wait_ms"] / g["slices"] if g["slices"] else None
    return {"repetitions": len(samples), "threads": rows,
            "cpus": [{"cpu": c, **v} for c, v in sorted(cpus.items())]}
