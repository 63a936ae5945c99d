# SPDX-License-Identifier: Apache-2.0
"""The flash refusal rule that needs device-mapper (`held`), in a QEMU guest: the CI
host's kernel has no device-mapper, Debian's has it as a module. The guest runs
tests/unit/test_flash.py's device-mapper test from this checkout with the host's venv
(host root over 9p, mlos_guest.boot_host_root) against its own loop and dm devices; here
it must pass, not skip."""

from __future__ import annotations

from pathlib import Path

import mlos_guest as guest
import pytest

pytestmark = pytest.mark.kernel

HERE = Path(__file__).resolve().parent


def test_held_by_device_mapper_is_refused_in_a_guest(tmp_path: Path) -> None:
    kernels = guest.guest_kernels()
    if not kernels:
        pytest.fail("no guest kernels: run ./scripts/setup.sh")
    abi = kernels[0]
    # ext4 for a file system on the stacked device; crc32c is its soft dependency.
    modules = (*guest.NINEP_MODULES, "loop", "dm_mod", "crc32c_generic", "ext4")
    run = guest.boot_host_root(abi, tmp_path, {}, init=HERE / "guest_flash.sh",
                               modules=modules, append="mlos.tests=held_by_device_mapper",
                               memory_mb=1536, timeout=900)
    log = "\n".join(line for line in run.output.splitlines() if "MLOS-" in line)
    log = log[:1000] + "\n...\n" + log[-3000:] if len(log) > 4000 else log
    assert run.result("dm_control") == ["/mnt/host/dev/mapper/control"], log
    assert run.result("pytest_rc") == ["0"], log
    assert "1 passed" in log and "skipped" not in log, log
