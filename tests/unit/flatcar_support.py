# SPDX-License-Identifier: Apache-2.0
"""Shared by the Flatcar tests: specs from real command lines, fixed inputs, and a
stand-in kernel build tree made from this machine's Debian headers."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

import mlos_build
from mlos_build import cli
from mlos_build.flatcar import FlatcarSpec
from mlos_build.targets.flatcar import FlatcarTarget

REPO = Path(__file__).resolve().parents[2]
VERSION = "4152.2.3"
# A stand-in release for trees made from Debian's headers: their os-release says it.
TREE_VERSION = "9999.0.0"
SSH_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOiKlVQ2r8ZcXnOgFW4bTqHm2uZ9mKCb1oYpGkT1mLx8 "
           "ops@example")
API_KEY = "0123456789abcdef0123456789abcdef"
SHA512 = "ab" * 64


def spec(*args: str, build: bool = False, output_dir: Path | None = None) -> FlatcarSpec:
    """The spec `mlos-build [render] flatcar ARGS` builds from."""
    argv = ["flatcar"] if build else ["render", "flatcar"]
    if "--flatcar-version" not in args:
        argv += ["--flatcar-version", VERSION]
    if output_dir is not None:
        argv += ["--output-dir", str(output_dir)]
    parsed = cli.build_parser().parse_args([*argv, *args])
    return FlatcarTarget.spec_from_args("flatcar", parsed, build=build)


def inputs(tmp_path: Path) -> list[str]:
    """--ssh-key, --api-key-file and --extra-file options with fixed contents."""
    key = tmp_path / "ops.pub"
    key.write_text(SSH_KEY + "\n")
    api = tmp_path / "api-key"
    api.write_text(API_KEY + "\n")
    extra = tmp_path / "chrony.conf"
    extra.write_text("server time.example iburst\n")
    extra.chmod(0o640)
    return ["--ssh-key", str(key), "--api-key-file", str(api),
            "--extra-file", f"{extra}:/etc/chrony.conf"]


def pin_version(monkeypatch: pytest.MonkeyPatch) -> str:
    """Renders that do not depend on this checkout's version (the container tag)."""
    monkeypatch.setattr(mlos_build, "__version__", "0.0.0-golden")
    return "0.0.0-golden"


def headers_dir() -> Path | None:
    """The newest Debian amd64 headers here (scripts/setup.d/30-kernel.sh installs them)."""
    found = sorted(p for p in Path("/usr/src").glob("linux-headers-*-amd64")
                   if (p / ".config").is_file() and (p / "Module.symvers").is_file())
    return found[-1] if found else None


def stand_in_tree(dest: Path, headers: Path, os_release: str) -> Path:
    """A tarball shaped like the one docs/flatcar.md has users take from a node: build/
    (here Debian's headers, symlinks followed as `tar -h` does) and os-release."""
    release = dest / "os-release"
    release.write_text(os_release)
    tarball = dest / "kernel-tree.tar.gz"
    with tarfile.open(tarball, "w:gz", dereference=True) as archive:
        archive.add(headers, arcname="build")
        archive.add(release, arcname="os-release")
    return tarball


def flatcar_os_release(version: str) -> str:
    return f'NAME="Flatcar Container Linux by Kinvolk"\nID=flatcar\nVERSION_ID={version}\n'
