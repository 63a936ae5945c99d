# SPDX-License-Identifier: Apache-2.0
"""MLOS Core's kernel modes inside a guest: one QEMU boot of Debian's 6.12 kernel loads
mlos_ml in basic, scheduler and full mode; in each, a real `mlos-core serve` (the host's
venv over 9p) reports its runtime mode and features on /health, serves inference through
pool buffers, registers its threads with the module, and falls back per request when the
pool cannot help. One kernel only: the service code is the same on every kernel, and the
module itself is proven on 6.1 and 6.12 by test_kernel_guest.py; Python under TCG costs
about a minute per mode."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import mlos_guest as guest
import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(1200)]
# MLOS_MODES=full narrows a debugging run to some modes.
MODES = tuple(os.environ.get("MLOS_MODES", "basic,scheduler,full").split(","))


@pytest.fixture(scope="module")
def modes_guest(selftest_binaries: dict,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[guest.GuestRun]:
    work = tmp_path_factory.mktemp("modes-guest")
    # One emulated display device: the GPU manager has a device to lease from.
    run = guest.run_host_root_guest(
        work, selftest_binaries, guest.HERE / "guest_modes.sh", timeout=1000, devices=["VGA"],
        append=f"mlos.modes={','.join(MODES)} mlos.gpus=1 mlos.fuzz=0 mlos.extra=1")
    yield run
    shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("mode", MODES)
def test_service_in_mode(modes_guest: guest.GuestRun, mode: str) -> None:
    res = guest.modes_report(modes_guest, mode)
    assert "error" not in res, (res.get("error"), res.get("traceback"), res.get("serve_log"))
    health = res["health"]
    assert health["runtime_mode"] == f"kernel_{mode}"
    assert health["effective_mode"] == f"kernel_{mode}"
    assert health["kernel"] == guest.guest_kernels()[-1]
    assert health["onnxruntime"] and "llama_cpp" in health
    expected = {"basic": ["memory_manager"], "scheduler": ["memory_manager", "scheduler"],
                "full": ["memory_manager", "scheduler", "gpu_manager"]}[mode]
    assert health["features_in_use"] == expected
    features = health["features"]
    if mode == "basic":  # disabled by the module: reported with the parameter, not an error
        assert "enable_scheduler" in features["scheduler"]["reason"]
    if mode != "full":
        assert "enable_gpu_manager" in features["gpu_manager"]["reason"]
    assert res["infer_ok"] and res["gpu_model_ok"]
    m = res["metrics"]
    # Inference went through pool buffers, reused from request to request.
    assert m["mlos_pool_acquired_total"] >= 4 and m["mlos_pool_reused_total"] >= 3, m
    assert m["mlos_pool_bytes_total"] >= 4 * (4 << 20), m
    assert res["module_stats_serving"]["pools"] >= 1
    # Binary request bodies were read into pinned mlos-ml buffers, reused likewise; the
    # pool held a request body and its response (4 MiB each) at once.
    req = {key: m[f'mlos_request_buffers_{key}{{pool="mlos_ml"}}'] for key in (
        "acquired_total", "reused_total", "allocated_total", "fallbacks_total", "bytes_total")}
    assert req["acquired_total"] >= 5 and req["reused_total"] >= 3, req
    assert req["bytes_total"] >= 4 * (4 << 20), req
    assert m["mlos_pool_pool_peak_used"] >= 2 * (4 << 20), m
    assert features["memory_manager"]["request_buffers"]["pool"] == "mlos_ml"
    # Per-request fallback: a 32 MiB output does not fit the 16 MiB pool.
    assert res["fallback_infer_ok"] and m['mlos_kernel_fallbacks_total{what="pool"}'] >= 1, m
    assert req["fallbacks_total"] == 1, req  # its 32 MiB body too, read the plain way
    # Triton shared memory backed by the client's own mlos-ml buffers.
    assert res["shm"] == {"ok": True, "regions": ["mlos-ml", "mlos-ml"]}, res["shm"]
    stats = res["module_stats_serving"]
    if mode == "basic":
        assert stats["sched_latency"] == 0 and stats["sched_throughput"] == 0
    else:  # the module sees the inference threads latency-critical, the HTTP thread not
        assert stats["sched_latency"] >= 1 and stats["sched_throughput"] >= 1, stats
        assert m['mlos_sched_threads{class="latency"}'] >= 1, m
    if mode == "full":
        leases = features["gpu_manager"]["leases"]
        assert leases == [{"model": "gpudouble", "requested_bytes": 8 << 20, "device": 0,
                           "memory_limit": 8 << 20}], leases
        assert m["mlos_gpu_leases"] == 1 and m["mlos_gpu_leased_bytes"] == 8 << 20, m
    # The service closed its descriptor: everything it held is back.
    after = res["module_stats_after"]
    assert after["pools"] == after["buffers"] == after["leases"] == 0, after
    assert after["sched_latency"] == after["sched_throughput"] == 0, after


def test_guest_clean(modes_guest: guest.GuestRun) -> None:
    assert modes_guest.result("dmesg_bad") == ["0"], modes_guest.prefixed("MLOS-DMESG")
    for mode in MODES:
        assert modes_guest.result(mode, "rmmod") == ["ok"]
