# SPDX-License-Identifier: Apache-2.0
"""Full image builds booted under QEMU (marked `images`; 25-30 min cold under TCG: llama.cpp
compiles once per release, then its wheel is cached).

CI builds and smoke-tests the two images the project promises: Ubuntu noble with the
full module, and Debian bookworm userspace. The in-guest check reports its verdict to the
host over a virtio port (no console scraping), then powers the guest off.
MLOS_BUILD_CACHE_DIR (default /var/cache/mlos-build) keeps packages and pip wheels between
runs; MLOS_SOURCE builds another MLOS checkout than this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlos_build.data import load_variant

pytestmark = [pytest.mark.images, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
CACHE_DIR = os.environ.get("MLOS_BUILD_CACHE_DIR", "/var/cache/mlos-build")
SOURCE = os.environ.get("MLOS_SOURCE", str(REPO))


def mlos_build(*args: str) -> subprocess.CompletedProcess[str]:
    # Progress goes to stderr: shown live with `pytest -s`, and in the report on failure.
    return subprocess.run([sys.executable, "-m", "mlos_build.cli", *args], text=True,
                          stdout=subprocess.PIPE, check=False)


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


@pytest.mark.parametrize(("distribution", "release", "variant"),
                         [("ubuntu", "noble", "full"), ("debian", "bookworm", "userspace")])
def test_image_builds_boots_and_serves(output_dir: Path, distribution: str, release: str,
                                       variant: str) -> None:
    built = mlos_build(distribution, "--variant", variant, "--release", release,
                       "--output-dir", str(output_dir), "--cache-dir", CACHE_DIR,
                       "--mlos-source", SOURCE)
    assert built.returncode == 0, "build failed (see the captured stderr)"
    image = Path(built.stdout.strip().splitlines()[-1])
    name = f"mlos-{distribution}-{release}-{variant}"
    assert image == output_dir / f"{name}.raw"

    manifest = json.loads((output_dir / f"{name}.manifest.json").read_text())
    assert (manifest["distribution"], manifest["release"], manifest["variant"]) == (
        distribution, release, variant)
    assert manifest["kernel_version"]
    package_names = {p["name"] for p in manifest["packages"]}
    assert {"systemd", "python3"} <= package_names
    assert "onnxruntime" in {p["name"] for p in manifest["python_packages"]}
    spec = load_variant(variant)
    if spec.module:
        assert manifest["module_vermagic"].split()[0] == manifest["kernel_version"]
        assert manifest["module_parameters"] == spec.module.parameters
    else:
        assert manifest["module_vermagic"] is None
    sums = subprocess.run(["sha256sum", "--check", "--ignore-missing", "SHA256SUMS"],
                          cwd=output_dir, capture_output=True, text=True, check=False)
    assert sums.returncode == 0 and f"{name}.raw: OK" in sums.stdout

    tested = mlos_build("test", str(image))
    print(tested.stdout)
    assert tested.returncode == 0, tested.stdout
    assert "smoke test passed" in tested.stdout
    for check in ("health", "units", "module", "dkms", "inference", "llm"):
        assert f"ok   {check}:" in tested.stdout
    # LLM support is in every image by default: llama.cpp's libraries load in the guest.
    assert manifest["with_llm"] is True
    assert "llama_cpp_python" in {p["name"].replace("-", "_").lower()
                                  for p in manifest["python_packages"]}
    assert "ok   llm: llama-cpp-python" in tested.stdout
    if spec.module:
        assert "dkms" in package_names
    assert f"runtime_mode={spec.runtime_mode}" in tested.stdout

    if (distribution, variant) != ("ubuntu", "full"):
        return
    # The in-guest E2E report suite, tiny settings (about 5 min under TCG): results come
    # back over the validation port and the card comes from the guest's own /health.
    out = output_dir / f"validate-{name}"
    validated = mlos_build("validate", str(image), "--out", str(out), "--suite-args",
                           "--repetitions 1 --requests 5 --warmup 1 --concurrency 1 "
                           "--protocols http --tensor-sizes-mib 1 --tensor-requests 2 "
                           "--json-requests 1 --json-max-mib 1 --no-llm")
    assert validated.returncode == 0, (out / "guest.json").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["runtime_mode"] == spec.runtime_mode
    shm = [p for p in results["tensor_series"]["points"] if p["transport"] == "shm"]
    assert shm and shm[0]["errors"] == 0 and shm[0]["ok"] == 2
    assert "Kernel Module (Full: Memory, Scheduler, GPU)" in (out / "report.html").read_text()
