# SPDX-License-Identifier: Apache-2.0
"""Every distribution x release x variant x profile renders a project that mkosi 24.3 accepts:
`mkosi --json summary` parses the whole config (an unknown key is fatal) without building."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mlos_build.apt import distribution_names, load_distribution
from mlos_build.data import profile_names, variant_names
from mlos_build.render import ImageSpec, render

COMBOS = [(d, r, v, p) for d in distribution_names() for r in load_distribution(d).releases
          for v in variant_names() for p in profile_names()]


@pytest.mark.skipif(shutil.which("mkosi") is None,
                    reason="mkosi is not installed (scripts/setup.d/40-images.sh installs it)")
@pytest.mark.parametrize(("distribution", "release", "variant", "profile"), COMBOS)
def test_mkosi_summary_parses(tmp_path: Path, distribution: str, release: str,
                              variant: str, profile: str) -> None:
    spec = ImageSpec.create(distribution, variant, release=release, profile=profile,
                            cache_dir=tmp_path / "c")
    render(spec, tmp_path / "p")
    out = subprocess.run(["mkosi", "--directory", tmp_path / "p", "--json", "summary"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    image = json.loads(out.stdout)["Images"][-1]
    assert image["Distribution"] == distribution
    assert image["Release"] == release
    assert image["Format"] == "disk"
    assert image["Bootable"] == "enabled"
    assert "console=ttyS0,115200" in image["KernelCommandLine"]
    assert set(spec.packages()) <= set(image["Packages"])
    assert set(spec.build_packages()) == set(image["BuildPackages"])
    # Each script exactly once: naming a default-named script in the config runs it twice.
    scripts = [Path(s).name for s in image["BuildScripts"]]
    assert scripts == (["mkosi.build.chroot"] if spec.variant.module or spec.with_llm else [])
    assert [Path(s).name for s in image["PostInstallationScripts"]] == ["mkosi.postinst.chroot"]
    assert [Path(t["Source"]).name for t in image["PackageManagerTrees"]] == ["mkosi.pkgmngr"]
    targets = {t["Target"] for t in image["BuildSources"]}
    assert {"assets", "host-certs", "pip-cache"} <= targets
    # metal: the machine takes its host name from DHCP unless --hostname fixes one.
    assert image["Hostname"] == (None if spec.profile.wired_dhcp else "mlos")
