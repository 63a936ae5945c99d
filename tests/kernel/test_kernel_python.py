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
    work = tmp_path_factory.mktemp("python-guest")
    run = guest.run_host_root_guest(
        work, selftest_binaries, guest.HERE / "guest_python.sh", timeout=800,
        append=f"mlos.modes={','.join(MODES)} mlos.gpus=-1 mlos.fuzz=0 mlos.extra=1 "
               f"mlos.pymodes={','.join(PY_MODES)}")
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
