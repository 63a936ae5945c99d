# SPDX-License-Identifier: Apache-2.0
"""mlos-ml builds: warning-free against Ubuntu jammy (5.15) and noble (6.8) headers, through
DKMS, and signed with a given key (Secure Boot). Debian 6.1/6.12 builds run with the guests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mlos_guest as guest
import pytest

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]


@pytest.mark.parametrize("release", ["jammy", "noble"])
def test_compiles_warning_free_on_ubuntu(release: str, tmp_path: Path) -> None:
    kdir = guest.ubuntu_headers(release)
    if kdir is None:
        pytest.fail(f"Ubuntu {release} headers missing: run ./scripts/setup.sh")
    # Ubuntu built its kernels with its own gcc (11 / 13); Debian's gcc 12 stands in.
    build = guest.build_module(kdir, tmp_path, extra=["CC=gcc"])
    assert build.ko.exists()
    assert not build.warnings, build.warnings
    info = subprocess.run(["modinfo", "-F", "vermagic", str(build.ko)], capture_output=True,
                          text=True, check=True).stdout
    assert info.startswith(kdir.name.removeprefix("linux-headers-")), info


def _debian_kernel() -> str:
    kernels = guest.guest_kernels()
    if not kernels:
        pytest.fail("no guest kernels: run ./scripts/setup.sh")
    return kernels[-1]


def test_signed_with_given_key(tmp_path: Path) -> None:
    abi = _debian_kernel()
    key, cert = tmp_path / "signing_key.pem", tmp_path / "signing_cert.pem"
    subprocess.run(["openssl", "req", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "1", "-subj", "/CN=mlos-ml test signer/", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    src = guest.copy_sources(tmp_path / "src")
    proc = subprocess.run(["make", "-C", str(src), f"KDIR={guest.headers_dir(abi)}", "sign",
                           f"SIGN_KEY={key}", f"SIGN_CERT={cert}"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ko = src / "mlos_ml.ko"
    assert ko.read_bytes().endswith(b"~Module signature appended~\n")
    signer = subprocess.run(["modinfo", "-F", "signer", str(ko)], capture_output=True,
                            text=True, check=True).stdout.strip()
    assert signer == "mlos-ml test signer"


def test_image_builder_commands(tmp_path: Path) -> None:
    """The exact commands the image builder runs: build in the tree, install to DESTDIR."""
    abi = _debian_kernel()
    src = guest.copy_sources(tmp_path / "repo" / "kernel")
    kdir = str(guest.headers_dir(abi))
    subprocess.run(["make", "-C", kdir, f"M={src}", "modules"], check=True,
                   capture_output=True)
    dest = tmp_path / "destdir"
    proc = subprocess.run(["make", "-C", kdir, f"M={src}", f"INSTALL_MOD_PATH={dest}",
                           "INSTALL_MOD_DIR=updates", "CONFIG_MODULE_SIG_ALL=",
                           "modules_install"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in (proc.stdout + proc.stderr).lower(), proc.stderr
    installed = list((dest / "lib" / "modules" / abi / "updates").glob("mlos_ml.ko*"))
    assert len(installed) == 1, list(dest.rglob("*"))


def test_dkms_builds_it(tmp_path: Path) -> None:
    if not shutil.which("dkms"):
        pytest.fail("dkms missing: run ./scripts/setup.sh")
    abi = _debian_kernel()
    if not Path(f"/lib/modules/{abi}/build").exists():
        pytest.fail(f"/lib/modules/{abi}/build missing: run ./scripts/setup.sh")
    guest.copy_sources(tmp_path / "src" / "mlos-ml-0.1.0")
    (tmp_path / "tree").mkdir()
    proc = subprocess.run(["dkms", "build", "mlos-ml/0.1.0", "-k", abi, "--dkmstree",
                           str(tmp_path / "tree"), "--sourcetree", str(tmp_path / "src")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built = list((tmp_path / "tree").rglob("mlos_ml.ko*"))
    assert built, proc.stdout
