# SPDX-License-Identifier: Apache-2.0
"""The heavy-compute workload: a model where inference, not the transport, dominates.

The demo model (y = 2x + 1) costs microseconds of compute, so its figures measure HTTP
and Python; the scheduler has no inference time to protect. This model is a stack of
3x3 convolutions on a small image (a 3 KiB input, a 64-byte output, 3.8 MFLOP): 0.1 ms on
one core of this 2-core x86 VM in-process, and 30 ms in the QEMU TCG guest `mlos-build
validate` boots (measured 2026-12-02 with ONNX Runtime on one thread), where the demo
model's request is dominated by HTTP and Python instead.

The suite registers it itself through the service's upload route
(`POST /models/register`, multipart), which the default configuration allows (unlike
registration by path, which needs `import_roots`), and deletes it again at the end, so
nothing has to be baked into an image and no network is needed. Built with onnx.helper
from a fixed seed: the same bytes on every run.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from mlos_build.report.service import ServiceError, Target

NAME = "mlos-bench-heavy"
# Sized for the guest the suite runs in (the issue: several ms on one core there): TCG
# ran the first size, 64 channels x 6 layers on 32x32 (381 MFLOP), at 2.9 s a request
# against 5 ms natively (about 575x), so a four-mode run did not finish in an hour.
CHANNELS = 16
LAYERS = 4
SIDE = 16
INPUT_SHAPE = [1, 3, SIDE, SIDE]


def flops() -> int:
    """Multiply-adds x 2 of one request (the convolutions; ReLU and the pool are noise)."""
    per_pixel = 3 * CHANNELS + (LAYERS - 1) * CHANNELS * CHANNELS
    return 2 * 9 * SIDE * SIDE * per_pixel


def model_bytes() -> bytes:
    """The serialized ONNX model (needs the `onnx` package: the report extra has it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights = [], []
    prev, cin = "input", INPUT_SHAPE[1]
    for i in range(LAYERS):
        # He-style scaling keeps activations finite through the stack.
        w = (rng.standard_normal((CHANNELS, cin, 3, 3)) * np.sqrt(2 / (cin * 9)))
        weights.append(numpy_helper.from_array(w.astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Conv", [prev, f"w{i}"], [f"conv{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"])]
        prev, cin = f"relu{i}", CHANNELS
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["pooled"]),
              helper.make_node("Flatten", ["pooled"], ["output"])]
    graph = helper.make_graph(
        nodes, "mlos_bench_heavy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, INPUT_SHAPE)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, CHANNELS])],
        initializer=weights)
    # Opset 13 and IR 8 load in every onnxruntime the images install (as the demo model).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="mlos-build report")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()  # type: ignore[no-any-return]


def _multipart(fields: dict[str, str], filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def register(target: Target, served: list[str]) -> dict[str, Any]:
    """Uploads the model unless a model of that name is served already.

    Returns what happened, for the results: {"name", "registered": bool, ...} or an
    "error" that says why the heavy workload is missing.
    """
    info: dict[str, Any] = {"name": NAME, "flops": flops(), "input_shape": INPUT_SHAPE,
                            "registered": False}
    if NAME in served:
        info["note"] = "already served; measured as found"
        return info
    try:
        data = model_bytes()
    except ImportError as exc:
        info["error"] = f"the onnx package is missing ({exc}): pip install 'mlos[report]'"
        return info
    body, content_type = _multipart({"name": NAME}, "model.onnx", data)
    try:
        answer = target.request_raw("POST", "/models/register", body, content_type)
    except ServiceError as exc:
        info["error"] = f"registration failed: {exc}"
        return info
    info.update(registered=True, bytes=len(data), version=(answer or {}).get("version"),
                state=(answer or {}).get("state"))
    return info


def unregister(target: Target, info: dict[str, Any]) -> None:
    """Removes the model again if this run registered it (a failure is only noted)."""
    if not info.get("registered"):
        return
    try:
        target.request("DELETE", f"/models/{NAME}")
        info["deleted"] = True
    except ServiceError as exc:
        info["deleted"] = False
        info["delete_error"] = str(exc)[:300]
