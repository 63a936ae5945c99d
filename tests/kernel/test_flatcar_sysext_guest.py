# SPDX-License-Identifier: Apache-2.0
"""The Flatcar extension's module loader in a real kernel: `mlos-build flatcar` against
the newest guest kernel's headers (standing in for a Flatcar release's tree), the
extension merged over the host's /usr in a QEMU guest as systemd-sysext merges it, and
its mlos-ml-load run there: the xz module loads by path, with the variant's options
(read back through `modprobe -c`), although no modules.dep knows it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlos_guest as guest
import pytest

sys.path.insert(0, str(guest.REPO / "tests" / "unit"))
from flatcar_support import TREE_VERSION, flatcar_os_release, stand_in_tree  # noqa: E402

from mlos_build.data import load_variant  # noqa: E402

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(900)]
VARIANT = "scheduler"


@pytest.fixture(scope="module")
def sysext_guest() -> Iterator[guest.GuestRun]:
    kernels = guest.guest_kernels()
    if not kernels:
        pytest.fail("no guest kernels: run ./scripts/setup.sh")
    abi = kernels[-1]
    # Under /tmp, not pytest's root-only directories: the guest reads it over 9p (no tmpfs
    # covers the host's /tmp in this guest).
    work = guest.scratch_dir("mlos-sysext-")
    tree = stand_in_tree(work, guest.headers_dir(abi), flatcar_os_release(TREE_VERSION))
    built = subprocess.run(
        [sys.executable, "-m", "mlos_build.cli", "flatcar", "--variant", VARIANT,
         "--flatcar-version", TREE_VERSION, "--kernel-build-tree", str(tree),
         "--container-image", "mlos-core:test", "--output-dir", str(work / "out")],
        capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    image = Path(built.stdout.strip())
    run = guest.boot_host_root(
        abi, work, {}, init=guest.HERE / "guest_sysext.sh",
        modules=(*guest.NINEP_MODULES, "loop", "squashfs", "overlay"),
        append=f"mlos.sysext={image}", memory_mb=1024, timeout=400)
    yield run
    if not os.environ.get("MLOS_KEEP_GUEST_WORK"):
        shutil.rmtree(work, ignore_errors=True)


def test_the_extension_merges(sysext_guest: guest.GuestRun) -> None:
    for step in ("squashfs", "merged"):
        assert sysext_guest.result("sysext", step) == ["ok"], sysext_guest.output[-3000:]


def test_the_loader_loads_the_module_with_the_variant_options(
        sysext_guest: guest.GuestRun) -> None:
    run = sysext_guest
    assert run.result("load_rc") == ["0"], run.prefixed("MLOS-LOAD")
    module = load_variant(VARIANT).module
    assert module is not None
    for key, value in module.parameters.items():
        read = run.result("param", key)
        assert read is not None, (key, run.prefixed("MLOS-LOAD"))
        assert read[0] in (str(value), "Y" if value else "N"), (key, read)
    assert run.result("again_rc") == ["0", "mlos_ml_is_already_loaded"]
    assert run.result("dmesg_bad") == ["0"]
