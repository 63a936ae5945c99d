# SPDX-License-Identifier: Apache-2.0
"""Runs inside the QEMU guest (host root over 9p, mlos_ml loaded in scheduler or full
mode): starts a real `mlos-core serve` with an ONNX model that has two intra-op threads
(and, with `mlos.llama=1` on the kernel command line, a tiny llama.cpp model decoding with
two threads), then reads from /proc which threads the kernel runs at SCHED_FIFO on the
reserved CPU, before and after the models unload, and what /metrics and /health say
meanwhile. Prints one "MLOS-MODES-JSON <mode> {...}" line for
tests/kernel/test_threads_guest.py.

llama.cpp is off by default: the llama-cpp-python wheel that setup builds is compiled for
the build machine's CPU (AVX-512 here), and QEMU 7.2's TCG emulates no AVX-512, so the
service dies of SIGILL when it loads the model in the guest."""

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

REPO = Path(__file__).resolve().parents[2]
MODELS = Path(os.environ.get("MLOS_THREADS_MODELS", "/tmp/mlos-thread-models"))
PORT, GRPC_PORT = 18080, 18081
URL = f"127.0.0.1:{PORT}"
RESERVED = "1"

# /proc must be procfs here (mlos_guest.HOST_ROOT_VIRTFS's multidevs=remap sees to it).
LLAMA = "mlos.llama=1" in Path("/proc/cmdline").read_text().split()


def make_models() -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sys.path.insert(0, str(REPO / "tests" / "unit"))
    from llm_support import write_tiny_gguf

    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (MODELS / "wide" / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(MODELS / "wide" / "1" / "model.onnx"))
    (MODELS / "wide" / "config.json").write_text(json.dumps({"intra_op_threads": 2}))
    if not LLAMA:
        return
    (MODELS / "tiny" / "1").mkdir(parents=True, exist_ok=True)
    write_tiny_gguf(MODELS / "tiny" / "1" / "model.gguf", context_length=128)
    (MODELS / "tiny" / "config.json").write_text(json.dumps(
        {"threads": 2, "context_size": 128, "max_tokens": 4}))


def http(path: str, body: dict[str, Any] | None = None) -> str:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{URL}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return str(resp.read().decode())


def metrics() -> dict[str, float]:
    out = {}
    for line in http("/metrics").splitlines():
        if line.startswith("mlos_sched") or line.startswith("mlos_module_sched"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def scheduler() -> dict[str, Any]:
    feature: dict[str, Any] = json.loads(http("/health"))["features"]["scheduler"]
    return feature


def threads(pid: int) -> list[dict[str, Any]]:
    """Every thread of the service: name, policy (0 other, 1 FIFO), rt priority, CPUs."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        cpus = re.search(r"^Cpus_allowed_list:\s*(\S+)", status, re.M)
        out.append({"tid": int(task.name), "name": (task / "comm").read_text().strip(),
                    "policy": int(fields[38]), "rt_priority": int(fields[37]),
                    "cpus": cpus.group(1) if cpus else "?"})
    return out



def infer_double(n: int = 4096) -> bool:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = np.arange(n, dtype=np.float32)
    inp = httpclient.InferInput("x", [n], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    y = httpclient.InferenceServerClient(URL, network_timeout=120).infer(
        "wide", [inp]).as_numpy("y")
    ginp = grpcclient.InferInput("x", [n], "FP32")
    ginp.set_data_from_numpy(x)
    gy = grpcclient.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}").infer(
        "wide", [ginp]).as_numpy("y")
    return bool(np.array_equal(y, 2 * x) and np.array_equal(gy, 2 * x))


def infer_text() -> str:
    """The KServe tensor route: decoded on one of the data plane's inference threads."""
    body = {"inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1],
                        "data": ["the"]}]}
    out = json.loads(http("/v2/models/tiny/infer", body))
    return str(out["outputs"][0]["data"][0])


def stream_and_look(pid: int) -> dict[str, Any]:
    """An OpenAI streamed completion runs on its own thread: look at the threads while
    it streams (after the first chunk), then after it ended."""
    body = {"model": "tiny", "prompt": "the", "max_tokens": 120, "temperature": 0,
            "stream": True}
    req = urllib.request.Request(f"http://{URL}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    during: list[dict[str, Any]] = []
    chunks = 0
    with urllib.request.urlopen(req, timeout=300) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunks += 1
            if chunks == 2:  # adopted after the first chunk went out
                during = [t for t in threads(pid) if t["name"].startswith("llm-")]
                during_metrics = metrics()
    time.sleep(0.5)
    after = [t for t in threads(pid) if t["name"].startswith("llm-")]
    return {"chunks": chunks, "during": during, "after": after,
            "during_latency": during_metrics.get('mlos_sched_threads{class="latency"}')
            if during else None}


def main() -> int:
    mode = sys.argv[1]
    result: dict[str, Any] = {"mode": mode}
    if not MODELS.exists():
        make_models()
    env = {**os.environ, "MLOS_HOST": "127.0.0.1", "MLOS_REST_PORT": str(PORT),
           "MLOS_GRPC_ENABLED": "true", "MLOS_GRPC_PORT": str(GRPC_PORT),
           "MLOS_MODEL_REPOSITORY": str(MODELS), "MLOS_TENSOR_POOL_MB": "16",
           "MLOS_RESERVED_CPUS": RESERVED, "MLOS_INFERENCE_THREADS": "2",
           "MLOS_LOG_LEVEL": "info"}
    start = time.monotonic()
    log_path = Path(f"/tmp/serve-threads-{mode}.log")
    log = log_path.open("w")
    server = subprocess.Popen(SERVE, env=env, stdout=log, stderr=subprocess.STDOUT)
    pid = server.pid
    try:
        while time.monotonic() - start < 300 and server.poll() is None:
            try:
                result["health_start"] = scheduler()
                break
            except OSError:
                time.sleep(0.5)
        result["startup_s"] = round(time.monotonic() - start, 1)
        if "health_start" not in result:
            raise RuntimeError("service did not answer /health")
        result["threads_loaded"] = threads(pid)
        result["infer_ok"] = infer_double()
        result["llama"] = LLAMA
        if LLAMA:
            result["text"] = infer_text()
        result["threads_served"] = threads(pid)
        result["metrics_served"] = metrics()
        result["health_served"] = scheduler()
        result["module_served"] = module_stats()
        if LLAMA:
            result["stream"] = stream_and_look(pid)
            result["metrics_streamed"] = metrics()
        for model in ("wide", "tiny") if LLAMA else ("wide",):
            http(f"/v2/repository/models/{model}/unload", {})
        result["threads_unloaded"] = threads(pid)
        result["metrics_unloaded"] = metrics()
        result["health_unloaded"] = scheduler()
        result["module_unloaded"] = module_stats()
        result["metrics_again"] = metrics()  # a second scrape: the same, nothing logged
    except Exception as exc:  # reported to the host test, which shows the server log
        import traceback

        result["error"] = repr(exc)
        result["traceback"] = traceback.format_exc()[-1500:]
    finally:
        stop_server(server, log)
    result["returncode"] = server.returncode  # -4: SIGILL
    result["module_after"] = module_stats()
    result["serve_log"] = log_path.read_text()[-4000:]
    return emit(mode, result)


if __name__ == "__main__":
    raise SystemExit(main())
