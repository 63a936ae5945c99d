# SPDX-License-Identifier: Apache-2.0
"""mlos-build installed from its wheel into a fresh venv outside the checkout builds a
Debian userspace `vm` image (the MLOS inside is the installed package, packed back into
a wheel), with its release artifacts that `mlos-build verify` accepts. (A release's
.qcow2 booting is tested on the CI's vm image, tests/images/test_images.py.)

The build shares MLOS_BUILD_CACHE_DIR with the other images tests (the same Debian
bookworm userspace vm image, so mkosi's caches are warm) and leaves the LLM out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.images]

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = os.environ.get("MLOS_BUILD_CACHE_DIR", "/var/cache/mlos-build")
PIP = (sys.executable, "-m", "pip")


def run(*argv: str | Path, cwd: Path, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def test_installed_wheel_builds_a_verified_image(tmp_path: Path) -> None:
    built = run(*PIP, "wheel", "--quiet", "--no-deps", "-w", tmp_path / "dist", REPO,
                cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("mlos-*.whl"))
    venv = tmp_path / "venv"
    assert run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path).returncode == 0
    installed = run(*PIP, "--python", venv / "bin" / "python", "install", "--quiet",
                    f"{wheel}[build]", cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-2000:]
    exe = venv / "bin" / "mlos-build"
    out = tmp_path / "output"
    image_build = run(exe, "debian", "--variant", "userspace", "--without-llm",
                      "--profile", "vm", "--cache-dir", CACHE_DIR, "--output-dir", out,
                      cwd=tmp_path)
    assert image_build.returncode == 0, image_build.stderr[-3000:]
    assert "building the MLOS wheel from the installed mlos package" in image_build.stderr
    name = "mlos-debian-bookworm-userspace-vm"
    manifest = json.loads((out / f"{name}.manifest.json").read_text())
    # The image's MLOS is the installed wheel's (packed back from the installed files).
    assert manifest["mlos_core_version"] == wheel.name.split("-")[1]
    for suffix in (".raw", ".bmap", ".qcow2", ".spdx.json"):
        assert (out / f"{name}{suffix}").is_file(), suffix
    # The real image's SBOM (every Debian and Python package) is valid SPDX 2.3.
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    document = parse_file(str(out / f"{name}.spdx.json"))
    assert validate_full_spdx_document(document, "SPDX-2.3") == []
    assert len(document.packages) > len(manifest["packages"]) > 100
    verified = run(exe, "verify", out, cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    # The image boots as its .qcow2 in test_images.py's vm test (one boot less in CI).
