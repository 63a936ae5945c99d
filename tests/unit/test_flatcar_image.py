# SPDX-License-Identifier: Apache-2.0
"""--kernel-build-tree given a Flatcar image file: the production image (bzip2, as
Flatcar ships it, and its QEMU qcow2) and the developer container, made here in Flatcar's
partition layout around this machine's Debian headers. The tree read out of each must be
the headers, file for file and mode for mode; bad images get one line and a hint.
(tests/unit/test_flatcar_build.py compiles the module from such an image.)"""

from __future__ import annotations

import bz2
import os
import stat
from pathlib import Path

import pytest
from flatcar_support import (
    LINUX_FS_TYPE,
    MIB,
    TREE_VERSION,
    flatcar_os_release,
    headers_dir,
    stand_in_image,
    write_gpt,
)
from test_build_cli import error_lines, mlos_build

from mlos_build.flatcar import FlatcarData
from mlos_build.kernel_tree import kernel_release, open_tree

HEADERS = headers_dir()
pytestmark = pytest.mark.skipif(HEADERS is None, reason="no Debian kernel headers in /usr/src "
                                "(scripts/setup.d/30-kernel.sh installs them)")


def listing(top: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under top: its mode, size and (for links) target; links followed the
    way the images were made (copies of the headers with symlinks followed)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            info = path.stat()
            size = info.st_size if stat.S_ISREG(info.st_mode) else 0
            found[str(path.relative_to(top))] = (info.st_mode, size, "")
    return found


def build_error(tmp_path: Path, tree: Path) -> list[str]:
    return error_lines(mlos_build(
        "flatcar", "--variant", "basic", "--flatcar-version", TREE_VERSION,
        "--kernel-build-tree", str(tree), "--container-image", "x:1",
        "--output-dir", str(tmp_path / "out")))


@pytest.mark.parametrize(("kind", "form"), [("production", "bz2"), ("production", "qcow2"),
                                            ("developer", "raw")])
def test_the_tree_is_read_out_of_the_image(tmp_path: Path, kind: str, form: str) -> None:
    assert HEADERS is not None
    image = stand_in_image(tmp_path, HEADERS, flatcar_os_release(TREE_VERSION), kind, form)
    flatcar = FlatcarData.load()
    work = tmp_path / "work"
    work.mkdir()
    tree = open_tree(image, work, TREE_VERSION, flatcar.os_release_id,
                     flatcar.required_kernel_config, flatcar.kernel_architecture_config)
    assert tree.release == kernel_release(HEADERS)
    assert tree.os_release["VERSION_ID"] == TREE_VERSION
    assert listing(tree.build) == listing(HEADERS)
    fixdep = tree.build / "scripts" / "basic" / "fixdep"
    assert fixdep.read_bytes() == (HEADERS / "scripts" / "basic" / "fixdep").read_bytes()
    # Only the partition's file system was kept while reading, and it is gone now.
    assert sorted(p.name for p in work.iterdir()) == ["kernel-tree"]


def test_an_image_of_another_release_is_refused(tmp_path: Path) -> None:
    assert HEADERS is not None
    image = stand_in_image(tmp_path, HEADERS, flatcar_os_release("3975.2.0"))
    lines = build_error(tmp_path, image)
    assert lines[0] == (f"mlos-build: error: --kernel-build-tree {image} is from flatcar "
                        f"3975.2.0, not flatcar {TREE_VERSION}")
    assert (f"flatcar-linux.net/amd64-usr/{TREE_VERSION}/flatcar_production_image.bin.bz2"
            in lines[1])


def test_an_image_without_a_kernel_tree(tmp_path: Path) -> None:
    image = stand_in_image(tmp_path, None, flatcar_os_release(TREE_VERSION))
    lines = build_error(tmp_path, image)
    assert "the production image's /usr has no lib/modules/<kver>/build" in lines[0]


def test_a_truncated_download(tmp_path: Path) -> None:
    assert HEADERS is not None
    image = stand_in_image(tmp_path, HEADERS, flatcar_os_release(TREE_VERSION))
    data = image.read_bytes()
    image.write_bytes(data[:len(data) // 2])
    lines = build_error(tmp_path, image)
    assert "is cut short" in lines[0] and "truncated download" in lines[0]


def test_a_disk_that_is_no_flatcar_image(tmp_path: Path) -> None:
    disk = tmp_path / "other.img"
    write_gpt(disk, 8 * MIB, [("data", LINUX_FS_TYPE, MIB, 4 * MIB)])
    packed = tmp_path / "other.img.bz2"
    packed.write_bytes(bz2.compress(disk.read_bytes()))
    lines = build_error(tmp_path, packed)
    assert "neither a USR-A nor a ROOT partition (it has data)" in lines[0]
    assert "flatcar_production_image.bin.bz2" in lines[1]


def test_a_damaged_partition_table(tmp_path: Path) -> None:
    disk = tmp_path / "damaged.img"
    write_gpt(disk, 8 * MIB, [("USR-A", LINUX_FS_TYPE, MIB, 4 * MIB)])
    data = bytearray(disk.read_bytes())
    # The first entry (LBA 2) ends before it starts: last LBA 1, first 2048.
    data[1024 + 40:1024 + 48] = (1).to_bytes(8, "little")
    disk.write_bytes(bytes(data))
    lines = build_error(tmp_path, disk)
    assert "has a damaged GPT partition table (partition entry 0 ends before it starts)" \
        in lines[0]
    truncated = tmp_path / "short.img"
    truncated.write_bytes(bytes(data[:520]))
    assert "damaged GPT partition table" in build_error(tmp_path, truncated)[0]
