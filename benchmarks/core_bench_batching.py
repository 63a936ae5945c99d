# SPDX-License-Identifier: Apache-2.0
"""`core_bench.py --batching` (also part of the full run): the MLP and a wide MLP at
concurrency 1, 8 and 32 without and with dynamic batching."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import requests
import tritonclient.http as httpclient
from core_clients import (
    Result,
    accumulate,
    alternating,
    fmt,
    free_port,
    make_mlp,
    make_wide_mlp,
    measure,
    wait_http,
)

BATCHING_START, BATCHING_END = "<!-- batching:start -->", "<!-- batching:end -->"
BATCHING_PBTXT = """platform: "onnxruntime_onnx"
max_batch_size: 32
dynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}
"""


def _session_p50(path: Path, rows: int, runs: int) -> float:
    """In-process ONNX Runtime p50 of one execution of `rows` rows (one intra-op thread,
    as the service runs it)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((rows, 64), dtype=np.float32)
    for _ in range(3):
        session.run(None, {"input": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _batch_counts(metrics: list[str]) -> dict[tuple[str, str], float]:
    """(executions|requests, model) -> the service's mlos_batch_*_total counter."""
    counts: dict[tuple[str, str], float] = {}
    for line in metrics:
        found = re.match(r'mlos_batch_(executions|requests)_total\{model="([^"]+)"\} (\S+)', line)
        if found:
            counts[(found.group(1), found.group(2))] = float(found.group(3))
    return counts


def bench_batching(quick: bool, delay_us: int = 0) -> str:
    """The MLP with and without dynamic batching, same service, same run."""
    tmp = Path(tempfile.mkdtemp(prefix="mlos-batching-"))
    repo = tmp / "models"
    make_mlp(repo / "mlp" / "1" / "model.onnx")
    make_mlp(repo / "mlp_batched" / "1" / "model.onnx")
    (repo / "mlp_batched" / "config.pbtxt").write_text(BATCHING_PBTXT.format(delay_us=delay_us))
    # Where compute, not the transport, dominates: a 64->1024->1024->10 MLP, c=1 and 32.
    make_wide_mlp(repo / "wide" / "1" / "model.onnx")
    make_wide_mlp(repo / "wide_batched" / "1" / "model.onnx")
    (repo / "wide_batched" / "config.pbtxt").write_text(
        BATCHING_PBTXT.format(delay_us=delay_us))
    port = free_port()
    load_before = os.getloadavg()
    proc = subprocess.Popen([
        sys.executable, "-m", "mlos_core", "serve", "--rest-port", str(port),
        "--no-grpc-enabled", "--model-repository", str(repo), "--sysfs-root", str(tmp),
        "--log-level", "warning"], env=dict(os.environ, OMP_NUM_THREADS="1"))
    x = np.random.default_rng(0).standard_normal((1, 64), dtype=np.float32)

    def client(model: str) -> Callable[[], Callable[[], None]]:
        def factory() -> Callable[[], None]:
            c = httpclient.InferenceServerClient(f"127.0.0.1:{port}", concurrency=1)
            inp = httpclient.InferInput("input", [1, 64], "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            out = [httpclient.InferRequestedOutput("output", binary_data=True)]

            def call() -> None:
                y = c.infer(model, [inp], outputs=out).as_numpy("output")
                if y is None or y.shape != (1, 10):
                    raise RuntimeError("wrong result shape")

            return call

        return factory

    results: dict[tuple[str, int], Result] = {}
    blocks = 2 if quick else 4

    def pair(prefix: str, models: tuple[str, str], c: int, total: int) -> None:
        """Both paths in alternating blocks, so drift in the machine's load hits both."""
        for block in range(blocks):
            order = list(zip(("no batching", "dynamic batching"), models, strict=True))
            for label, model in alternating(order, block):
                part = measure(f"MLOS REST binary, {label}", model, c, total // blocks,
                               client(model))
                accumulate(results, (prefix + label, c), part)

    def batch_metrics() -> list[str]:
        return [line for line in requests.get(f"http://127.0.0.1:{port}/metrics",
                                              timeout=10).text.splitlines()
                if line.startswith("mlos_batch_")]

    #: model -> requests per execution during its c=32 blocks
    per_batch: dict[str, float] = {}
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready")
        for prefix, models, concurrencies, n in (
                ("", ("mlp", "mlp_batched"), (1, 8, 32), 200 if quick else 2000),
                ("wide MLP, ", ("wide", "wide_batched"), (1, 32), 64 if quick else 320)):
            for c in concurrencies:
                before = _batch_counts(batch_metrics()) if c == 32 else {}
                pair(prefix, models, c, n * (1 if c == 1 else 2))
            after = _batch_counts(batch_metrics())
            runs = after[("executions", models[1])] - before.get(("executions", models[1]), 0)
            per_batch[models[1]] = (after[("requests", models[1])]
                                    - before.get(("requests", models[1]), 0)) / max(runs, 1)
        metrics = batch_metrics()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    load_after = os.getloadavg()
    runs = 20 if quick else 200
    compute = {name: (_session_p50(repo / name / "1" / "model.onnx", 1, runs),
                      _session_p50(repo / name / "1" / "model.onnx", 32, runs))
               for name in ("mlp", "wide")}
    plain32, batched32 = results[("no batching", 32)], results[("dynamic batching", 32)]
    plain1, batched1 = results[("no batching", 1)], results[("dynamic batching", 1)]
    speedup = batched32.throughput / plain32.throughput
    slowdown = batched1.p50 / plain1.p50
    wide_speedup = results[("wide MLP, dynamic batching", 32)].throughput / \
        results[("wide MLP, no batching", 32)].throughput
    rows = [f"| {'wide MLP' if label.startswith('wide') else 'MLP'} | "
            f"{label.removeprefix('wide MLP, ')} | {c} | {fmt(r.p50)} | {fmt(r.pct(0.9))} | "
            f"{fmt(r.pct(0.99))} | {r.throughput:.1f} | {len(r.latencies)} |"
            for (label, c), r in sorted(results.items(),
                                        key=lambda kv: (kv[0][0].startswith("wide"), kv[0][1],
                                                        kv[0][0]))]
    command = "python benchmarks/core_bench.py --batching" + (" --quick" if quick else "")
    return "\n".join([
        BATCHING_START, "## Dynamic batching: the MLP with and without", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `{command}` on "
        f"{platform.node()} ({os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}), one `mlos-core serve` process serving the same MLP "
        "file twice: `mlp` (no config) and `mlp_batched` (config.pbtxt: "
        f"`max_batch_size: 32`, `dynamic_batching {{ max_queue_delay_microseconds: "
        f"{delay_us} }}`). tritonclient.http, binary data, batch 1 per request, clients as "
        f"threads of the benchmark process, both paths in {blocks} alternating blocks per "
        f"concurrency. 1-minute load average {load_before[0]:.2f} "
        f"before, {load_after[0]:.2f} after: on a loaded 2-core host the clients, the "
        "server and other work share the cores, so compare the two rows of one "
        "concurrency, not absolute figures.", "",
        "| Target | Measured | Met |", "|---|---|---|",
        f"| c=32: throughput with batching at least 3x without | {batched32.throughput:.0f}/s "
        f"vs {plain32.throughput:.0f}/s ({speedup:.2f}x) | {'yes' if speedup >= 3 else 'no'} |",
        f"| c=1: p50 with batching at most 1.2x without | {fmt(batched1.p50)} vs "
        f"{fmt(plain1.p50)} ({slowdown:.2f}x) | {'yes' if slowdown <= 1.2 else 'no'} |", "",
        "In-process ONNX Runtime in the same run (one execution, p50): the MLP "
        f"{fmt(compute['mlp'][0])} for 1 row, {fmt(compute['mlp'][1])} for 32; the wide "
        f"MLP (64->1024->1024->10) {fmt(compute['wide'][0])} for 1 row, "
        f"{fmt(compute['wide'][1])} for 32. The MLP's compute is a small part of a "
        f"request's cost over HTTP (p50 {fmt(plain1.p50)} at c=1 here), so merging its "
        "executions saves little of it: batching cannot make the transport cheaper. For "
        f"the wide MLP, where compute matters, throughput with batching at c=32 was "
        f"{wide_speedup:.2f}x that without. Requests per model execution with batching at "
        "c=32: " + ", ".join(f"{model} {n:.1f}" for model, n in per_batch.items())
        + " (of 32 at most): the load generator's threads share this process's GIL "
        "and the host's cores with the server, so requests reach the queue a few at a "
        "time, not 32 together.", "",
        "| model | path | concurrency | p50 | p90 | p99 | requests/s | n |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        "Server counters at the end (executions of the batched model, the requests and "
        "rows they ran):", "", "```", *metrics, "```", BATCHING_END, ""])


