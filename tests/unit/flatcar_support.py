# SPDX-License-Identifier: Apache-2.0
"""Shared by the Flatcar tests: specs from real command lines, fixed inputs, and a
stand-in kernel build tree made from this machine's Debian headers."""

from __future__ import annotations

import bz2
import shutil
import subprocess
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


# GPT type GUIDs as in Flatcar's disk_layout.json: its /usr partitions, a Linux file system.
FLATCAR_USR_TYPE = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6"
LINUX_FS_TYPE = "0fc63daf-8483-4772-8e79-3d69d8477de4"
MIB = 1 << 20


def write_gpt(disk: Path, size: int, partitions: list[tuple[str, str, int, int]]) -> None:
    """A GPT disk in a plain file of `size` bytes (sfdisk writes it without root):
    partitions as (name, type GUID, start, size), in bytes."""
    subprocess.run(["truncate", "-s", str(size), str(disk)], check=True)
    script = ["label: gpt", *(f'start={start // 512}, size={length // 512}, type={guid}, '
                               f'name="{name}"' for name, guid, start, length in partitions)]
    subprocess.run(["sfdisk", "-q", str(disk)], input="\n".join(script) + "\n", text=True,
                   check=True, capture_output=True)


def stand_in_image(dest: Path, headers: Path | None, os_release: str,
                   kind: str = "production", form: str = "bz2") -> Path:
    """A disk image shaped like a Flatcar release file (build_library/disk_layout.json):
    `production` has USR-A (btrfs, mounted at /usr) between EFI-SYSTEM and USR-B, OEM
    and ROOT; `developer` (the developer container) one ROOT partition (ext4) holding a
    whole root. /usr holds lib/modules/<kver>/build (Debian's headers, symlinks followed)
    and lib/os-release (no build tree when headers is None). `form`: raw, bz2 (how
    Flatcar ships both) or qcow2 (its QEMU image)."""
    from mlos_build.kernel_tree import kernel_release

    work = dest / f"image-{kind}-{form}"
    shutil.rmtree(work, ignore_errors=True)
    usr = work / "root" / ("usr" if kind == "developer" else "")
    lib = usr / "lib"
    (lib / "modules").mkdir(parents=True)
    if headers is not None:
        shutil.copytree(headers, lib / "modules" / str(kernel_release(headers)) / "build",
                        symlinks=False)
    (lib / "os-release").write_text(os_release)
    fs = work / "fs.img"
    if kind == "production":
        subprocess.run(["truncate", "-s", "512M", str(fs)], check=True)
        subprocess.run(["mkfs.btrfs", "-q", "-r", str(work / "root"), "--shrink", str(fs)],
                       check=True, capture_output=True)
        layout = [("EFI-SYSTEM", LINUX_FS_TYPE, MIB), ("BIOS-BOOT", LINUX_FS_TYPE, MIB),
                  ("USR-A", FLATCAR_USR_TYPE, 0), ("USR-B", FLATCAR_USR_TYPE, MIB),
                  ("OEM", LINUX_FS_TYPE, MIB), ("ROOT", LINUX_FS_TYPE, 2 * MIB)]
        fs_partition = "USR-A"
    else:
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(work / "root"), str(fs), "96M"],
                       check=True, capture_output=True)
        layout = [("ROOT", LINUX_FS_TYPE, 0)]
        fs_partition = "ROOT"
    fs_size = -(-fs.stat().st_size // MIB) * MIB
    partitions, start, fs_start = [], MIB, 0
    for name, type_guid, size in layout:
        size = size or fs_size
        if name == fs_partition:
            fs_start = start
        partitions.append((name, type_guid, start, size))
        start += size
    disk = work / "disk.raw"
    write_gpt(disk, start + MIB, partitions)
    with disk.open("r+b") as out, fs.open("rb") as data:
        out.seek(fs_start)
        shutil.copyfileobj(data, out)
    shutil.rmtree(work / "root")
    fs.unlink()
    if form == "raw":
        return disk
    if form == "qcow2":
        qcow2 = work / "flatcar_production_qemu_image.img"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(disk), str(qcow2)],
                       check=True)
        disk.unlink()
        return qcow2
    name = "flatcar_developer_container.bin.bz2" if kind == "developer" else \
        "flatcar_production_image.bin.bz2"
    packed = work / name
    with disk.open("rb") as raw, bz2.open(packed, "wb") as out:
        shutil.copyfileobj(raw, out, 1 << 20)
    disk.unlink()
    return packed


def flatcar_os_release(version: str) -> str:
    return f'NAME="Flatcar Container Linux by Kinvolk"\nID=flatcar\nVERSION_ID={version}\n'
