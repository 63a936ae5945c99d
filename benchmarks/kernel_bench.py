# SPDX-License-Identifier: Apache-2.0
"""mlos-ml benchmarks: the module against the userspace way, measured in one guest run.

    python benchmarks/kernel_bench.py            # boots a QEMU guest (Debian 6.12 kernel,
                                                 # module in full mode), writes
                                                 # docs/kernel-benchmarks.{md,json}
    python benchmarks/kernel_bench.py --in-guest # the measurements (run by the guest)

Three questions, each answered with and without the module in the same run:
  1. scheduler: p50/p99 latency of a fixed compute step under CPU hogs, as a normal thread,
     as a module-registered latency thread, and as a root thread that set SCHED_FIFO itself;
  2. buffers: acquiring and first-touching a tensor buffer, malloc (numpy) vs pool, with
     page faults counted;
  3. handoff: moving a 64 MiB tensor to another process, copy through a socket vs passing a
     pool buffer fd vs passing a memfd (userspace shared memory).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(values_ns: list[int]) -> dict[str, float]:
    us = [v / 1000 for v in values_ns]
    return {"p50_us": round(_pct(us, 0.50), 1), "p99_us": round(_pct(us, 0.99), 1),
            "mean_us": round(statistics.fmean(us), 1), "n": len(us)}


# ---- 1. scheduler ----------------------------------------------------------------------

def _compute_step() -> int:
    acc = 0
    for i in range(3000):
        acc += i * i
    return acc


# One step is about 10 ms under TCG: long enough to be time-sliced against the hogs, and a
# third of the period, so a SCHED_FIFO thread stays far from RT throttling (950 ms/s).
PERIOD_S = 0.03


def _latency_run(iterations: int, period_s: float) -> list[int]:
    """Each step is due at a fixed time; latency = due time to completion."""
    out = []
    due = time.perf_counter_ns() + int(period_s * 1e9)
    for _ in range(iterations):
        now = time.perf_counter_ns()
        if due > now:
            time.sleep((due - now) / 1e9)
        _compute_step()
        out.append(time.perf_counter_ns() - due)
        due += int(period_s * 1e9)
        due = max(due, time.perf_counter_ns())
    return out


def bench_scheduler(iterations: int, chunk: int = 20) -> dict[str, object]:
    """The three variants run interleaved in chunks, so drift in the host's load (TCG
    shares the host's CPUs) spreads over all of them instead of biasing one."""
    from mlos_core.kernel import mlos_ml

    ncpu = os.cpu_count() or 1
    hogs = [subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"]) for _ in range(2 * ncpu)]
    samples: dict[str, list[int]] = {"normal_thread": [], "module_latency_class": [],
                                     "userspace_sched_fifo_as_root": []}
    preemptions = 0
    try:
        time.sleep(0.5)
        with mlos_ml.Device.open() as dev:
            for _ in range(max(1, iterations // chunk)):
                samples["normal_thread"] += _latency_run(chunk, PERIOD_S)
                dev.register_thread(mlos_ml.ThreadClass.LATENCY)
                samples["module_latency_class"] += _latency_run(chunk, PERIOD_S)
                preemptions += dev.thread_stats().preemptions
                dev.unregister_thread()
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))  # CAP_SYS_NICE
                samples["userspace_sched_fifo_as_root"] += _latency_run(chunk, PERIOD_S)
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    results: dict[str, object] = {"hogs": len(hogs), "cpus": ncpu,
                                  "module_preemptions": preemptions}
    results.update({name: _summary(values) for name, values in samples.items()})
    return results


# ---- 2. buffer acquisition -----------------------------------------------------------

def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bench_buffers(size: int, rounds: int) -> dict[str, object]:
    import numpy as np

    from mlos_core.kernel import mlos_ml

    page = os.sysconf("SC_PAGE_SIZE")
    out: dict[str, object] = {"size_bytes": size}

    times, f0 = [], _faults()
    for _ in range(rounds):
        t = time.perf_counter_ns()
        arr = np.empty(size, dtype=np.uint8)  # glibc mmap()s fresh pages at this size
        arr[::page] = 1
        times.append(time.perf_counter_ns() - t)
        del arr
    out["malloc_numpy"] = {**_summary(times), "faults_per_buffer": (_faults() - f0) / rounds}

    times, f0 = [], _faults()
    for _ in range(rounds):
        t = time.perf_counter_ns()
        anon = mmap.mmap(-1, size)  # fresh pages, as malloc above its mmap threshold
        view = np.frombuffer(anon, dtype=np.uint8)
        view[::page] = 1
        times.append(time.perf_counter_ns() - t)
        del view
        anon.close()
    out["anonymous_mmap"] = {**_summary(times), "faults_per_buffer": (_faults() - f0) / rounds}

    with mlos_ml.Device.open() as dev:
        pool = dev.create_pool(size * 2)
        times, f0 = [], _faults()
        for _ in range(rounds):
            t = time.perf_counter_ns()
            buf = pool.alloc(size)
            arr = buf.array()
            arr[::page] = 1
            times.append(time.perf_counter_ns() - t)
            del arr
            buf.close()
        out["pool_alloc_map"] = {**_summary(times), "faults_per_buffer": (_faults() - f0) / rounds}

        # The steady state a server reaches either way: one buffer, reused per request.
        buf = pool.alloc(size)
        arr = buf.array()
        times, f0 = [], _faults()
        for _ in range(rounds):
            t = time.perf_counter_ns()
            arr[::page] = 1
            times.append(time.perf_counter_ns() - t)
        out["pool_buffer_reused"] = {**_summary(times),
                                     "faults_per_buffer": (_faults() - f0) / rounds}
        del arr
        buf.close()
    reused = np.empty(size, dtype=np.uint8)
    reused[::page] = 0
    times, f0 = [], _faults()
    for _ in range(rounds):
        t = time.perf_counter_ns()
        reused[::page] = 1
        times.append(time.perf_counter_ns() - t)
    out["userspace_buffer_reused"] = {**_summary(times),
                                      "faults_per_buffer": (_faults() - f0) / rounds}
    return out


# ---- 3. 64 MiB between processes -----------------------------------------------------

RECEIVER = r"""
import mmap, os, socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
mode, size = sys.argv[2], int(sys.argv[3])
while True:
    if mode == "copy":
        head = sock.recv(1)
        if not head:
            break
        data = bytearray(size)
        view, got = memoryview(data), 0
        while got < size:
            got += sock.recv_into(view[got:], size - got)
        last = data[-1]
    else:
        msg, fds, _, _ = socket.recv_fds(sock, 1, 1)
        if not msg:
            break
        m = mmap.mmap(fds[0], size, mmap.MAP_SHARED, mmap.PROT_READ)
        touched = m[::4096]  # read every page, as a consumer of the tensor would
        last = m[size - 1]
        m.close()
        os.close(fds[0])
    sock.send(bytes([last]))
"""


def bench_handoff(size: int, rounds: int) -> dict[str, object]:
    import numpy as np

    from mlos_core.kernel import mlos_ml

    out: dict[str, object] = {"size_bytes": size}
    with mlos_ml.Device.open() as dev:
        pool = dev.create_pool(size)
        buf = pool.alloc(size)
        src = buf.array()
        src[:] = 7
        memfd = os.memfd_create("tensor")
        os.ftruncate(memfd, size)
        with open(memfd, "r+b", closefd=False) as fh:
            fh.write(bytes(src))
        for mode in ("copy", "pool_fd", "memfd"):
            parent, child = socket.socketpair()
            proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(child.fileno()),
                                     "copy" if mode == "copy" else "fd", str(size)],
                                    pass_fds=[child.fileno()])
            child.close()
            times = []
            for _ in range(rounds):
                t = time.perf_counter_ns()
                if mode == "copy":
                    parent.send(b"T")
                    parent.sendall(memoryview(src))
                else:
                    socket.send_fds(parent, [b"T"], [buf.fd if mode == "pool_fd" else memfd])
                assert parent.recv(1) == b"\x07"
                times.append(time.perf_counter_ns() - t)
            parent.close()
            proc.wait(timeout=60)
            out[mode] = _summary(times)
        os.close(memfd)
        del src
        buf.close()
    _ = np
    return out


def in_guest(args: argparse.Namespace) -> int:
    report = {
        "kernel": os.uname().release,
        "scheduler": bench_scheduler(args.iterations),
        "buffers": bench_buffers(4 << 20, args.rounds),
        "handoff_64mib": bench_handoff(64 << 20, max(5, args.rounds // 4)),
    }
    print("MLOS-BENCH-JSON " + json.dumps(report))
    return 0


# ---- host side: boot, collect, write docs ----------------------------------------------

def _row(name: str, fig: dict[str, float], extra: str = "") -> str:
    return f"| {name} | {fig['p50_us']:.0f} | {fig['p99_us']:.0f} | {fig['n']} |{extra}"


def write_docs(report: dict, seconds: float, cpu_model: str) -> None:
    report["run"] = {"wall_s": round(seconds, 1), "host_cpu": cpu_model}
    s, b, h = report["scheduler"], report["buffers"], report["handoff_64mib"]
    lines = [
        "# mlos-ml benchmarks",
        "",
        "Measured inside one QEMU TCG guest (Debian kernel "
        f"`{report['kernel']}`, 1 vCPU, module loaded in full mode with reserved_cpus=0) on "
        "the CI host "
        f"(`{cpu_model}`); {seconds:.0f} s wall. TCG emulates the CPU, so absolute figures are "
        "10-50x slower than bare metal: compare the rows of one table, never against numbers "
        "from elsewhere. Reproduce: `.venv/bin/python benchmarks/kernel_bench.py` "
        "(figures JSON: docs/kernel-benchmarks.json).",
        "",
        f"## 1. Latency of a fixed compute step under CPU hogs ({s['hogs']} busy-loop "
        f"processes on {s['cpus']} CPU; a step is due every {PERIOD_S * 1000:.0f} ms, latency "
        "= due time to completion)",
        "",
        "| thread | p50 us | p99 us | steps |",
        "|---|---|---|---|",
        _row("normal thread (no module)", s["normal_thread"]),
        _row("registered with mlos-ml as LATENCY", s["module_latency_class"]),
        _row("root thread that set SCHED_FIFO itself", s["userspace_sched_fifo_as_root"]),
        "",
        f"Preemptions the module counted for the latency thread: {s['module_preemptions']}.",
        "",
        "## 2. Acquiring and first-touching a 4 MiB tensor buffer",
        "",
        "| path | p50 us | p99 us | rounds | page faults per buffer |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("malloc_numpy", "malloc (numpy.empty; glibc reuses freed heap pages)"),
                       ("anonymous_mmap", "anonymous mmap, fresh pages each time, no module"),
                       ("pool_alloc_map", "mlos-ml pool: alloc + mmap (pages pre-pinned)"),
                       ("userspace_buffer_reused", "userspace: one buffer reused"),
                       ("pool_buffer_reused", "mlos-ml: one pool buffer reused")):
        lines.append(_row(label, b[key], f" {b[key]['faults_per_buffer']:.0f} |"))
    lines += [
        "",
        "## 3. Moving a 64 MiB tensor to another process",
        "",
        "| path | p50 us | p99 us | rounds |",
        "|---|---|---|---|",
        _row("copy through a UNIX socket (no module)", h["copy"]),
        _row("mlos-ml pool buffer fd (SCM_RIGHTS) + mmap", h["pool_fd"]),
        _row("memfd fd (userspace shared memory) + mmap", h["memfd"]),
        "",
        "## Where the module wins, and where userspace does as well",
        "",
    ]
    lines += _verdicts(report)
    Path(REPO / "docs" / "kernel-benchmarks.md").write_text("\n".join(lines) + "\n")
    Path(REPO / "docs" / "kernel-benchmarks.json").write_text(json.dumps(report, indent=2) + "\n")


def _compare(a: float, b: float) -> str:
    """How a compares with b, in words, treating +-25% as noise under TCG."""
    if a < 0.75 * b:
        return f"{b / max(a, 1e-9):.1f}x better"
    if a > 1.25 * b:
        return f"{a / max(b, 1e-9):.1f}x worse"
    return "about the same"


def _verdicts(report: dict) -> list[str]:
    s, b, h = report["scheduler"], report["buffers"], report["handoff_64mib"]
    normal, mod, root = (s[k]["p99_us"] for k in ("normal_thread", "module_latency_class",
                                                  "userspace_sched_fifo_as_root"))
    m, p, a = b["malloc_numpy"], b["pool_alloc_map"], b["anonymous_mmap"]
    ur, pr = b["userspace_buffer_reused"], b["pool_buffer_reused"]
    c, f, mf = h["copy"], h["pool_fd"], h["memfd"]
    return [
        f"- Scheduler under contention: the registered latency thread's p99 is {mod:.0f} us "
        f"against {normal:.0f} us for a normal thread ({_compare(mod, normal)}). A root "
        f"process that sets SCHED_FIFO itself gets the same policy ({root:.0f} us p99; with "
        "a few hundred steps a p99 is one of the worst few samples, so the gap between these "
        "two rows is host noise, not an effect). What the module adds is granting that "
        "policy to an unprivileged service (group mlos, no CAP_SYS_NICE) with CPU "
        "reservation, latency QoS, preemption counts and the automatic restore when the "
        "service exits.",
        f"- 4 MiB buffer, acquired and first touched: the pool takes {p['p50_us']:.0f} us p50 "
        f"with {p['faults_per_buffer']:.0f} page faults; fresh anonymous memory "
        f"{a['p50_us']:.0f} us with {a['faults_per_buffer']:.0f} faults (pool "
        f"{_compare(p['p50_us'], a['p50_us'])}); malloc {m['p50_us']:.0f} us, because glibc "
        "raises its mmap threshold after the first free and hands the same heap pages back "
        f"(pool {_compare(p['p50_us'], m['p50_us'])}). Each pool acquisition is an ioctl plus "
        "an mmap that inserts every page, so allocating per request from a pool does not beat "
        "a warm malloc. Reusing one buffer costs the same either way (userspace "
        f"{ur['p50_us']:.0f} us, pool {pr['p50_us']:.0f} us): the pool's gains are pinning "
        "(never swapped, charged to RLIMIT_MEMLOCK), NUMA placement and sharing by fd, with "
        "buffers allocated once and reused.",
        f"- 64 MiB to another process (receiver reads every page): copy {c['p50_us']:.0f} us "
        f"p50, pool fd {f['p50_us']:.0f} us ({_compare(f['p50_us'], c['p50_us'])} than the "
        f"copy), memfd {mf['p50_us']:.0f} us (pool fd {_compare(f['p50_us'], mf['p50_us'])} "
        "than memfd). Passing a descriptor instead of bytes is the win, and userspace shared "
        "memory (memfd) has it too; the pool's pages are pinned and pre-mapped, which "
        "shows here only as the difference between those two rows.",
    ]


def on_host(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO / "tests" / "kernel"))  # the kernel layer's guest helper
    import mlos_guest as guest

    work = guest.scratch_dir("mlos-bench-")
    run = guest.run_host_root_guest(
        work, guest.build_selftests(work), guest.HERE / "guest_python.sh", timeout=900,
        cpus=1, append="mlos.modes=full mlos.gpus=-1 mlos.fuzz=0 mlos.extra=1 "
                       "mlos.reserved=0 mlos.pymodes=full mlos.bench=1 mlos.nopytest=1")
    shutil.rmtree(work, ignore_errors=True)
    lines = [ln for ln in run.output.splitlines() if "MLOS-BENCH-JSON " in ln]
    if not lines:
        print(run.output[-5000:], file=sys.stderr)
        return 1
    report = json.loads(lines[-1].split("MLOS-BENCH-JSON ", 1)[1])
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in
                      Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "unknown CPU")
    write_docs(report, run.seconds, cpu_model)
    print(json.dumps(report, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-guest", action="store_true")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--render", action="store_true",
                        help="rewrite docs/kernel-benchmarks.md from the committed JSON")
    args = parser.parse_args()
    if args.render:
        report = json.loads((REPO / "docs" / "kernel-benchmarks.json").read_text())
        write_docs(report, report["run"]["wall_s"], report["run"]["host_cpu"])
        return 0
    return in_guest(args) if args.in_guest else on_host(args)


if __name__ == "__main__":
    raise SystemExit(main())
