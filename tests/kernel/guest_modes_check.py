# SPDX-License-Identifier: Apache-2.0
"""Runs inside the QEMU guest (host root over 9p, mlos_ml loaded in one mode): starts a
real `mlos-core serve`, checks /health, inference through pool buffers (binary request
bodies read into the mlos-ml pool, outputs written into it), the module's view
of the registered threads, GPU leases, an mlos-ml shared-memory region and a per-request
fallback, stops the service, and prints one "MLOS-MODES-JSON <mode> {...}" line for
tests/kernel/test_modes_guest.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from guest_service import SERVE, emit, module_stats, stop_server

MODELS = Path("/tmp/mlos-models")
PORT = 18080
URL = f"127.0.0.1:{PORT}"
POOL_MB = 16
SMALL = 1 << 20  # float32 elements: a 4 MiB output, pooled
LARGE = 8 << 20  # 32 MiB: larger than the 16 MiB pool, falls back per request


def make_models() -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def double(path: Path) -> None:
        two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
        graph = helper.make_graph(
            [helper.make_node("Mul", ["x", "two"], ["y"])], "double",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])], [two])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        path.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path / "model.onnx"))

    double(MODELS / "double" / "1")
    double(MODELS / "gpudouble" / "1")
    (MODELS / "gpudouble" / "config.json").write_text(json.dumps({"gpu_memory_mb": 8}))


def get(path: str) -> str:
    with urllib.request.urlopen(f"http://{URL}{path}", timeout=30) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else -1.0



def infer(client: Any, model: str, n: int) -> bool:
    import tritonclient.http as httpclient

    x = np.arange(n, dtype=np.float32)
    inp = httpclient.InferInput("x", [n], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    out = httpclient.InferRequestedOutput("y", binary_data=True)
    y = client.infer(model, [inp], outputs=[out]).as_numpy("y")
    return y is not None and bool(np.array_equal(y, 2 * x))


def shm_mlos_ml(client: Any) -> dict[str, Any]:
    """Inputs and outputs in the client's own mlos-ml buffers (registered by pid:fd)."""
    import tritonclient.http as httpclient

    from mlos_core.kernel import mlos_ml

    n = SMALL
    with mlos_ml.Device.open() as dev:
        pool = dev.create_pool(2 * n * 4)
        bin_, bout = pool.alloc(n * 4), pool.alloc(n * 4)
        try:
            x, y = bin_.array(np.float32, (n,)), bout.array(np.float32, (n,))
            x[:] = np.arange(n, dtype=np.float32)
            y[:] = 0
            pid = os.getpid()
            client.register_system_shared_memory("in", f"mlos-ml:{pid}:{bin_.fd}", n * 4)
            client.register_system_shared_memory("out", f"mlos-ml:{pid}:{bout.fd}", n * 4)
            inp = httpclient.InferInput("x", [n], "FP32")
            inp.set_shared_memory("in", n * 4)
            out = httpclient.InferRequestedOutput("y")
            out.set_shared_memory("out", n * 4)
            client.infer("double", [inp], outputs=[out])
            ok = bool(np.array_equal(y, 2 * x))
            status = client.get_system_shared_memory_status()
            del x, y
        finally:
            client.unregister_system_shared_memory()
            bin_.close()
            bout.close()
    return {"ok": ok, "regions": sorted(r["key"].split(":")[0] for r in status)}


def main() -> int:
    mode = sys.argv[1]
    result: dict[str, Any] = {"mode": mode}
    if not MODELS.exists():
        make_models()
    env = {**os.environ, "MLOS_HOST": "127.0.0.1", "MLOS_REST_PORT": str(PORT),
           "MLOS_GRPC_ENABLED": "false", "MLOS_MODEL_REPOSITORY": str(MODELS),
           "MLOS_TENSOR_POOL_MB": str(POOL_MB), "MLOS_RESERVED_CPUS": "1",
           "MLOS_INFERENCE_THREADS": "2", "MLOS_LOG_LEVEL": "info"}
    start = time.monotonic()
    log = open(f"/tmp/serve-{mode}.log", "w")  # noqa: SIM115 (lives as long as the server)
    server = subprocess.Popen(SERVE, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        health: dict[str, Any] = {}
        while time.monotonic() - start < 240 and server.poll() is None:
            try:
                health = json.loads(get("/health"))
                break
            except OSError:
                time.sleep(0.5)
        result["startup_s"] = round(time.monotonic() - start, 1)
        result["health"] = health
        if not health:
            raise RuntimeError("service did not answer /health")
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(URL, network_timeout=120)
        result["infer_ok"] = all(infer(client, "double", SMALL) for _ in range(4))
        result["gpu_model_ok"] = infer(client, "gpudouble", 1024)
        result["module_stats_serving"] = module_stats()
        if health.get("features", {}).get("memory_manager", {}).get("in_use"):
            result["fallback_infer_ok"] = infer(client, "double", LARGE)
            result["shm"] = shm_mlos_ml(client)
        text = get("/metrics")
        result["metrics"] = {name: metric(text, name) for name in (
            "mlos_pool_acquired_total", "mlos_pool_reused_total", "mlos_pool_bytes_total",
            "mlos_pool_failures_total", 'mlos_kernel_fallbacks_total{what="pool"}',
            'mlos_sched_threads{class="latency"}', 'mlos_sched_threads{class="throughput"}',
            "mlos_gpu_leases", "mlos_gpu_leased_bytes", "mlos_module_buffers",
            "mlos_pool_pool_peak_used", *(f'mlos_request_buffers_{key}{{pool="mlos_ml"}}'
                                          for key in ("acquired_total", "reused_total",
                                                      "allocated_total", "fallbacks_total",
                                                      "bytes_total")))}
        result["health_after"] = json.loads(get("/health"))
    except Exception as exc:  # reported to the host test, which shows the server log
        import traceback

        message = getattr(exc, "message", None)
        result["error"] = f"{exc!r} {message() if callable(message) else ''}"
        result["traceback"] = traceback.format_exc()[-1500:]
    finally:
        stop_server(server, log)
    result["module_stats_after"] = module_stats()
    result["serve_log"] = Path(f"/tmp/serve-{mode}.log").read_text()[-3000:]
    return emit(mode, result)


if __name__ == "__main__":
    raise SystemExit(main())
