# SPDX-License-Identifier: Apache-2.0
"""Scratch disks for the flash and release tests: a small real raw disk image (GPT, an
ESP and an ext4 root with a file, made with sfdisk + mkfs) and loop devices over scratch
files, all torn down afterwards (swap off, unmounted, detached). Nothing here touches a
real disk; loop devices are detached by their own name only."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MiB = 1 << 20
ROOT_FILE_SIZE = 4 * MiB


def sh(*argv: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=check)


def need_root_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices)")
    missing = [t for t in ("losetup", "sfdisk", "mkfs.ext4", *tools) if not shutil.which(t)]
    if missing:
        pytest.fail(f"missing host tools {missing}: run ./scripts/setup.sh")


def make_raw_image(path: Path, size_mib: int = 48, seed: int = 1) -> Path:
    """A real GPT disk image: an 8 MiB ESP (vfat) and an ext4 root holding a file of
    pseudo-random bytes, with holes where nothing was written."""
    need_root_tools("mkfs.vfat")
    sh("truncate", "-s", f"{size_mib}M", path)
    layout = ("label: gpt\n"
              "start=2048, size=16384, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n"
              "start=18432, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root\n")
    subprocess.run(["sfdisk", "-q", str(path)], input=layout, text=True, check=True,
                   capture_output=True)
    sh("mkfs.vfat", "-n", "ESP", "--offset", "2048", path, str(16384 // 2))
    content = path.parent / f".{path.name}.root"
    content.mkdir(exist_ok=True)
    (content / "data.bin").write_bytes(pseudo_random(ROOT_FILE_SIZE, seed))
    (content / "hello").write_text("MLOS flash test\n")
    root_kib = (size_mib * MiB - 18432 * 512 - MiB) // 1024
    sh("mkfs.ext4", "-q", "-F", "-E", f"offset={18432 * 512}", "-d", content, path,
       f"{root_kib}k")
    shutil.rmtree(content)
    return path


def pseudo_random(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


class Loops:
    """Loop devices (and what the test put on them), undone in reverse order."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.undo: list[list[str]] = []

    def attach(self, size_mib: int | None = None, *, backing: Path | None = None,
               partitions: bool = False, fill: int | None = None) -> Path:
        if backing is None:
            backing = self.tmp / f"loop-{len(self.undo)}.img"
            with open(backing, "wb") as f:
                if fill is None:
                    f.truncate((size_mib or 16) * MiB)
                else:
                    f.write(bytes([fill]) * (size_mib or 16) * MiB)
        argv = ["losetup", "--find", "--show", *(["--partscan"] if partitions else []),
                str(backing)]
        dev = sh(*argv).stdout.strip()
        self.undo.append(["losetup", "--detach", dev])
        if partitions:
            sh("partx", "--add", dev, check=False)  # no udev here: add the nodes ourselves
        return Path(dev)

    def mount(self, dev: Path, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        sh("mount", dev, where)
        self.undo.append(["umount", str(where)])

    def swapon(self, dev: Path) -> None:
        sh("mkswap", "-q", dev)
        sh("swapon", dev)
        self.undo.append(["swapoff", str(dev)])

    def close(self) -> None:
        for argv in reversed(self.undo):
            sh(*argv, check=False)
        self.undo.clear()


@contextlib.contextmanager
def loops(tmp: Path) -> Iterator[Loops]:
    need_root_tools()
    holder = Loops(tmp)
    try:
        yield holder
    finally:
        holder.close()


def backing_file(dev: Path) -> Path:
    return Path(Path(f"/sys/class/block/{dev.name}/loop/backing_file").read_text().strip())


@contextlib.contextmanager
def write_throttle(devno: str, bytes_per_s: int) -> Iterator[Path]:
    """A cgroup whose writes to devno are throttled (blkio v1 or io.max on v2); yields its
    cgroup.procs. Lets a test interrupt a flash in the middle of writing."""
    v1 = Path("/sys/fs/cgroup/blkio")
    v2 = Path("/sys/fs/cgroup")
    name = f"mlos-flash-test-{os.getpid()}"
    if (v1 / "blkio.throttle.write_bps_device").exists():
        group = v1 / name
        group.mkdir()
        (group / "blkio.throttle.write_bps_device").write_text(f"{devno} {bytes_per_s}\n")
    elif "io" in (v2 / "cgroup.controllers").read_text().split() if (
            v2 / "cgroup.controllers").exists() else False:
        control = v2 / "cgroup.subtree_control"
        if "io" not in control.read_text().split():
            control.write_text("+io\n")
        group = v2 / name
        group.mkdir()
        (group / "io.max").write_text(f"{devno} wbps={bytes_per_s}\n")
    else:
        pytest.skip("no blkio throttling (cgroup v1 blkio or v2 io) to slow a write down")
    try:
        yield group / "cgroup.procs"
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()
