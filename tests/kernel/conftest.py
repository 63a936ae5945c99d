# SPDX-License-Identifier: Apache-2.0
"""Fixtures of the kernel layer: one QEMU boot per guest kernel, shared by its tests."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import mlos_guest as guest  # noqa: E402

MODES = {
    "basic": {"enable_tmm": "Y", "enable_scheduler": "N", "enable_gpu_manager": "N"},
    "scheduler": {"enable_tmm": "Y", "enable_scheduler": "Y", "enable_gpu_manager": "N"},
    "full": {"enable_tmm": "Y", "enable_scheduler": "Y", "enable_gpu_manager": "Y"},
}
# The first kernel boots with several emulated display devices, the others with none,
# so the GPU manager is proven both ways on every run.
GPU_DEVICES = ["VGA", "bochs-display", "virtio-gpu-pci", "secondary-vga"]
# Single-threaded fuzzer (replays exactly from its seed) and the multi-threaded one
# (threads sharing one descriptor, guessed ids, read-only and unmapped result buffers):
# together the ioctls per mode; the multi-threaded one makes at least 100,000 per kernel.
FUZZ_CALLS = {"basic": 10000, "scheduler": 10000, "full": 30000}
MTFUZZ_CALLS = {"basic": 25000, "scheduler": 25000, "full": 50000}
# The race selftests need every feature on; the pool and buffer paths they race are the
# same code in the other modes, so full alone keeps the layer's time down.
RACE_MODES = ("full",)
# KFENCE (Debian 6.12 has it, off by default) samples allocations and reports a
# use-after-free or double free as "BUG: KFENCE"; 6.1 ignores the parameter. The
# always-on detectors (refcount_t saturation, SLAB_FREELIST_HARDENED, DEBUG_LIST) need none.
GUEST_DEBUG = "kfence.sample_interval=5"


def _kernels() -> list[str]:
    kernels = guest.guest_kernels()
    return kernels or ["missing-run-scripts-setup.sh"]


@pytest.fixture(scope="session")
def selftest_binaries(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return guest.build_selftests(tmp_path_factory.mktemp("selftests"))


@pytest.fixture(scope="module", params=_kernels())
def booted(request: pytest.FixtureRequest, selftest_binaries: dict,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int, guest.GuestRun]]:
    abi = request.param
    image = guest.kernel_image(abi)
    if not image.exists() or not guest.headers_dir(abi).exists():
        pytest.fail(f"guest kernel {abi} or its headers missing: run ./scripts/setup.sh")
    work = tmp_path_factory.mktemp(f"guest-{abi}")
    build = guest.build_module(guest.headers_dir(abi), work)
    assert not build.warnings, build.warnings
    files = {"/mlos_ml.ko": build.ko, **{f"/{k}": v for k, v in selftest_binaries.items()}}
    cpio = guest.make_initramfs(work, files)
    devices = GPU_DEVICES if abi == guest.guest_kernels()[0] else []
    fuzz = " ".join([*(f"mlos.fuzz_{m}={n}" for m, n in FUZZ_CALLS.items()),
                     *(f"mlos.mtfuzz_{m}={n}" for m, n in MTFUZZ_CALLS.items())])
    # A new seed each run widens coverage; the seed is on the kernel command line to replay.
    seed = os.environ.get("MLOS_FUZZ_SEED") or str(int(time.time()) % 1_000_000 + 1)
    run = guest.run_guest(image, cpio, devices=devices, timeout=600,
                          append=f"mlos.gpus={len(devices)} {fuzz} mlos.seed={seed} "
                                 f"mlos.race={','.join(RACE_MODES)} "
                                 f"mlos.modes={','.join(MODES)} {GUEST_DEBUG}")
    yield abi, len(devices), run
    shutil.rmtree(work, ignore_errors=True)
