# SPDX-License-Identifier: Apache-2.0
"""`core_bench.py --grpc`: the MLP over gRPC against the grpcio no-op floor and binary REST,
and an older tree's server beside this one with --before."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from core_clients import (
    ROOT,
    Clients,
    Result,
    accumulate,
    alternating,
    cpu_seconds,
    fmt,
    free_port,
    measure,
    mlos_server,
    wait_http,
)

GRPC_START, GRPC_END = "<!-- grpc:start -->", "<!-- grpc:end -->"


def bench_grpc(quick: bool, before: Path | None) -> str:
    """The MLP over gRPC against the grpcio no-op floor (and binary REST, and an older
    tree's server when given), interleaved blocks, one run."""
    bench = Clients(quick)
    tmp = bench.tmp
    procs: list[subprocess.Popen[bytes]] = []
    bench.rest, bench.grpc = free_port(), free_port()
    bench.base_rest, bench.base_grpc = free_port(), free_port()
    procs.append(mlos_server(bench.repo, tmp, bench.rest, bench.grpc))
    procs.append(subprocess.Popen([
        sys.executable, str(ROOT / "benchmarks" / "core_baseline_app.py"),
        "--port", str(bench.base_rest), "--grpc-port", str(bench.base_grpc),
        "--mlp", str(bench.mlp_path), "--double", str(bench.double_path),
    ], env=dict(os.environ, OMP_NUM_THREADS="1")))
    # (label, client factory, the server process whose CPU time it costs)
    paths: list[tuple[str, Callable[[], Callable[[], None]], int]] = [
        ("grpcio no-op unary (floor)", bench.grpc_noop(), procs[1].pid),
        ("MLOS gRPC (tritonclient)", bench.triton("mlp", "grpc", True), procs[0].pid),
        ("MLOS REST binary (tritonclient)", bench.triton("mlp", "http", True), procs[0].pid),
    ]
    saved = bench.grpc
    # The same service with part of the work replaced by its first result (the clients
    # read bench.grpc when they are made): the rows between MLOS gRPC and the floor.
    cached_rests = []
    for at, (cached, label) in enumerate((
            ("model", "MLOS gRPC, model output cached (no ONNX Runtime call)"),
            ("answer", "MLOS gRPC transport only (cached answer)"))):
        cached_rest, bench.grpc = free_port(), free_port()
        cached_rests.append(cached_rest)
        procs.append(mlos_server(bench.repo, tmp, cached_rest, bench.grpc, cached=cached))
        paths.insert(2 + at, (label, bench.triton("mlp", "grpc", True), procs[-1].pid))
    # The 16 MiB tensor (y = 2x), c=1: where copies of raw_output_contents show.
    bench.grpc = saved
    big_paths = [("MLOS gRPC (tritonclient)", bench.triton("double", "grpc", True),
                  procs[0].pid)]
    if before is not None:
        old_rest, bench.grpc = free_port(), free_port()
        procs.append(mlos_server(bench.repo, tmp, old_rest, bench.grpc, before))
        paths.insert(1, ("MLOS gRPC before (tritonclient)", bench.triton("mlp", "grpc", True),
                         procs[-1].pid))
        big_paths.append(("MLOS gRPC before (tritonclient)",
                          bench.triton("double", "grpc", True), procs[-1].pid))
    bench.grpc = saved
    load_before = os.getloadavg()
    results: dict[tuple[str, int], Result] = {}
    #: CPU seconds (server process, this client process) per path and concurrency.
    cpu: dict[tuple[str, int], list[float]] = {}
    big: dict[str, Result] = {}
    big_cpu: dict[str, list[float]] = {}
    blocks = 3 if quick else 6
    try:
        wait_http(f"http://127.0.0.1:{bench.rest}/v2/health/ready")
        wait_http(f"http://127.0.0.1:{bench.base_rest}/noop")
        for cached_rest in cached_rests:
            wait_http(f"http://127.0.0.1:{cached_rest}/v2/health/ready")
        if before is not None:
            wait_http(f"http://127.0.0.1:{old_rest}/v2/health/ready")
        for block in range(blocks):
            for c in (1, 8):
                total = (300 if quick else 1000) * (1 if c == 1 else 2)
                for label, factory, pid in alternating(paths, block):
                    server0, client0 = cpu_seconds(pid), time.process_time()
                    part = measure(label, "mlp", c, total, factory)
                    spent = cpu.setdefault((label, c), [0.0, 0.0])
                    spent[0] += cpu_seconds(pid) - server0
                    spent[1] += time.process_time() - client0
                    accumulate(results, (label, c), part)
            for label, factory, pid in alternating(big_paths, block):
                server0 = cpu_seconds(pid)
                part = measure(label, "16MiB", 1, 10 if quick else 20, factory, warmup=2)
                spent = big_cpu.setdefault(label, [0.0])
                spent[0] += cpu_seconds(pid) - server0
                accumulate(big, label, part)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
    load_after = os.getloadavg()
    floor1, floor8 = results[(paths[0][0], 1)], results[(paths[0][0], 8)]
    ours1 = results[("MLOS gRPC (tritonclient)", 1)]
    ours8 = results[("MLOS gRPC (tritonclient)", 8)]
    share = ours8.throughput / floor8.throughput
    ratio = ours1.p50 / floor1.p50
    def per_request(key: tuple[str, int], which: int) -> str:
        return fmt(cpu[key][which] / len(results[key].latencies))

    rows = [f"| {label} | {c} | {fmt(r.p50)} | {fmt(r.pct(0.9))} | {fmt(r.pct(0.99))} | "
            f"{r.throughput:.1f} | {r.throughput / results[(paths[0][0], c)].throughput:.2f} "
            f"| {r.p50 / results[(paths[0][0], c)].p50:.2f} | "
            f"{per_request((label, c), 0)} | {per_request((label, c), 1)} | "
            f"{len(r.latencies)} |"
            for (label, c), r in sorted(results.items(), key=lambda kv: kv[0][1])]
    command = "python benchmarks/core_bench.py --grpc" + (" --quick" if quick else "") + \
        (" --before DIR" if before is not None else "")
    return "\n".join([
        GRPC_START, "## gRPC against its floor", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}` on "
        f"{platform.node()} ({os.cpu_count()} CPUs, Python {platform.python_version()}): "
        "the MLP (batch 1) through tritonclient.grpc (binary tensors), the grpcio no-op "
        "unary method (a raw stub, 256 bytes: the floor) and binary REST, every path in "
        f"{blocks} interleaved blocks per concurrency (order reversed every other block). "
        f"1-minute load average {load_before[0]:.2f} before, {load_after[0]:.2f} after: "
        "measured on a loaded 2-core host (the clients, the servers and other work share "
        "the cores), so compare rows of one concurrency, not absolute figures."
        + (" `before` is the server of the tree given with --before, run beside this "
           "one on the same model." if before is not None else ""), "",
        "| Target | Measured | Met |", "|---|---|---|",
        f"| c=8: gRPC throughput at least 70% of the grpcio no-op floor's | "
        f"{ours8.throughput:.0f}/s vs {floor8.throughput:.0f}/s ({share:.0%}) | "
        f"{'yes' if share >= 0.7 else 'no'} |",
        f"| c=1: gRPC p50 at most 1.5x the floor's | {fmt(ours1.p50)} vs {fmt(floor1.p50)} "
        f"({ratio:.2f}x) | {'yes' if ratio <= 1.5 else 'no'} |", "",
        "| path | concurrency | p50 | p90 | p99 | requests/s | throughput / floor | "
        "p50 / floor | server CPU / request | client CPU / request | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
        "The 16 MiB tensor (y = 2x, 16 MiB in, 16 MiB out) at c=1, in the same blocks:", "",
        "| path | p50 | p90 | server CPU / request | n |", "|---|---|---|---|---|",
        *[f"| {label} | {fmt(r.p50)} | {fmt(r.pct(0.9))} | "
          f"{fmt(big_cpu[label][0] / len(r.latencies))} | {len(r.latencies)} |"
          for label, r in big.items()], "",
        "CPU per request: user + system time of the serving process (/proc/PID/stat) and "
        "of this benchmark process (all its client threads) over each block, divided by "
        "the requests it completed. With clients and servers on the same two cores, "
        "throughput at c=8 is bounded by their sum. The two cached rows are the same "
        "service with part of its work replaced by its first result "
        "(benchmarks/core_grpc_transport.py): \"model output cached\" does everything but "
        "the ONNX Runtime call (which takes the MLP about 14 us in-process, and releases "
        "the GIL); \"transport only\" returns ModelInfer's first answer again: grpc.aio "
        "and the messages, without the key check, decoding, the data plane or the "
        "model.", "",
        GRPC_END, ""])


