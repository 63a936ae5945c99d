# SPDX-License-Identifier: Apache-2.0
"""What the MLOS Core benchmarks share: the clients of every path (Clients), one timed run
of a path (measure), the servers they start, and writing a section of docs/benchmarks.md.
core_bench.py is the full run; core_bench_grpc, _bodies and _batching the focused ones."""

from __future__ import annotations

import itertools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

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
from core_models import make_double, make_mlp, make_wide_mlp  # noqa: E402,F401

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


T = TypeVar("T")


def alternating(paths: Sequence[T], block: int) -> list[T]:
    """`paths` in the order block number `block` runs them: reversed every other block,
    so a drift of the shared host's load hits every path alike."""
    return list(paths) if block % 2 == 0 else list(reversed(paths))


def accumulate(results: dict[Any, Result], key: Any, part: Result) -> None:
    """Adds one block's measurement to the result kept under `key` (interleaved blocks
    of one path are reported as one result)."""
    if key in results:
        results[key].latencies += part.latencies
        results[key].wall += part.wall
    else:
        results[key] = part


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


class Clients:
    """The model files, the servers of the full run and a client factory per path."""

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
        self.shm_handles: list[Any] = []  # system shm regions, unlinked by the run
        rng = np.random.default_rng(0)
        self.mlp_x = rng.standard_normal((1, 64), dtype=np.float32)
        self.big_x = rng.standard_normal(BIG_N, dtype=np.float32)

    def n(self, full: int) -> int:
        return max(8, full // 10) if self.quick else full

    def start_servers(self) -> None:
        self.rest, self.grpc = free_port(), free_port()
        self.base_rest, self.base_grpc = free_port(), free_port()
        env = dict(os.environ, OMP_NUM_THREADS="1")
        # The 16 MiB tensor as JSON is 4 Mi values plus its shape: over the service's
        # default max_json_values (4 Mi, docs/security.md), so this run allows twice that.
        self.procs.append(subprocess.Popen([
            sys.executable, "-m", "mlos_core", "serve", "--rest-port", str(self.rest),
            "--grpc-port", str(self.grpc), "--model-repository", str(self.repo),
            "--sysfs-root", str(self.tmp), "--log-level", "warning",
        ], env=dict(env, MLOS_MAX_JSON_VALUES=str(2 * BIG_N))))
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


def mlos_server(repo: Path, tmp: Path, rest: int, grpc_port: int,
                 tree: Path | None = None, cached: str | None = None
                 ) -> subprocess.Popen[bytes]:
    """`mlos-core serve` from this tree, or from `tree` (run there, so its mlos_core is
    the one imported); `cached` ("answer" or "model"): core_grpc_transport.py's server
    with that part of the work replaced by its first result."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    entry = [str(ROOT / "benchmarks" / "core_grpc_transport.py"), f"--cache={cached}"] \
        if cached else ["-m", "mlos_core"]
    return subprocess.Popen([
        sys.executable, *entry, "serve", "--rest-port", str(rest),
        "--grpc-port", str(grpc_port), "--model-repository", str(repo),
        "--sysfs-root", str(tmp), "--log-level", "warning"],
        env=env, cwd=str(tree) if tree is not None else None)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def minor_faults(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt: field 10 of stat(5), counted after the ")"


def splice(out: Path, section: str, start_mark: str, end_mark: str) -> None:
    """Writes a section of its own into `out`, keeping everything else."""
    text = out.read_text() if out.exists() else ""
    start, end = text.find(start_mark), text.find(end_mark)
    old = text[start:end + len(end_mark) + 1] if start >= 0 and end > start else ""
    if old:
        out.write_text(text.replace(old, section))
    else:
        out.write_text(text.rstrip("\n") + "\n\n" + section)

