# SPDX-License-Identifier: Apache-2.0
"""The key a disk image's cached Python environment is kept under (mkosi.postinst.chroot
reuses it): MLOS's own code may change under the same key, its declared dependencies,
extras and release may not."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from mlos_build.targets.mkosi_disk import venv_key

REQUIRES = ["Requires-Dist: numpy>=1.26", "Requires-Dist: onnxruntime>=1.17",
            'Requires-Dist: llama-cpp-python==0.3.16; extra == "llm"']


def wheel(path: Path, requires: list[str], code: str = "x = 1\n") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mlos-0.1.0.dist-info/METADATA",
                         "Metadata-Version: 2.1\nName: mlos\nVersion: 0.1.0\n"
                         + "".join(f"{line}\n" for line in requires))
        archive.writestr("mlos_core/__init__.py", code)
    return path


def test_new_code_with_the_same_dependencies_keeps_the_key(tmp_path: Path) -> None:
    a = wheel(tmp_path / "a.whl", REQUIRES)
    b = wheel(tmp_path / "b.whl", list(reversed(REQUIRES)), code="x = 2\n")
    assert venv_key(a, "ubuntu", "noble", "llm,report") == \
        venv_key(b, "ubuntu", "noble", "llm,report")
    assert venv_key(a, "ubuntu", "noble", "llm,report").startswith("ubuntu-noble-llm+report-")


def test_dependencies_extras_and_release_change_the_key(tmp_path: Path) -> None:
    base = venv_key(wheel(tmp_path / "a.whl", REQUIRES), "ubuntu", "noble", "llm,report")
    bumped = wheel(tmp_path / "b.whl", [*REQUIRES[:2], REQUIRES[2].replace("16", "17")])
    assert venv_key(bumped, "ubuntu", "noble", "llm,report") != base
    added = wheel(tmp_path / "c.whl", [*REQUIRES, "Requires-Dist: grpcio>=1.60"])
    assert venv_key(added, "ubuntu", "noble", "llm,report") != base
    same = tmp_path / "a.whl"
    assert venv_key(same, "ubuntu", "noble", "report") != base
    assert venv_key(same, "ubuntu", "jammy", "llm,report") != base
    assert venv_key(same, "debian", "noble", "llm,report") != base


def test_each_package_set_has_its_own_mkosi_cache(tmp_path: Path) -> None:
    from mlos_build.render import ImageSpec
    from mlos_build.targets.mkosi_disk import MkosiDiskTarget

    def cache(variant: str, profile: str, with_llm: bool = True) -> Path:
        spec = ImageSpec.create("ubuntu", variant, profile=profile, cache_dir=tmp_path,
                                with_llm=with_llm)
        return MkosiDiskTarget(spec, None, lambda line: None).mkosi_cache_dir()

    dirs = {cache("full", "metal"), cache("full", "vm"), cache("userspace", "vm"),
            cache("full", "vm", with_llm=False)}
    assert len(dirs) == 4
    assert all(d.parent == tmp_path / "mkosi" for d in dirs)
    # basic and full install the same packages (only module parameters differ).
    assert cache("basic", "vm") == cache("full", "vm")


def test_short_of_space_a_build_drops_other_package_sets_never_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlos_build.render import ImageSpec
    from mlos_build.targets import mkosi_disk

    said: list[str] = []

    def target(profile: str) -> mkosi_disk.MkosiDiskTarget:
        spec = ImageSpec.create("ubuntu", "full", profile=profile, cache_dir=tmp_path)
        return mkosi_disk.MkosiDiskTarget(spec, None, said.append)

    metal, vm = target("metal"), target("vm")
    for t in (metal, vm):
        (t.mkosi_cache_dir() / "tree").mkdir(parents=True)
    # Neither a package set's manifest file nor another cache's directory is a candidate.
    (tmp_path / "mkosi" / "ubuntu~noble~x86-64.manifest").write_text("{}")
    (tmp_path / "mkosi" / "ubuntu~noble~x86-64.cache").mkdir()
    monkeypatch.setattr(mkosi_disk, "MIN_FREE_BYTES", 1 << 60)  # never enough: all goes
    vm.make_room(tmp_path / "out")
    assert vm.mkosi_cache_dir().is_dir() and not metal.mkosi_cache_dir().exists()
    assert (tmp_path / "mkosi" / "ubuntu~noble~x86-64.cache").is_dir()
    assert len(said) == 1 and str(metal.mkosi_cache_dir()) in said[0]
