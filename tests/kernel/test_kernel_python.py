# SPDX-License-Identifier: Apache-2.0
"""The Python binding and ONNX Runtime zero-copy inside a guest: the host's root is shared
read-only over 9p and the guest chroots into it to run this very venv's python."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import mlos_guest as guest
import pytest
from conftest import MODES

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(900)]
# Python under TCG over 9p costs about a minute per run: basic proves the disabled-feature
# errors, full exercises every feature (the scheduler mode's features are a subset).
PY_MODES = ("basic", "full")


@pytest.fixture(scope="module")
def python_guest(selftest_binaries: dict,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[guest.GuestRun]:
    kernels = guest.guest_kernels()
    if not kernels:
        pytest.fail("no guest kernels: run ./scripts/setup.sh")
    abi = kernels[-1]
    work = tmp_path_factory.mktemp("python-guest")
    build = guest.build_module(guest.headers_dir(abi), work)
    files = {"/mlos_ml.ko": build.ko, "/extra.sh": guest.HERE / "guest_python.sh",
             **{f"/{k}": v for k, v in selftest_binaries.items()},
             **dict(guest.module_closure(abi, guest.NINEP_MODULES))}
    cpio = guest.make_initramfs(work, files)
    run = guest.run_guest(
        guest.kernel_image(abi), cpio, memory_mb=1536, timeout=800,
        append=f"mlos.modes={','.join(MODES)} mlos.gpus=-1 mlos.fuzz=0 mlos.extra=1 "
               f"mlos.pymodes={','.join(PY_MODES)} "
               f"mlos.repo={guest.REPO}",
        extra_args=["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                    "readonly=on,multidevs=remap"])
    yield run
    shutil.rmtree(work, ignore_errors=True)


def test_host_root_mounted(python_guest: guest.GuestRun) -> None:
    assert python_guest.result("ninep", "mount") == ["ok"], python_guest.output[-5000:]


@pytest.mark.parametrize("mode", PY_MODES)
def test_binding_tests_pass_in_guest(python_guest: guest.GuestRun, mode: str) -> None:
    out = python_guest.prefixed("MLOS-PY", mode)
    assert python_guest.result(mode, "pytest_rc") == ["0"], out
    summary = out[-1] if out else ""
    assert "passed" in summary and "skipped" not in summary, out


def test_onnxruntime_writes_into_pool_buffer_read_by_another_process(
        python_guest: guest.GuestRun) -> None:
    run = python_guest
    assert run.result("full", "zero_copy_rc") == ["0"], run.prefixed("MLOS-ZC")
    for key in ("output_in_pool_buffer", "output_correct", "reader_same_bytes",
                "reader_write_visible"):
        assert run.result("zero_copy", key) == ["1"], (key, run.prefixed("MLOS-ZC"))
    assert run.result("zero_copy", "pool_buffers") == ["2"]


def test_guest_clean_after_python(python_guest: guest.GuestRun) -> None:
    assert python_guest.result("dmesg_bad") == ["0"], python_guest.prefixed("MLOS-DMESG")
    for mode in MODES:
        assert python_guest.result(mode, "rmmod") == ["ok"]
