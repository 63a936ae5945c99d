# SPDX-License-Identifier: Apache-2.0
"""Triton's CUDA shared-memory extension, answered truthfully.

Registering a CUDA IPC handle needs a CUDA device and an ONNX Runtime built with CUDA; no
CUDA buffers are ever mapped by this service. So the status is empty, unregistering
(what client programs do to clean up before they start) succeeds, and a registration is
refused with the reason: no CUDA device or no CUDA in ONNX Runtime, or, on a host that has
both, that this build does not map CUDA IPC handles. Clients then fall back to system
shared memory or tensors in the request."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import InvalidInputError, UnsupportedError


def cuda_available(dev: Path = Path("/dev")) -> tuple[bool, str]:
    """Whether this host has a CUDA device and ONNX Runtime has CUDA, and why not."""
    if not any(dev.glob("nvidia[0-9]*")):
        return False, "this host has no CUDA device"
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "ONNX Runtime is not installed"
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return False, "this ONNX Runtime is built without CUDA"
    return True, ""


class CudaSharedMemory:
    """No region is ever registered; the calls answer as Triton's server without any."""

    def status(self, name: str | None = None) -> list[dict[str, int | str]]:
        if name:
            raise InvalidInputError(f"no CUDA shared memory region named {name!r}")
        return []

    def register(self, name: str, device_id: int, byte_size: int) -> None:
        if not name:
            raise InvalidInputError("CUDA shared memory region needs a name")
        available, why = cuda_available()
        if available:
            why = "this build of MLOS Core does not map CUDA IPC handles"
        raise UnsupportedError(
            f"cannot register CUDA shared memory region {name!r} (device {device_id}, "
            f"{byte_size} bytes): {why}; use system shared memory "
            "(/v2/systemsharedmemory) or send the tensors in the request")

    def unregister(self, name: str | None = None) -> None:
        """Nothing is registered, so there is nothing to release: succeeds (as Triton's
        unregister of all regions does on a server without any)."""
