# SPDX-License-Identifier: Apache-2.0
"""MLOS Core benchmarks, side by side in one run, written to docs/benchmarks.md.

    .venv/bin/python benchmarks/core_bench.py [--quick] [--out docs/benchmarks.md]
    .venv/bin/python benchmarks/core_bench.py --bodies [--quick]   # request bodies only
    .venv/bin/python benchmarks/core_bench.py --batching [--quick] # dynamic batching only

Measures, for a 64->256->10 MLP and a 16 MiB tensor (y = 2x): in-process ONNX Runtime;
MLOS Core over REST JSON, REST binary, gRPC and system shared memory (driven by the real
tritonclient at concurrency 1 and 8); and baselines from the same run: a hand-written
FastAPI endpoint around ONNX Runtime, a FastAPI no-op route and a grpcio no-op method.
Servers run in their own processes; the clients share this one.

`--bodies` compares how binary REST request bodies (4 and 16 MiB) are read: into a pooled
buffer (the default) against a per-request allocation (the same service with
tensor_pool_mb=0), in alternating blocks, with the server's page faults per request; it
rewrites only its own section of the output file.

`--grpc` compares the MLP over gRPC (tritonclient.grpc, binary tensors) with the grpcio
no-op floor and binary REST at concurrency 1 and 8, all paths in interleaved blocks; with
`--before DIR` (an exported older tree of this repository) that tree's server runs beside
this one, so a change is measured against what it replaces in the same run. It rewrites
only its own section.

`--batching` (also part of the full run) compares the MLP at concurrency 1, 8 and 32
without and with dynamic batching: one service, two models from the same file, one of
them with a Triton config.pbtxt enabling dynamic_batching; binary REST through
tritonclient. It too rewrites only its own section.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from geventhttpclient import HTTPClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "unit"))
from core_models import make_double, make_mlp, make_wide_mlp  # noqa: E402

BIG_N = 4 * 1024 * 1024  # 16 MiB of FP32


@dataclass
class Result:
    name: str
    model: str
    concurrency: int
    latencies: list[float]
    wall: float

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies)

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def measure(name: str, model: str, concurrency: int, total: int,
            factory: Callable[[], Callable[[], None]], warmup: int = 5) -> Result:
    """`factory` makes one client per thread; each call of its result is one request."""
    per_thread = max(1, total // concurrency)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            call = factory()
            for _ in range(warmup):
                call()
        except BaseException as exc:
            errors.append(exc)
            barrier.wait()
            return
        barrier.wait()
        out = latencies[index]
        for _ in range(per_thread):
            t0 = time.perf_counter()
            call()
            out.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{name}: {errors[0]}")
    flat = [x for part in latencies for x in part]
    result = Result(name, model, concurrency, flat, wall)
    print(f"  {name:44s} {model:6s} c={concurrency}  p50 {fmt(result.p50):>9s}  "
          f"p99 {fmt(result.pct(0.99)):>9s}  {result.throughput:8.1f}/s", flush=True)
    return result


def fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.load_before = os.getloadavg()[0]
        self.tmp = Path(tempfile.mkdtemp(prefix="mlos-bench-"))
        self.repo = self.tmp / "models"
        self.mlp_path = make_mlp(self.repo / "mlp" / "1" / "model.onnx")
        self.double_path = make_double(self.repo / "double" / "1" / "model.onnx")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.results: list[Result] = []
        self.region_ids = itertools.count()
        rng = np.random.default_rng(0)
        self.mlp_x = rng.standard_normal((1, 64), dtype=np.float32)
        self.big_x = rng.standard_normal(BIG_N, dtype=np.float32)

    def n(self, full: int) -> int:
        return max(8, full // 10) if self.quick else full

    def start_servers(self) -> None:
        self.rest, self.grpc = free_port(), free_port()
        self.base_rest, self.base_grpc = free_port(), free_port()
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.procs.append(subprocess.Popen([
            sys.executable, "-m", "mlos_core", "serve", "--rest-port", str(self.rest),
            "--grpc-port", str(self.grpc), "--model-repository", str(self.repo),
            "--sysfs-root", str(self.tmp), "--log-level", "warning",
        ], env=env))
        self.procs.append(subprocess.Popen([
            sys.executable, str(ROOT / "benchmarks" / "core_baseline_app.py"),
            "--port", str(self.base_rest), "--grpc-port", str(self.base_grpc),
            "--mlp", str(self.mlp_path), "--double", str(self.double_path),
        ], env=env))
        wait_http(f"http://127.0.0.1:{self.rest}/v2/health/ready")
        wait_http(f"http://127.0.0.1:{self.base_rest}/noop")

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=60)

    # ---- clients -------------------------------------------------------------------------
    def inprocess(self, model: str) -> Callable[[], Callable[[], None]]:
        path, x = (self.mlp_path, self.mlp_x) if model == "mlp" else (self.double_path,
                                                                       self.big_x)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def factory() -> Callable[[], None]:
            return lambda: session.run(None, {name: x})

        return factory

    def triton(self, model: str, protocol: str, binary: bool) -> Callable[[], Callable[[], None]]:
        x = self.mlp_x if model == "mlp" else self.big_x
        in_name, out_name = ("input", "output") if model == "mlp" else ("x", "y")
        mod: Any = grpcclient if protocol == "grpc" else httpclient
        url = f"127.0.0.1:{self.grpc if protocol == 'grpc' else self.rest}"
        expected = 2 * x if model == "double" else None

        def factory() -> Callable[[], None]:
            client = mod.InferenceServerClient(url)
            inp = mod.InferInput(in_name, list(x.shape), "FP32")
            if protocol == "grpc":
                inp.set_data_from_numpy(x)
                outputs = [mod.InferRequestedOutput(out_name)]
            else:
                inp.set_data_from_numpy(x, binary_data=binary)
                outputs = [mod.InferRequestedOutput(out_name, binary_data=binary)]

            def call() -> None:
                y = client.infer(model, [inp], outputs=outputs).as_numpy(out_name)
                if expected is not None and y.shape != expected.shape:
                    raise RuntimeError("wrong result shape")

            return call

        return factory

    def triton_shm(self, model: str, protocol: str) -> Callable[[], Callable[[], None]]:
        x = self.mlp_x if model == "mlp" else self.big_x
        in_name, out_name = ("input", "output") if model == "mlp" else ("x", "y")
        out_shape = [1, 10] if model == "mlp" else [BIG_N]
        in_size, out_size = x.nbytes, int(np.prod(out_shape)) * 4
        mod: Any = grpcclient if protocol == "grpc" else httpclient
        url = f"127.0.0.1:{self.grpc if protocol == 'grpc' else self.rest}"

        def factory() -> Callable[[], None]:
            tag = f"{os.getpid()}_{next(self.region_ids)}_{model}_{protocol}"
            client = mod.InferenceServerClient(url)
            h_in = shm.create_shared_memory_region(f"in_{tag}", f"/bin_{tag}", in_size)
            h_out = shm.create_shared_memory_region(f"out_{tag}", f"/bout_{tag}", out_size)
            self.shm_handles += [h_in, h_out]
            shm.set_shared_memory_region(h_in, [x])  # the producer writes it once
            client.register_system_shared_memory(f"in_{tag}", f"/bin_{tag}", in_size)
            client.register_system_shared_memory(f"out_{tag}", f"/bout_{tag}", out_size)
            inp = mod.InferInput(in_name, list(x.shape), "FP32")
            inp.set_shared_memory(f"in_{tag}", in_size)
            out = mod.InferRequestedOutput(out_name)
            out.set_shared_memory(f"out_{tag}", out_size)

            def call() -> None:
                client.infer(model, [inp], outputs=[out])
                shm.get_contents_as_numpy(h_out, np.float32, out_shape)

            return call

        return factory

    def raw_json(self, port: int, path: str, body: bytes) -> Callable[[], Callable[[], None]]:
        def factory() -> Callable[[], None]:
            client = HTTPClient("127.0.0.1", port, concurrency=1, network_timeout=600)
            headers = {"Content-Type": "application/json"}

            def call() -> None:
                response = client.post(path, body=body, headers=headers)
                data = response.read()
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: HTTP {response.status_code} {data[:200]!r}")

            return call

        return factory

    def grpc_noop(self) -> Callable[[], Callable[[], None]]:
        def factory() -> Callable[[], None]:
            channel = grpc.insecure_channel(f"127.0.0.1:{self.base_grpc}")
            stub = channel.unary_unary("/bench.Noop/Call")
            payload = b"x" * 256
            return lambda: stub(payload)

        return factory

    # ---- the run -------------------------------------------------------------------------
    def run(self) -> None:
        import json

        self.shm_handles: list[Any] = []
        r = self.results.append
        mlp_json = json.dumps({"shape": [1, 64], "data": self.mlp_x.ravel().tolist()}).encode()
        kserve_json = json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                              "shape": [1, 64],
                                              "data": self.mlp_x.ravel().tolist()}]}).encode()
        print("MLP 64->256->10, batch 1")
        r(measure("in-process ONNX Runtime", "mlp", 1, self.n(5000), self.inprocess("mlp")))
        for c in (1, 8):
            total = self.n(2000 if c == 1 else 4000)
            r(measure("FastAPI no-op route (baseline)", "mlp", c, total,
                      self.raw_json(self.base_rest, "/noop", b"{}")))
            r(measure("grpcio no-op unary (baseline)", "mlp", c, total, self.grpc_noop()))
            r(measure("hand-written FastAPI + ORT, JSON (baseline)", "mlp", c, total,
                      self.raw_json(self.base_rest, "/predict/mlp", mlp_json)))
            r(measure("MLOS REST JSON (raw HTTP client)", "mlp", c, total,
                      self.raw_json(self.rest, "/v2/models/mlp/infer", kserve_json)))
            r(measure("MLOS REST JSON (tritonclient)", "mlp", c, total,
                      self.triton("mlp", "http", False)))
            r(measure("MLOS REST binary (tritonclient)", "mlp", c, total,
                      self.triton("mlp", "http", True)))
            r(measure("MLOS gRPC (tritonclient)", "mlp", c, total,
                      self.triton("mlp", "grpc", True)))
            r(measure("MLOS shared memory, REST (tritonclient)", "mlp", c, total,
                      self.triton_shm("mlp", "http")))
            r(measure("MLOS shared memory, gRPC (tritonclient)", "mlp", c, total,
                      self.triton_shm("mlp", "grpc")))
        print("16 MiB tensor, y = 2x")
        big_json = json.dumps({"shape": [BIG_N], "data": self.big_x.tolist()}).encode()
        r(measure("in-process ONNX Runtime", "16MiB", 1, self.n(200), self.inprocess("big")))
        json_runs = 2 if self.quick else 3
        r(measure("hand-written FastAPI + ORT, JSON (baseline)", "16MiB", 1, json_runs,
                  self.raw_json(self.base_rest, "/predict/double", big_json), warmup=1))
        r(measure("MLOS REST JSON (tritonclient)", "16MiB", 1, json_runs,
                  self.triton("double", "http", False), warmup=1))
        for c in (1, 8):
            total = self.n(100 if c == 1 else 160)
            r(measure("MLOS REST binary (tritonclient)", "16MiB", c, total,
                      self.triton("double", "http", True), warmup=2))
            r(measure("MLOS gRPC (tritonclient)", "16MiB", c, total,
                      self.triton("double", "grpc", True), warmup=2))
            r(measure("MLOS shared memory, REST (tritonclient)", "16MiB", c, total,
                      self.triton_shm("double", "http"), warmup=2))
            r(measure("MLOS shared memory, gRPC (tritonclient)", "16MiB", c, total,
                      self.triton_shm("double", "grpc"), warmup=2))
        for handle in self.shm_handles:
            shm.destroy_shared_memory_region(handle)

    def find(self, name: str, model: str, c: int = 1) -> Result:
        for result in self.results:
            if result.name == name and result.model == model and result.concurrency == c:
                return result
        raise KeyError(name)

    def report(self, command: str) -> str:
        lines = [
            "# MLOS Core benchmarks",
            "",
            "Written by `benchmarks/core_bench.py`; every figure below comes from one run, "
            "baselines included. Regenerate with:",
            "",
            f"    {command}",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, onnxruntime {ort.__version__}. Run at "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
            "",
            "**Noise:** client and servers compete for the same cores (1-minute load "
            f"average before the run {self.load_before:.2f}, after {os.getloadavg()[0]:.2f}), "
            "so absolute figures are noisy; compare ratios within the table. Clients are the "
            "real tritonclient (HTTP via geventhttpclient, gRPC) in this process; baselines "
            "use a raw keep-alive geventhttpclient (tritonclient's own transport) or a raw "
            "grpcio stub. Shared-memory runs write the input region once (as a producer "
            "would) and read the output region after each request.",
            "",
            "## Targets",
            "",
            "| Target | Measured | Met |",
            "|---|---|---|",
        ]
        hand = self.find("hand-written FastAPI + ORT, JSON (baseline)", "mlp")
        rest_bin = self.find("MLOS REST binary (tritonclient)", "mlp")
        rest_json = self.find("MLOS REST JSON (tritonclient)", "mlp")
        rest_raw = self.find("MLOS REST JSON (raw HTTP client)", "mlp")
        grpc_noop = self.find("grpcio no-op unary (baseline)", "mlp")
        grpc_mlp = self.find("MLOS gRPC (tritonclient)", "mlp")
        inproc_big = self.find("in-process ONNX Runtime", "16MiB")
        shm_big = min(self.find("MLOS shared memory, REST (tritonclient)", "16MiB").p50,
                      self.find("MLOS shared memory, gRPC (tritonclient)", "16MiB").p50)
        bin_big = self.find("MLOS REST binary (tritonclient)", "16MiB")
        json_big = self.find("MLOS REST JSON (tritonclient)", "16MiB")

        def row(target: str, measured: str, met: bool) -> None:
            lines.append(f"| {target} | {measured} | {'yes' if met else 'no'} |")

        row("MLP REST p50 no slower than the hand-written FastAPI endpoint (same JSON, same "
            "raw keep-alive client)",
            f"MLOS {fmt(rest_raw.p50)} vs hand-written {fmt(hand.p50)} "
            f"({rest_raw.p50 / hand.p50:.2f}x). Through tritonclient, which also encodes and "
            f"decodes on the client: binary {fmt(rest_bin.p50)}, JSON {fmt(rest_json.p50)}",
            rest_raw.p50 <= hand.p50)
        row("MLP gRPC p50 at c=1 at most 1.5x the no-op floor",
            f"{fmt(grpc_mlp.p50)} vs grpcio no-op {fmt(grpc_noop.p50)} "
            f"({grpc_mlp.p50 / grpc_noop.p50:.2f}x)", grpc_mlp.p50 <= 1.5 * grpc_noop.p50)
        grpc_noop8 = self.find("grpcio no-op unary (baseline)", "mlp", 8)
        grpc_mlp8 = self.find("MLOS gRPC (tritonclient)", "mlp", 8)
        share = grpc_mlp8.throughput / grpc_noop8.throughput
        row("MLP gRPC throughput at c=8 at least 70% of the no-op floor's",
            f"{grpc_mlp8.throughput:.0f}/s vs grpcio no-op {grpc_noop8.throughput:.0f}/s "
            f"({share:.0%}); interleaved figures: `--grpc`, below", share >= 0.7)
        row("16 MiB via shared memory at most 3x in-process",
            f"{fmt(shm_big)} vs in-process {fmt(inproc_big.p50)} "
            f"({shm_big / inproc_big.p50:.2f}x)", shm_big <= 3 * inproc_big.p50)
        row("16 MiB via binary REST at least 100x faster than via JSON",
            f"{fmt(bin_big.p50)} vs JSON {fmt(json_big.p50)} "
            f"({json_big.p50 / bin_big.p50:.0f}x)", json_big.p50 >= 100 * bin_big.p50)
        lines += ["", "## All measurements", "",
                  "| Path | Model | Concurrency | p50 | p90 | p99 | Requests/s | n |",
                  "|---|---|---|---|---|---|---|---|"]
        for res in self.results:
            lines.append(
                f"| {res.name} | {res.model} | {res.concurrency} | {fmt(res.p50)} | "
                f"{fmt(res.pct(0.9))} | {fmt(res.pct(0.99))} | {res.throughput:.1f} | "
                f"{len(res.latencies)} |"
            )
        return "\n".join(lines) + "\n"


GRPC_START, GRPC_END = "<!-- grpc:start -->", "<!-- grpc:end -->"


def _mlos_server(repo: Path, tmp: Path, rest: int, grpc_port: int,
                 tree: Path | None = None, transport_only: bool = False
                 ) -> subprocess.Popen[bytes]:
    """`mlos-core serve` from this tree, or from `tree` (run there, so its mlos_core is
    the one imported); `transport_only`: core_grpc_transport.py's cached ModelInfer."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    entry = [str(ROOT / "benchmarks" / "core_grpc_transport.py")] if transport_only \
        else ["-m", "mlos_core"]
    return subprocess.Popen([
        sys.executable, *entry, "serve", "--rest-port", str(rest),
        "--grpc-port", str(grpc_port), "--model-repository", str(repo),
        "--sysfs-root", str(tmp), "--log-level", "warning"],
        env=env, cwd=str(tree) if tree is not None else None)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def bench_grpc(quick: bool, before: Path | None) -> str:
    """The MLP over gRPC against the grpcio no-op floor (and binary REST, and an older
    tree's server when given), interleaved blocks, one run."""
    bench = Bench(quick)
    tmp = bench.tmp
    procs: list[subprocess.Popen[bytes]] = []
    bench.rest, bench.grpc = free_port(), free_port()
    bench.base_rest, bench.base_grpc = free_port(), free_port()
    procs.append(_mlos_server(bench.repo, tmp, bench.rest, bench.grpc))
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
    cached_rest, bench.grpc = free_port(), free_port()
    procs.append(_mlos_server(bench.repo, tmp, cached_rest, bench.grpc, transport_only=True))
    paths.insert(2, ("MLOS gRPC transport only (cached answer)",
                     bench.triton("mlp", "grpc", True), procs[-1].pid))
    # The 16 MiB tensor (y = 2x), c=1: where copies of raw_output_contents show.
    cached_grpc, bench.grpc = bench.grpc, saved
    big_paths = [("MLOS gRPC (tritonclient)", bench.triton("double", "grpc", True),
                  procs[0].pid)]
    bench.grpc = cached_grpc
    if before is not None:
        old_rest, bench.grpc = free_port(), free_port()
        procs.append(_mlos_server(bench.repo, tmp, old_rest, bench.grpc, before))
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
        wait_http(f"http://127.0.0.1:{cached_rest}/v2/health/ready")
        if before is not None:
            wait_http(f"http://127.0.0.1:{old_rest}/v2/health/ready")
        for block in range(blocks):
            for c in (1, 8):
                total = (300 if quick else 1000) * (1 if c == 1 else 2)
                order = paths if block % 2 == 0 else list(reversed(paths))
                for label, factory, pid in order:
                    server0, client0 = _cpu_seconds(pid), time.process_time()
                    part = measure(label, "mlp", c, total, factory)
                    spent = cpu.setdefault((label, c), [0.0, 0.0])
                    spent[0] += _cpu_seconds(pid) - server0
                    spent[1] += time.process_time() - client0
                    key = (label, c)
                    if key in results:
                        results[key].latencies += part.latencies
                        results[key].wall += part.wall
                    else:
                        results[key] = part
            order = big_paths if block % 2 == 0 else list(reversed(big_paths))
            for label, factory, pid in order:
                server0 = _cpu_seconds(pid)
                part = measure(label, "16MiB", 1, 10 if quick else 20, factory, warmup=2)
                spent = big_cpu.setdefault(label, [0.0])
                spent[0] += _cpu_seconds(pid) - server0
                if label in big:
                    big[label].latencies += part.latencies
                    big[label].wall += part.wall
                else:
                    big[label] = part
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
        "throughput at c=8 is bounded by their sum. The transport-only row is the same "
        "service whose ModelInfer returns its first answer again "
        "(benchmarks/core_grpc_transport.py): grpc.aio, the key check and the messages, "
        "without decoding, the data plane or the model.", "",
        GRPC_END, ""])


BODIES_START, BODIES_END = "<!-- bodies:start -->", "<!-- bodies:end -->"
BODY_SIZES = (4 << 20, 16 << 20)


def _minor_faults(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt: field 10 of stat(5), counted after the ")"


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
                order = list(servers) if block % 2 == 0 else list(reversed(servers))
                for path in order:
                    client, pid = clients[path], servers[path][0].pid
                    for _ in range(3):  # warm: the pool's first buffer, caches
                        client.infer("double", [inp], outputs=out)
                    before = _minor_faults(pid)
                    for _ in range(per_block):
                        t0 = time.perf_counter()
                        y = client.infer("double", [inp], outputs=out).as_numpy("y")
                        lat[path].append(time.perf_counter() - t0)
                        if y is None or y.shape != x.shape:
                            raise RuntimeError("wrong result shape")
                    faults[path] += _minor_faults(pid) - before
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
            for label, model in order if block % 2 == 0 else reversed(order):
                part = measure(f"MLOS REST binary, {label}", model, c, total // blocks,
                               client(model))
                key = (prefix + label, c)
                if key in results:
                    results[key].latencies += part.latencies
                    results[key].wall += part.wall
                else:
                    results[key] = part

    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready")
        for c in (1, 8, 32):
            pair("", ("mlp", "mlp_batched"), c, (200 if quick else 2000) * (1 if c == 1 else 2))
        for c in (1, 32):
            pair("wide MLP, ", ("wide", "wide_batched"), c,
                 (64 if quick else 320) * (1 if c == 1 else 2))
        metrics = [line for line in requests.get(f"http://127.0.0.1:{port}/metrics",
                                                 timeout=10).text.splitlines()
                   if line.startswith("mlos_batch_")]
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
        f"{wide_speedup:.2f}x that without.", "",
        "| model | path | concurrency | p50 | p90 | p99 | requests/s | n |",
        "|---|---|---|---|---|---|---|---|", *rows, "",
        "Server counters at the end (executions of the batched model, the requests and "
        "rows they ran):", "", "```", *metrics, "```", BATCHING_END, ""])


def splice(out: Path, section: str, start_mark: str, end_mark: str) -> None:
    """Writes a section of its own into `out`, keeping everything else."""
    text = out.read_text() if out.exists() else ""
    start, end = text.find(start_mark), text.find(end_mark)
    old = text[start:end + len(end_mark) + 1] if start >= 0 and end > start else ""
    if old:
        out.write_text(text.replace(old, section))
    else:
        out.write_text(text.rstrip("\n") + "\n\n" + section)


def splice_bodies(out: Path, section: str) -> None:
    """Writes the request-body section into `out`, keeping everything else."""
    splice(out, section, BODIES_START, BODIES_END)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="about a tenth of the requests")
    parser.add_argument("--bodies", action="store_true",
                        help="only the request-body comparison (its own section of --out)")
    parser.add_argument("--batching", action="store_true",
                        help="only the dynamic-batching comparison (its own section of --out)")
    parser.add_argument("--grpc", action="store_true",
                        help="only gRPC against its floor (its own section of --out)")
    parser.add_argument("--before", type=Path, default=None,
                        help="with --grpc: an older tree whose server runs beside this one")
    parser.add_argument("--batch-delay-us", type=int, default=0,
                        help="max_queue_delay_microseconds of the batched model (default 0)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if args.bodies:
        splice_bodies(args.out, bench_bodies(args.quick))
        print(f"wrote the request-body section of {args.out}")
        return 0
    if args.grpc:
        splice(args.out, bench_grpc(args.quick, args.before), GRPC_START, GRPC_END)
        print(f"wrote the gRPC section of {args.out}")
        return 0
    if args.batching:
        splice(args.out, bench_batching(args.quick, args.batch_delay_us), BATCHING_START,
               BATCHING_END)
        print(f"wrote the dynamic-batching section of {args.out}")
        return 0
    bench = Bench(args.quick)
    bench.start_servers()
    try:
        bench.run()
    finally:
        bench.stop()
    command = "python benchmarks/core_bench.py" + (" --quick" if args.quick else "")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(bench.report(command))
    for start_mark, end_mark in ((BODIES_START, BODIES_END), (GRPC_START, GRPC_END)):
        start, end = previous.find(start_mark), previous.find(end_mark)
        if start >= 0 and end > start:  # sections with runs of their own are kept
            splice(args.out, previous[start:end + len(end_mark) + 1], start_mark, end_mark)
    # Dynamic batching: measured in this run too (its own server, same clients).
    splice(args.out, bench_batching(args.quick, args.batch_delay_us), BATCHING_START,
           BATCHING_END)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
