# SPDX-License-Identifier: Apache-2.0
"""The wheel, installed into a fresh venv outside the checkout, gives a working
mlos-build: its images/ and kernel/ trees travel as package data, and the MLOS that
goes into an image is the installed package itself, packed back into a wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PIP = (sys.executable, "-m", "pip")


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH or venv of the checkout may leak into the installed builder.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the mlos wheel (no checkout on its path) and the builder's own imports;
    the service's heavy dependencies (onnxruntime, grpcio) are left out: render and help
    do not import them."""
    base = tmp_path_factory.mktemp("installed")
    built = run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                "--no-build-isolation", "-w", base / "dist", REPO)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((base / "dist").glob("mlos-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for needed in ("mlos_build/images/distributions/debian.yaml",
                   "mlos_build/images/mkosi/mkosi.conf.j2", "mlos_build/kernel/Kbuild",
                   "mlos_build/kernel/dkms.conf", "mlos_build/kernel/udev/99-mlos-ml.rules",
                   "mlos_build/kernel/main.c", "mlos_core/data/mlos-core.service"):
        assert needed in names, f"{needed} is not in the wheel"
    assert not [n for n in names if n.endswith((".o", ".ko", ".cmd"))]
    venv = base / "venv"
    # Without its own pip (ensurepip is slow): this pip installs into it with --python.
    assert run(sys.executable, "-m", "venv", "--without-pip", venv).returncode == 0
    pip = run(*PIP, "--python", venv / "bin" / "python", "install", "--quiet", "--no-deps",
              wheel)
    assert pip.returncode == 0, pip.stderr[-2000:]
    deps = run(*PIP, "--python", venv / "bin" / "python", "install", "--quiet",
               "jinja2>=3.1", "pyyaml>=6")
    assert deps.returncode == 0, deps.stderr[-2000:]
    return venv


def test_installed_mlos_build_renders_from_its_package_data(installed: Path,
                                                             tmp_path: Path) -> None:
    exe = installed / "bin" / "mlos-build"
    where = run(installed / "bin" / "python", "-c",
                "import mlos_build.data as d; print(d.checkout()); print(d.images_dir())",
                cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    checkout, images = where.stdout.split()
    assert checkout == "None" and images.startswith(str(installed))
    helped = run(exe, "--help", cwd=tmp_path)
    assert helped.returncode == 0 and "flash" in helped.stdout and "ubuntu" in helped.stdout
    for distribution, variant in (("ubuntu", "full"), ("debian", "userspace")):
        out = tmp_path / f"{distribution}.mkosi"
        rendered = run(exe, "render", distribution, "--variant", variant, "--output-dir", out,
                       cwd=tmp_path)
        assert rendered.returncode == 0, rendered.stderr
        conf = (out / "mkosi.conf").read_text()
        assert f"Distribution={distribution}" in conf
        if variant == "full":
            assert (out / "mkosi.build.chroot").exists()
            assert "dkms" in conf


def test_installed_package_packs_back_into_the_wheel_it_came_from(installed: Path,
                                                                  tmp_path: Path) -> None:
    """What `mlos-build ubuntu` installs into an image when there is no checkout."""
    packed = run(installed / "bin" / "python", "-c",
                 "from pathlib import Path; from mlos_build.source import MlosSource; "
                 f"print(MlosSource.default().wheel(Path({str(tmp_path)!r})))", cwd=tmp_path)
    assert packed.returncode == 0, packed.stderr
    wheel = Path(packed.stdout.strip())
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mlos_core/app.py" in names and "mlos_build/kernel/Kbuild" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    record = next(n for n in names if n.endswith(".dist-info/RECORD"))
    assert len(zipfile.ZipFile(wheel).read(record).decode().splitlines()) == len(names)
    # pip accepts it (RECORD hashes included) and installs the same files.
    again = run(*PIP, "install", "--quiet", "--no-deps", "--target", tmp_path / "again", wheel)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "again" / "mlos_build" / "images" / "mkosi" / "mkosi.conf.j2").exists()
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "llama-cpp-python==" in zipfile.ZipFile(wheel).read(metadata).decode()
