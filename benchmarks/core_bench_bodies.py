# SPDX-License-Identifier: Apache-2.0
"""`core_bench.py --bodies`: binary REST request bodies read into a pooled buffer against a
per-request allocation, with the server's page faults per request."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import tritonclient.http as httpclient
from core_clients import (
    alternating,
    fmt,
    free_port,
    make_double,
    minor_faults,
    wait_http,
)

BODIES_START, BODIES_END = "<!-- bodies:start -->", "<!-- bodies:end -->"
BODY_SIZES = (4 << 20, 16 << 20)



def bench_bodies(quick: bool) -> str:
    """Per-request allocation vs the pooled body path, one service each, same run."""
    tmp = Path(tempfile.mkdtemp(prefix="mlos-bodies-"))
    make_double(tmp / "models" / "double" / "1" / "model.onnx")
    load_before = os.getloadavg()
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    for path, pool_mb in (("per-request allocation", "0"), ("pooled buffer", "128")):
        port = free_port()
        env = dict(os.environ, OMP_NUM_THREADS="1", MLOS_TENSOR_POOL_MB=pool_mb)
        proc = subprocess.Popen([
            sys.executable, "-m", "mlos_core", "serve", "--rest-port", str(port),
            "--no-grpc-enabled", "--model-repository", str(tmp / "models"),
            "--sysfs-root", str(tmp), "--log-level", "warning"], env=env)
        servers[path] = (proc, port)
    blocks, per_block = (2, 8) if quick else (6, 20)
    rows: list[str] = []
    try:
        for _proc, port in servers.values():
            wait_http(f"http://127.0.0.1:{port}/v2/health/ready")
        for size in BODY_SIZES:
            x = np.random.default_rng(size).standard_normal(size // 4, dtype=np.float32)
            lat: dict[str, list[float]] = {p: [] for p in servers}
            faults = dict.fromkeys(servers, 0)
            clients = {p: httpclient.InferenceServerClient(f"127.0.0.1:{port}")
                       for p, (_, port) in servers.items()}
            inp = httpclient.InferInput("x", [x.size], "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            out = [httpclient.InferRequestedOutput("y", binary_data=True)]
            for block in range(blocks):  # alternating blocks: drift hits both paths alike
                for path in alternating(list(servers), block):
                    client, pid = clients[path], servers[path][0].pid
                    for _ in range(3):  # warm: the pool's first buffer, caches
                        client.infer("double", [inp], outputs=out)
                    before = minor_faults(pid)
                    for _ in range(per_block):
                        t0 = time.perf_counter()
                        y = client.infer("double", [inp], outputs=out).as_numpy("y")
                        lat[path].append(time.perf_counter() - t0)
                        if y is None or y.shape != x.shape:
                            raise RuntimeError("wrong result shape")
                    faults[path] += minor_faults(pid) - before
            for path, values in lat.items():
                ordered = sorted(values)
                rows.append(
                    f"| {size >> 20} MiB | {path} | {fmt(statistics.median(values))} | "
                    f"{fmt(ordered[int(0.9 * len(ordered))])} | "
                    f"{fmt(statistics.fmean(values))} | {faults[path] / len(values):.0f} | "
                    f"{len(values)} |")
            for client in clients.values():
                client.close()
        port = servers["pooled buffer"][1]
        metrics = [line for line in requests.get(f"http://127.0.0.1:{port}/metrics",
                                                 timeout=10).text.splitlines()
                   if line.startswith("mlos_request_buffers_")]
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            proc.wait(timeout=60)
    load_after = os.getloadavg()
    command = "python benchmarks/core_bench.py --bodies" + (" --quick" if quick else "")
    return "\n".join([
        BODIES_START, "## Binary REST request bodies: pooled buffer vs per-request allocation",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}` on "
        f"{platform.node()} ({os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}), userspace mode (the host pool; in kernel modes the "
        f"same path reads into the pinned mlos-ml pool). 1-minute load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after "
        "(other work on the machine shares its cores). tritonclient.http, binary data, "
        "y = 2x, serial requests, "
        f"{blocks} alternating blocks of {per_block} per path; the baseline is the same "
        "service with `tensor_pool_mb: 0` (the body read the usual way, into a fresh bytes "
        "object per request). Page faults: the server process's minor faults per request.",
        "", "| body | path | p50 | p90 | mean | server page faults / request | n |",
        "|---|---|---|---|---|---|---|", *rows, "",
        "Pooled service counters at the end:", "", "```", *metrics, "```", BODIES_END, ""])


