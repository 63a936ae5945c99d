# SPDX-License-Identifier: Apache-2.0
"""MLOS Core with and without mlos_ml, measured inside one QEMU guest in one run.

    python benchmarks/modes_bench.py            # on the host: boots the guest, writes docs
    (in the guest, tests/kernel/guest_modes.sh runs this file with the mode as argument)

Two `mlos-core serve` run side by side in the guest (module loaded in full mode): one
with kernel_features="" (userspace paths), one using the module (memory manager +
scheduler). Measured, alternating between them so drift favours neither:

- large tensors (16 and 64 MiB, y = 2x): binary REST (the body is copied; the kernel
  service writes the output into a pooled buffer), Triton shared memory over POSIX shm
  (userspace service) and over the client's own mlos-ml pool buffers (kernel service);
- p50/p99 of a compute-bound model, serial requests, quiet and with busy-loop hogs on
  every CPU (scheduler: the inference threads are SCHED_FIFO on the reserved CPU).

Figures go to docs/kernel-modes.md (between the figures markers) and
docs/kernel-modes-bench.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "kernel-modes.md"
MODELS = Path("/tmp/mlos-bench-models")
PORTS = {"userspace": 18081, "kernel": 18082}
SIZES_MIB = (16, 64)
LARGE_REPS = {16: 12, 64: 6}
BLOCK = 50  # requests per block of the contention test
BLOCKS = 4  # blocks per service and phase
HIDDEN = 384
LAYERS = 8


# ---- in the guest ----------------------------------------------------------------------
def make_models() -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def save(graph: Any, path: Path) -> None:
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        path.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path / "model.onnx"))

    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    save(helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])], [two]),
        MODELS / "double" / "1")
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(LAYERS):
        w = (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"h{i}"])]
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    save(helper.make_graph(
        nodes, "compute", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, HIDDEN])], inits),
        MODELS / "compute" / "1")


def start_services() -> dict[str, subprocess.Popen[bytes]]:
    base = {**os.environ, "MLOS_HOST": "127.0.0.1", "MLOS_GRPC_ENABLED": "false",
            "MLOS_MODEL_REPOSITORY": str(MODELS), "MLOS_INLINE_COMPUTE_US": "0",
            "MLOS_INFERENCE_THREADS": "2", "MLOS_LOG_LEVEL": "warning"}
    extra = {"userspace": {"MLOS_KERNEL_FEATURES": ""},
             "kernel": {"MLOS_KERNEL_FEATURES": "memory,scheduler", "MLOS_TENSOR_POOL_MB": "96",
                        "MLOS_RESERVED_CPUS": "1"}}
    procs = {}
    for name, port in PORTS.items():
        env = {**base, "MLOS_REST_PORT": str(port), **extra[name]}
        log = open(f"/tmp/bench-{name}.log", "wb")  # noqa: SIM115 (lives with the server)
        # The console script of the venv the guest runs (the checkout need not hold one).
        procs[name] = subprocess.Popen([str(Path(sys.executable).with_name("mlos-core")),
                                        "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    return procs


def health(port: int, wait: float = 240) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
                return dict(json.loads(r.read()))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50": round(pct(ms, 50), 3), "p90": round(pct(ms, 90), 3),
            "p99": round(pct(ms, 99), 3), "mean": round(statistics.fmean(ms), 3)}


def large_tensors(clients: dict[str, Any]) -> dict[str, Any]:
    import tritonclient.http as httpclient
    import tritonclient.utils.shared_memory as shm

    from mlos_core.kernel import mlos_ml

    out: dict[str, Any] = {}
    dev = mlos_ml.Device.open()
    for mib in SIZES_MIB:
        n = (mib << 20) // 4
        nbytes = n * 4
        x = np.random.default_rng(mib).standard_normal(n, dtype=np.float32)
        expect = 2 * x
        # POSIX shm regions for the userspace service
        ph_in = shm.create_shared_memory_region(f"in{mib}", f"/bench_in{mib}", nbytes)
        ph_out = shm.create_shared_memory_region(f"out{mib}", f"/bench_out{mib}", nbytes)
        shm.set_shared_memory_region(ph_in, [x])
        clients["userspace"].register_system_shared_memory(f"in{mib}", f"/bench_in{mib}",
                                                           nbytes)
        clients["userspace"].register_system_shared_memory(f"out{mib}", f"/bench_out{mib}",
                                                           nbytes)
        # mlos-ml pool buffers for the kernel service
        pool = dev.create_pool(2 * nbytes)
        b_in, b_out = pool.alloc(nbytes), pool.alloc(nbytes)
        b_in.array(np.float32, (n,))[:] = x
        pid = os.getpid()
        clients["kernel"].register_system_shared_memory(f"in{mib}", f"mlos-ml:{pid}:{b_in.fd}",
                                                        nbytes)
        clients["kernel"].register_system_shared_memory(f"out{mib}",
                                                        f"mlos-ml:{pid}:{b_out.fd}", nbytes)
        times: dict[str, list[float]] = {k: [] for k in (
            "rest_binary/userspace", "rest_binary/kernel", "shm_posix/userspace",
            "shm_mlos_ml/kernel")}
        ok = True
        for _ in range(LARGE_REPS[mib]):
            for svc in ("userspace", "kernel"):
                inp = httpclient.InferInput("x", [n], "FP32")
                inp.set_data_from_numpy(x, binary_data=True)
                req = httpclient.InferRequestedOutput("y", binary_data=True)
                t0 = time.perf_counter()
                y = clients[svc].infer("double", [inp], outputs=[req]).as_numpy("y")
                times[f"rest_binary/{svc}"].append((time.perf_counter() - t0) * 1e3)
                ok = ok and y is not None and bool(np.array_equal(y, expect))
                del y
                inp = httpclient.InferInput("x", [n], "FP32")
                inp.set_shared_memory(f"in{mib}", nbytes)
                req = httpclient.InferRequestedOutput("y")
                req.set_shared_memory(f"out{mib}", nbytes)
                t0 = time.perf_counter()
                clients[svc].infer("double", [inp], outputs=[req])
                key = "shm_posix/userspace" if svc == "userspace" else "shm_mlos_ml/kernel"
                times[key].append((time.perf_counter() - t0) * 1e3)
        y_posix = shm.get_contents_as_numpy(ph_out, np.float32, [n])
        ok = ok and bool(np.array_equal(y_posix, expect))
        ok = ok and bool(np.array_equal(b_out.array(np.float32, (n,)), expect))
        out[f"{mib}MiB"] = {"correct": ok, **{k: summary(v) for k, v in times.items()}}
        for svc in clients.values():
            svc.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(ph_in)
        shm.destroy_shared_memory_region(ph_out)
        b_in.close()
        b_out.close()
        pool.destroy()
    dev.close()
    return out


def contention(clients: dict[str, Any]) -> dict[str, Any]:
    import tritonclient.http as httpclient

    x = np.random.default_rng(1).standard_normal((8, HIDDEN), dtype=np.float32)
    result: dict[str, Any] = {}
    hogs_n = os.cpu_count() or 1
    for phase in ("quiet", "contended"):
        hogs = []
        if phase == "contended":
            hogs = [subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"])
                    for _ in range(hogs_n)]
            time.sleep(1)
        times: dict[str, list[float]] = {"userspace": [], "kernel": []}
        try:
            for _ in range(BLOCKS):
                for svc in ("userspace", "kernel"):
                    for _ in range(BLOCK):
                        inp = httpclient.InferInput("x", [8, HIDDEN], "FP32")
                        inp.set_data_from_numpy(x, binary_data=True)
                        t0 = time.perf_counter()
                        clients[svc].infer("compute", [inp])
                        times[svc].append((time.perf_counter() - t0) * 1e3)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        result[phase] = {svc: summary(v) for svc, v in times.items()}
    result["hogs"] = hogs_n
    return result


def metric_lines(port: int) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return [ln for ln in text.splitlines()
            if re.match(r"mlos_(pool|sched|kernel_fallbacks|module)_", ln)]


def in_guest(mode: str) -> int:
    import tritonclient.http as httpclient

    make_models()
    procs = start_services()
    result: dict[str, Any] = {"mode": mode, "cpus": os.cpu_count()}
    try:
        result["health"] = {name: health(port) for name, port in PORTS.items()}
        clients = {name: httpclient.InferenceServerClient(f"127.0.0.1:{port}",
                                                          network_timeout=300)
                   for name, port in PORTS.items()}
        for svc in clients.values():  # warm up both paths
            inp = httpclient.InferInput("x", [8, HIDDEN], "FP32")
            inp.set_data_from_numpy(np.zeros((8, HIDDEN), np.float32), binary_data=True)
            svc.infer("compute", [inp])
        result["large"] = large_tensors(clients)
        result["contention"] = contention(clients)
        result["kernel_metrics"] = metric_lines(PORTS["kernel"])
    except Exception as exc:  # reported to the host side with the service logs
        import traceback

        result["error"] = traceback.format_exc()[-2000:] + repr(exc)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(60)
        for name in PORTS:
            result[f"log_{name}"] = Path(f"/tmp/bench-{name}.log").read_text()[-1500:]
    print(f"MLOS-MODES-JSON {mode} {json.dumps(result, separators=(',', ':'))}", flush=True)
    return 0 if "error" not in result else 1


# ---- on the host ---------------------------------------------------------------------
def write_docs(res: dict[str, Any], seconds: float, abi: str) -> None:
    h = res["health"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} by `python benchmarks/"
        f"modes_bench.py` in one QEMU TCG guest (Debian {abi}, {res['cpus']} vCPUs, "
        f"{seconds:.0f} s for the whole run) on the shared 2-core development VM. Services: "
        f"`userspace` reports features in use {h['userspace']['features_in_use']}, "
        f"`kernel` {h['kernel']['features_in_use']}. Milliseconds per request, client "
        "wall time (tritonclient.http).", "",
        "| tensor | path | service | p50 ms | p90 ms | n |", "|---|---|---|---|---|---|"]
    for size, rows in res["large"].items():
        for key, s in rows.items():
            if key == "correct":
                continue
            path, svc = key.split("/")
            lines.append(f"| {size} | {path} | {svc} | {s['p50']} | {s['p90']} | {s['n']} |")
    c = res["contention"]
    lines += ["", f"Compute-bound model (8x{HIDDEN}, {LAYERS} MatMul+Relu), serial requests, "
              f"{BLOCKS} alternating blocks of {BLOCK} per service; contended = {c['hogs']} "
              "busy-loop processes in the guest:", "",
              "| phase | service | p50 ms | p99 ms | mean ms | n |", "|---|---|---|---|---|---|"]
    for phase in ("quiet", "contended"):
        for svc in ("userspace", "kernel"):
            s = c[phase][svc]
            lines.append(f"| {phase} | {svc} | {s['p50']} | {s['p99']} | {s['mean']} | "
                         f"{s['n']} |")
    lines += ["", "Kernel service counters at the end of the run:", "", "```",
              *res.get("kernel_metrics", []), "```"]
    text = DOC.read_text()
    start, end = "<!-- figures:start -->", "<!-- figures:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    DOC.write_text(head + start + "\n" + "\n".join(lines) + "\n" + end + tail)
    (REPO / "docs" / "kernel-modes-bench.json").write_text(json.dumps(
        {k: v for k, v in res.items() if not k.startswith("log_")}, indent=1) + "\n")


def on_host() -> int:
    sys.path.insert(0, str(REPO / "tests" / "kernel"))  # the kernel layer's guest helper
    import mlos_guest as guest

    work = guest.scratch_dir("mlos-modes-bench-")
    run = guest.run_host_root_guest(
        work, guest.build_selftests(work), guest.HERE / "guest_modes.sh", timeout=1500,
        memory_mb=3072, append="mlos.modes=full mlos.gpus=-1 mlos.fuzz=0 mlos.extra=1 "
                               "mlos.reserved=1 mlos.modes_script=benchmarks/modes_bench.py")
    shutil.rmtree(work, ignore_errors=True)
    abi = guest.guest_kernels()[-1]  # the kernel run_host_root_guest booted
    found = [ln[ln.find("MLOS-MODES-JSON "):] for ln in run.output.splitlines()
             if "MLOS-MODES-JSON " in ln]
    if not found:
        print(run.output[-5000:], file=sys.stderr)
        return 1
    res = json.loads(found[-1].split(" ", 2)[2])
    if "error" in res:
        print(json.dumps(res, indent=1), file=sys.stderr)
        return 1
    write_docs(res, run.seconds, abi)
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("log_")}, indent=1))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("basic", "scheduler", "full"):
        raise SystemExit(in_guest(sys.argv[1]))
    raise SystemExit(on_host())
