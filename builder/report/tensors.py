# SPDX-License-Identifier: Apache-2.0
"""Large tensors: zero-copy (Triton system shared memory) against the copy paths.

One model with a dynamic FP32 input is called with tensors of growing size over each
transport: system shared memory (the tensor stays in a registered POSIX region; the
request carries only its name), binary REST, gRPC raw contents and JSON REST. Every
transport's first answer is checked against the binary REST answer, so a fast path that
returns wrong data cannot win.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import Any

import numpy as np

from mlos_build.report.service import Target
from mlos_build.report.stats import summarize_latencies

TRANSPORTS = ("shm", "rest_binary", "grpc", "rest_json")
TRANSPORT_LABELS = {
    "shm": "system shared memory (zero-copy)",
    "rest_binary": "REST binary tensors",
    "grpc": "gRPC raw tensors",
    "rest_json": "REST JSON",
}
MIB = 1 << 20


def pick_model(models: list[dict[str, Any]], name: str | None) -> dict[str, Any] | None:
    """The named model, else one with a single dynamic FP32 input (fewest fixed dims)."""
    if name is not None:
        return next((m for m in models if m["name"] == name), None)
    candidates = []
    for model in models:
        inputs = model.get("inputs", [])
        if (len(inputs) == 1 and inputs[0].get("datatype") == "FP32"
                and any(int(d) < 0 for d in inputs[0].get("shape", []))):
            fixed = sum(1 for d in inputs[0]["shape"] if int(d) > 0)
            candidates.append((fixed, model["name"], model))
    return min(candidates, key=lambda c: c[:2])[2] if candidates else None


def tensor_for(input_meta: dict[str, Any], nbytes: int) -> np.ndarray:
    """An FP32 tensor of about `nbytes` that fits the input's shape (last dynamic dim grows)."""
    shape = [int(d) for d in input_meta.get("shape", [])]
    dynamic = [i for i, d in enumerate(shape) if d < 0]
    if not dynamic:
        raise ValueError(f"input {input_meta.get('name')!r} has no dynamic dimension")
    fixed = int(np.prod([d for d in shape if d > 0])) if any(d > 0 for d in shape) else 1
    elements = max(1, nbytes // 4 // fixed)
    dims = [1 if d < 0 else d for d in shape]
    dims[dynamic[-1]] = elements
    rng = np.random.default_rng(1)
    return rng.standard_normal(dims).astype(np.float32)


class _Caller:
    """One transport's client set up for one tensor; `call()` returns the outputs."""

    def __init__(self, target: Target, transport: str, model: dict[str, Any],
                 arr: np.ndarray, reference: dict[str, np.ndarray] | None) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.http as httpclient

        self.target, self.transport, self.model = target, transport, model
        self.in_name = str(model["inputs"][0]["name"])
        self.out_names = [str(o["name"]) for o in model["outputs"]]
        self.headers = {k.lower(): v for k, v in target.headers.items()} or None
        self.regions: list[tuple[str, Any]] = []
        self.shm_outputs: list[tuple[str, Any, np.dtype[Any], list[int], int]] = []
        if transport == "grpc":
            if not target.grpc_url:
                raise RuntimeError("no gRPC address given")
            self.mod: Any = grpcclient
            self.client: Any = grpcclient.InferenceServerClient(target.grpc_url)
        else:
            self.mod = httpclient
            self.client = httpclient.InferenceServerClient(
                target.rest_hostport, connection_timeout=target.timeout_s,
                network_timeout=max(target.timeout_s, 120.0))
        inp = self.mod.InferInput(self.in_name, list(arr.shape), "FP32")
        if transport == "shm":
            try:
                self._setup_shm(inp, arr, reference)
            except BaseException:
                self.close()
                raise
        elif transport == "rest_json":
            inp.set_data_from_numpy(arr, binary_data=False)
            self.outputs = [self.mod.InferRequestedOutput(o, binary_data=False)
                            for o in self.out_names]
        elif transport == "rest_binary":
            inp.set_data_from_numpy(arr, binary_data=True)
            self.outputs = [self.mod.InferRequestedOutput(o, binary_data=True)
                            for o in self.out_names]
        else:
            inp.set_data_from_numpy(arr)
            self.outputs = [self.mod.InferRequestedOutput(o) for o in self.out_names]
        self.inputs = [inp]

    def _setup_shm(self, inp: Any, arr: np.ndarray,
                   reference: dict[str, np.ndarray] | None) -> None:
        import tritonclient.utils.shared_memory as shm

        if reference is None:
            raise RuntimeError("shared memory needs a reference answer to size outputs")
        tag = f"mlosrep{os.getpid()}{uuid.uuid4().hex[:8]}"
        in_handle = shm.create_shared_memory_region(f"{tag}_in", f"/{tag}_in", arr.nbytes)
        self.regions.append((f"{tag}_in", in_handle))
        # The producer writes its tensor straight into the region, once, as a zero-copy
        # client would: that write is not part of a request.
        shm.set_shared_memory_region(in_handle, [arr])
        self.client.register_system_shared_memory(f"{tag}_in", f"/{tag}_in", arr.nbytes,
                                                  headers=self.headers)
        inp.set_shared_memory(f"{tag}_in", arr.nbytes)
        self.outputs = []
        for i, name in enumerate(self.out_names):
            ref = reference[name]
            region = f"{tag}_out{i}"
            handle = shm.create_shared_memory_region(region, f"/{region}", ref.nbytes)
            self.regions.append((region, handle))
            self.client.register_system_shared_memory(region, f"/{region}", ref.nbytes,
                                                      headers=self.headers)
            out = self.mod.InferRequestedOutput(name, binary_data=True)
            out.set_shared_memory(region, ref.nbytes)
            self.outputs.append(out)
            self.shm_outputs.append((name, handle, ref.dtype, list(ref.shape), ref.nbytes))

    def call(self) -> dict[str, np.ndarray]:
        result = self.client.infer(self.model["name"], self.inputs,
                                   model_version=self.model.get("version", ""),
                                   outputs=self.outputs, headers=self.headers)
        if self.transport == "shm":
            import tritonclient.utils.shared_memory as shm

            return {name: shm.get_contents_as_numpy(handle, dtype, shape)
                    for name, handle, dtype, shape, _ in self.shm_outputs}
        return {name: result.as_numpy(name) for name in self.out_names}

    def close(self) -> None:
        import tritonclient.utils.shared_memory as shm

        for region, handle in self.regions:
            # The region may never have been registered (or the service may be gone).
            with contextlib.suppress(Exception):
                self.client.unregister_system_shared_memory(region, headers=self.headers)
            shm.destroy_shared_memory_region(handle)
        self.regions.clear()
        close = getattr(self.client, "close", None)
        if close:
            close()


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(k in a and a[k] is not None and np.allclose(a[k], b[k], rtol=1e-4, atol=1e-5)
               for k in b)


def measure_series(target: Target, model: dict[str, Any], sizes_mib: list[float],
                   requests: int, json_requests: int, json_max_mib: float,
                   transports: tuple[str, ...] = TRANSPORTS) -> list[dict[str, Any]]:
    """Latency per (transport, size); a transport that fails records why, not a figure."""
    points: list[dict[str, Any]] = []
    for mib in sizes_mib:
        arr = tensor_for(model["inputs"][0], int(mib * MIB))
        reference: dict[str, np.ndarray] | None = None
        try:
            ref_caller = _Caller(target, "rest_binary", model, arr, None)
            try:
                reference = ref_caller.call()
            finally:
                ref_caller.close()
        except Exception as exc:
            reference = None
            ref_error = f"{type(exc).__name__}: {exc}"[:300]
        for transport in transports:
            point: dict[str, Any] = {"transport": transport, "mib": mib,
                                     "bytes": int(arr.nbytes)}
            n = json_requests if transport == "rest_json" else requests
            if transport == "rest_json" and mib > json_max_mib:
                point["skipped"] = f"JSON measured only up to {json_max_mib:g} MiB"
                points.append(point)
                continue
            if reference is None:
                point["error"] = f"reference (binary REST) call failed: {ref_error}"
                points.append(point)
                continue
            caller = None
            try:
                caller = _Caller(target, transport, model, arr, reference)
                start = time.perf_counter()
                answer = caller.call()  # the check, which also warms the path up
                first = time.perf_counter() - start
                if not _same(answer, reference):
                    raise RuntimeError("answer differs from the binary REST answer")
                # A JSON request of many MiB takes seconds: its first call counts as a
                # sample, since warm-up costs vanish beside it.
                latencies = [first] if transport == "rest_json" else []
                if not latencies:
                    start = time.perf_counter()
                for _ in range(n - len(latencies)):
                    t0 = time.perf_counter()
                    caller.call()
                    latencies.append(time.perf_counter() - t0)
                wall = time.perf_counter() - start
                point.update(summarize_latencies(latencies, wall, 0))
                point["samples_ms"] = [round(x * 1e3, 4) for x in latencies]
            except Exception as exc:
                point["error"] = f"{type(exc).__name__}: {exc}"[:300]
            finally:
                if caller is not None:
                    caller.close()
            points.append(point)
    return points
