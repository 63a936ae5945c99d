# SPDX-License-Identifier: Apache-2.0
"""Which host-compiled llama-cpp-python wheel an image release may reuse (glibc rule)."""

from __future__ import annotations

import zipfile
from pathlib import Path

from mlos_build.apt import load_distribution
from mlos_build.llm_wheel import find_seed, seed_release_wheels

VERSION = "0.3.36"
NAME = f"llama_cpp_python-{VERSION}-py3-none-linux_x86_64.whl"


def wheel(path: Path, with_library: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("llama_cpp/__init__.py", "")
        if with_library:
            archive.writestr("llama_cpp/lib/libllama.so", b"\x7fELF")
    return path


def test_newest_seed_not_newer_than_the_release_glibc(tmp_path: Path) -> None:
    old = wheel(tmp_path / "portable-glibc2.31" / NAME)
    bookworm = wheel(tmp_path / "portable-glibc2.36" / NAME)
    wheel(tmp_path / "portable-glibc2.41" / NAME)
    assert find_seed(VERSION, "2.39", tmp_path) == bookworm
    assert find_seed(VERSION, "2.35", tmp_path) == old
    assert find_seed(VERSION, "2.30", tmp_path) is None
    assert find_seed("9.9.9", "2.39", tmp_path) is None


def test_a_wheel_without_llama_libraries_is_never_reused(tmp_path: Path) -> None:
    wheel(tmp_path / "portable-glibc2.36" / NAME, with_library=False)
    assert find_seed(VERSION, "2.39", tmp_path) is None


def test_seeding_copies_once_and_keeps_a_release_built_wheel(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    wheel(seeds / "portable-glibc2.36" / NAME)
    release = tmp_path / "pip" / "mlos-wheels" / "ubuntu-noble"
    copied = seed_release_wheels(f"llama-cpp-python=={VERSION}", release, "2.39", seeds)
    assert copied == release / NAME and copied.read_bytes() == (
        seeds / "portable-glibc2.36" / NAME).read_bytes()
    assert seed_release_wheels(f"llama-cpp-python=={VERSION}", release, "2.39", seeds) is None
    jammy = tmp_path / "pip" / "mlos-wheels" / "ubuntu-jammy"
    assert seed_release_wheels(f"llama-cpp-python=={VERSION}", jammy, "2.35", seeds) is None
    assert not jammy.exists()


def test_every_release_declares_its_glibc() -> None:
    for name in ("ubuntu", "debian"):
        for release in load_distribution(name).releases.values():
            assert release.glibc and all(p.isdigit() for p in release.glibc.split("."))
