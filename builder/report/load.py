# SPDX-License-Identifier: Apache-2.0
"""Load generation with the real tritonclient (KServe v2 over HTTP and gRPC)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlos_build.report.service import Target
from mlos_build.report.stats import summarize_latencies

PROTOCOLS = ("http", "grpc")

DTYPES: dict[str, Any] = {
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "BOOL": np.bool_,
}


class LoadError(RuntimeError):
    """The load could not be driven (client missing, model unusable)."""


def tritonclient_modules(protocol: str) -> Any:
    """The tritonclient module for a protocol, with an install hint when it is missing."""
    try:
        if protocol == "http":
            import tritonclient.http as mod
        else:
            import tritonclient.grpc as mod
    except ImportError as exc:
        raise LoadError(f"tritonclient[{protocol}] is not installed: "
                        f"pip install 'mlos[report]' ({exc})") from exc
    return mod


def sample_inputs(inputs_meta: list[dict[str, Any]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors matching a model's input metadata (dynamic dims become 1)."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for meta in inputs_meta:
        datatype = str(meta.get("datatype", ""))
        if datatype not in DTYPES:
            raise LoadError(f"input {meta.get('name')!r} has datatype {datatype!r}, "
                            "which this suite does not generate")
        shape = [1 if int(d) < 0 else int(d) for d in meta.get("shape", [])]
        dtype = DTYPES[datatype]
        if np.issubdtype(dtype, np.floating):
            arr = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            arr = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            arr = rng.integers(0, 8, shape).astype(dtype)
        tensors[str(meta["name"])] = arr
    return tensors


@dataclass
class Workload:
    """One model called with fixed inputs over one protocol."""

    target: Target
    protocol: str
    model: str
    version: str
    inputs: dict[str, np.ndarray]
    outputs: list[str]

    def client_call(self) -> Callable[[], None]:
        """A fresh client and a zero-argument function doing one checked inference."""
        mod = tritonclient_modules(self.protocol)
        if self.protocol == "http":
            client = mod.InferenceServerClient(self.target.rest_hostport,
                                               connection_timeout=self.target.timeout_s,
                                               network_timeout=self.target.timeout_s)
        else:
            if not self.target.grpc_url:
                raise LoadError("no gRPC address given (--grpc-url)")
            client = mod.InferenceServerClient(self.target.grpc_url)
        from tritonclient.utils import np_to_triton_dtype

        infer_inputs = []
        for name, arr in self.inputs.items():
            inp = mod.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            if self.protocol == "http":
                inp.set_data_from_numpy(arr, binary_data=True)
            else:
                inp.set_data_from_numpy(arr)
            infer_inputs.append(inp)
        if self.protocol == "http":
            outs = [mod.InferRequestedOutput(o, binary_data=True) for o in self.outputs]
        else:
            outs = [mod.InferRequestedOutput(o) for o in self.outputs]
        # gRPC metadata keys must be lower case; HTTP headers are case-insensitive.
        headers = {k.lower(): v for k, v in self.target.headers.items()} or None
        model, version, expected = self.model, self.version, self.outputs

        def call() -> None:
            result = client.infer(model, infer_inputs, model_version=version,
                                  outputs=outs, headers=headers)
            for name in expected:
                if result.as_numpy(name) is None:
                    raise LoadError(f"response lacks output {name!r}")

        return call


def run_repetition(workload: Workload, concurrency: int, requests: int) -> dict[str, Any]:
    """`requests` inferences spread over `concurrency` threads, each with its own client."""
    calls = [workload.client_call() for _ in range(concurrency)]
    per_worker = [requests // concurrency + (1 if i < requests % concurrency else 0)
                  for i in range(concurrency)]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    first_error: list[str] = []
    barrier = threading.Barrier(concurrency + 1)

    def worker(i: int) -> None:
        call, lat = calls[i], latencies[i]
        barrier.wait()
        for _ in range(per_worker[i]):
            t0 = time.perf_counter()
            try:
                call()
            except Exception as exc:  # a failed request is a figure, not a crash
                errors[i] += 1
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}"[:300])
                continue
            lat.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    summary = summarize_latencies([x for lat in latencies for x in lat], wall, sum(errors))
    if first_error:
        summary["first_error"] = first_error[0]
    return summary


def warm_up(workload: Workload, requests: int) -> str | None:
    """A few serial requests so first-call costs (sessions, connections) are not measured.

    Returns the error text if the model cannot be called at all.
    """
    call = workload.client_call()
    try:
        for _ in range(max(1, requests)):
            call()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:300]
    return None
