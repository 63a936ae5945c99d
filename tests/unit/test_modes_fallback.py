# SPDX-License-Identifier: Apache-2.0
"""Kernel modes on a host without the mlos_ml device: every feature is reported unavailable
with its reason, and inference keeps working in the lower mode (real server, real client)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from core_fixtures import *  # noqa: F403  (the fixtures)
from tritonclient.utils import InferenceServerException

from mlos_core.kernel.modes import (
    FEATURES,
    KernelModes,
    TensorPool,
    parse_cpus,
    versions,
    wants_gpu,
)
from mlos_core.kernel.runtime_mode import detect

FULL = {"debug_level": "0", "enable_tmm": "Y", "enable_scheduler": "Y",
        "enable_gpu_manager": "Y", "reserved_cpus": "1"}


def sysfs(root: Path, params: dict[str, str]) -> Path:
    directory = root / "module" / "mlos_ml" / "parameters"
    directory.mkdir(parents=True)
    for name, value in params.items():
        (directory / name).write_text(value + "\n")
    return root


def double(url: str, n: int = 1000) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    x = np.arange(n, dtype=np.float32)
    inp = httpclient.InferInput("x", [n], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = client.infer("double", [inp]).as_numpy("y")
    assert result is not None
    np.testing.assert_array_equal(result, 2 * x)
    return result


def test_kernel_full_without_device_node_falls_back(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = sysfs(tmp_path / "sys", FULL)
    server = server_factory(sysfs_root=root, mlos_ml_device=str(tmp_path / "no-mlos-ml"))
    health = requests.get(f"http://{server.url}/health", timeout=5).json()
    assert health["runtime_mode"] == "kernel_full"  # what the module's parameters say
    assert health["effective_mode"] == "userspace"  # what the service could use
    assert health["features_in_use"] == []
    for name in FEATURES:
        feature = health["features"][name]
        assert feature["in_use"] is False
        assert "not found although the module is loaded" in feature["reason"]
    double(server.url)
    double(server.url, 1 << 20)
    metrics = requests.get(f"http://{server.url}/metrics", timeout=5).text
    assert 'mlos_kernel_feature_in_use{feature="memory_manager"} 0' in metrics
    assert "mlos_pool_acquired_total" not in metrics
    assert 'mlos_inference_requests_total{model="double",protocol="rest"} 2' in metrics


def test_device_that_fails_its_ioctls_is_reported(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A node that opens but answers no mlos_ml ioctl (ENOTTY), as a wrong or stale device
    # would: reported unavailable with the error, never fatal.
    fake = tmp_path / "fake-mlos-ml"
    fake.write_bytes(b"")
    server = server_factory(sysfs_root=sysfs(tmp_path / "sys", FULL), mlos_ml_device=str(fake))
    health = requests.get(f"http://{server.url}/health", timeout=5).json()
    reason = health["features"]["memory_manager"]["reason"]
    assert "version" in reason and health["features_in_use"] == []
    double(server.url)


def test_userspace_reports_why_and_versions(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    health = requests.get(f"http://{server.url}/health", timeout=5).json()
    assert health["runtime_mode"] == health["effective_mode"] == "userspace"
    assert health["module"] is None
    assert all("not loaded" in health["features"][n]["reason"] for n in FEATURES)
    import platform

    import onnxruntime

    assert health["kernel"] == platform.release()
    assert health["onnxruntime"] == onnxruntime.__version__
    assert health["llama_cpp"] == versions()["llama_cpp"]
    assert "llama_cpp" in health


def test_gpu_model_without_gpu_manager_runs_on_cpu(server_factory, repo: Path,  # type: ignore[no-untyped-def]
                                                   tmp_path: Path) -> None:
    (repo / "double" / "config.json").write_text(json.dumps({"gpu_memory_mb": 256}))
    server = server_factory(sysfs_root=sysfs(tmp_path / "sys", FULL),
                            mlos_ml_device=str(tmp_path / "absent"))
    health = requests.get(f"http://{server.url}/health", timeout=5).json()
    leases = health["features"]["gpu_manager"]["leases"]
    assert leases == [{"model": "double", "requested_bytes": 256 << 20, "device": None,
                       "memory_limit": 0, "reason": health["features"]["gpu_manager"]["reason"]}]
    double(server.url)


def test_mlos_ml_shm_key_refused_without_memory_manager(server_factory) -> None:  # type: ignore[no-untyped-def]
    server = server_factory()
    client = httpclient.InferenceServerClient(server.url)
    with pytest.raises(InferenceServerException, match="memory manager"):
        client.register_system_shared_memory("r", "mlos-ml:1:3", 64)
    with pytest.raises(InferenceServerException, match="mlos-ml:<pid>"):
        client.register_system_shared_memory("r", "mlos-ml:bad", 64)
    double(server.url)


def test_feature_detection_without_server(tmp_path: Path) -> None:
    modes = KernelModes(detect(sysfs(tmp_path / "sys", FULL)), str(tmp_path / "absent")).start()
    assert modes.device is None and modes.pool is None
    modes.register_thread(latency=True)  # no scheduler: a no-op, never an error
    assert modes.place_model(1, "m", {"gpu": True})["device"] is None
    modes.release_model(1)
    text = modes.render_metrics()
    assert 'mlos_kernel_feature_in_use{feature="scheduler"} 0' in text
    modes.close()


def test_helpers() -> None:
    assert parse_cpus("1") == [1]
    assert parse_cpus("0,2-3") == [0, 2, 3]
    assert parse_cpus("") == []
    assert TensorPool.size_class(1) == 64 << 10
    assert TensorPool.size_class(16 << 20) == 16 << 20
    assert TensorPool.size_class((16 << 20) + 1) == 32 << 20
    assert wants_gpu({}) == 0
    assert wants_gpu({"gpu": True}) == 1 << 30
    assert wants_gpu({"gpu_memory_mb": 512}) == 512 << 20
    assert wants_gpu({"instance_group": [{"kind": "KIND_GPU", "count": 1}]}) == 1 << 30
    assert wants_gpu({"instance_group": [{"kind": "KIND_CPU"}]}) == 0


def test_mlos_ml_shm_key_checks_the_descriptor() -> None:
    import os

    from mlos_core.dataplane.system_shm import SharedMemoryRegistry
    from mlos_core.errors import InvalidInputError

    registry = SharedMemoryRegistry()  # no kernel modes object: the key is tried
    fd = os.memfd_create("not-mlos-ml")
    try:
        os.ftruncate(fd, 4096)
        # pidfd_getfd really takes the descriptor; it is refused for not being a buffer.
        with pytest.raises(InvalidInputError, match="not an mlos-ml buffer"):
            registry.register("r", f"mlos-ml:{os.getpid()}:{fd}", 0, 4096)
        with pytest.raises(InvalidInputError, match="cannot take descriptor"):
            registry.register("r", f"mlos-ml:{os.getpid()}:9999", 0, 4096)
        assert registry.status() == []
    finally:
        os.close(fd)


@pytest.mark.parametrize("key", ["bad\0key", "/", "..", "/../x", "a/b", ""])
def test_malformed_posix_shm_keys_are_client_errors(key: str) -> None:
    # Found by the schemathesis run: a NUL byte in the key reached os.open (a 500).
    from mlos_core.dataplane.system_shm import SharedMemoryRegistry
    from mlos_core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="invalid shared memory key"):
        SharedMemoryRegistry().register("r", key, 0, 16)
