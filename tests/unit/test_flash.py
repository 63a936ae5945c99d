# SPDX-License-Identifier: Apache-2.0
"""mlos-build flash: every refusal rule against real loop devices (and, for "backs the
running system", this machine's own sysfs and mountinfo, read only: no test opens a real
disk), flashing to a loop device and to a file, a corruption between write and read-back,
and Ctrl-C in the middle of a write."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from disk_support import (
    MiB,
    backing_file,
    loops,
    make_raw_image,
    need_root_tools,
    sh,
    write_throttle,
)

from mlos_build import blockdev, bmap, flash
from mlos_build.errors import BuildError

CLI = [sys.executable, "-m", "mlos_build.cli"]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_raw_image(tmp_path_factory.mktemp("flash-image") / "disk.raw")


def rules(target: Path, size: int, **kw: object) -> list[str]:
    return [r.rule for r in blockdev.check_target(target, size, **kw).refusals]  # type: ignore[arg-type]


def mlos_flash(*args: str | Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "flash", *map(str, args)], input=stdin, text=True,
                          capture_output=True, timeout=300)


# --- block maps ---------------------------------------------------------------------------

def test_bmap_matches_bmaptool_both_ways(image: Path, tmp_path: Path) -> None:
    """Our map of an image equals `bmaptool create`'s, and `bmaptool copy` takes ours."""
    if not shutil.which("bmaptool"):
        pytest.fail("bmaptool missing: run ./scripts/setup.sh (bmap-tools)")
    ours = bmap.create(image)
    assert 0 < ours.mapped_blocks < ours.blocks_count  # the image has holes
    sh("bmaptool", "create", "-o", tmp_path / "ref.bmap", image)
    assert bmap.load(tmp_path / "ref.bmap") == ours
    bmap.write(ours, tmp_path / "ours.bmap")
    out = tmp_path / "copy.raw"
    sh("bmaptool", "copy", "--bmap", tmp_path / "ours.bmap", image, out)
    assert out.read_bytes() == image.read_bytes()


def test_bmap_damage_is_caught(image: Path, tmp_path: Path) -> None:
    path = bmap.write(bmap.create(image), tmp_path / "x.bmap")
    text = path.read_text()
    assert bmap.load(path).image_size == image.stat().st_size
    path.write_text(text.replace("<Range chksum=", "<Range  chksum=", 1))
    with pytest.raises(BuildError, match="BmapFileChecksum does not match"):
        bmap.load(path)
    path.write_text(text.replace('version="2.0"', 'version="1.4"'))
    with pytest.raises(BuildError, match="format '1.4' is not supported"):
        bmap.load(path)


# --- refusals -----------------------------------------------------------------------------

def test_refuses_a_path_that_is_not_a_block_device(image: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"x")
    assert rules(plain, 1) == ["not-a-block-device"]
    assert rules(tmp_path / "missing", 1) == ["not-a-block-device"]
    assert rules(plain, 1, to_file=True) == []
    result = mlos_flash(image, plain, "--yes")
    assert result.returncode == 1
    assert "[not-a-block-device]" in result.stderr and "--to-file" in result.stderr
    assert plain.read_bytes() == b"x"


def test_refuses_a_device_smaller_than_the_image(image: Path, tmp_path: Path) -> None:
    with loops(tmp_path) as lp:
        small = lp.attach(16)
        assert rules(small, image.stat().st_size) == ["too-small"]
        assert rules(small, 16 * MiB) == []
        result = mlos_flash(image, small, "--yes")
        assert result.returncode == 1 and "[too-small]" in result.stderr


def test_refuses_a_device_with_a_mounted_partition(image: Path, tmp_path: Path) -> None:
    with loops(tmp_path) as lp:
        disk_file = tmp_path / "mounted.img"
        shutil.copyfile(image, disk_file)
        dev = lp.attach(backing=disk_file, partitions=True)
        part = Path(f"{dev}p2")
        assert part.exists(), "partx did not add the partition"
        assert rules(dev, image.stat().st_size) == []
        # A space in the mount point: mountinfo writes it as \040.
        lp.mount(part, tmp_path / "mnt point")
        decision = blockdev.check_target(dev, image.stat().st_size)
        assert [r.rule for r in decision.refusals] == ["mounted"]
        assert f"mounted on {tmp_path / 'mnt point'}" in decision.refusals[0].message
        # Flashing the partition itself is refused twice over.
        assert set(rules(part, 1)) == {"partition", "mounted"}
        result = mlos_flash(image, dev, "--yes")
        assert result.returncode == 1 and "[mounted]" in result.stderr
        assert "umount" in result.stderr


def test_refuses_a_device_in_use_as_swap(tmp_path: Path) -> None:
    need_root_tools("mkswap", "swapon")
    with loops(tmp_path) as lp:
        dev = lp.attach(32)
        assert rules(dev, MiB) == []
        lp.swapon(dev)
        decision = blockdev.check_target(dev, MiB)
        assert [r.rule for r in decision.refusals] == ["swap"]
        assert f"swapoff {dev}" in decision.refusals[0].hint


def test_refuses_the_disk_that_backs_the_running_root() -> None:
    """This machine's own root disk, found independently with findmnt/lsblk, is refused by
    the decision function reading the real sysfs and mountinfo. Nothing is opened."""
    found = sh("findmnt", "-n", "-o", "MAJ:MIN", "/", check=False).stdout.strip()
    if not found or found.startswith("0:"):
        pytest.skip(f"/ is not on a block device here ({found or 'no findmnt'})")
    name = Path(os.path.realpath(f"/sys/dev/block/{found}")).name
    disk = sh("lsblk", "-n", "-d", "-o", "PKNAME", f"/dev/{name}", check=False).stdout.strip()
    disk = disk or name
    for target in {Path(f"/dev/{disk}"), Path(f"/dev/{name}")}:
        decision = blockdev.check_target(target, 1)
        system = [r for r in decision.refusals if r.rule == "system-disk"]
        assert system, decision.refusals
        assert "holds the running system's /" in system[0].message


def test_system_disk_rule_follows_partitions_to_the_whole_disk(image: Path,
                                                              tmp_path: Path) -> None:
    """With a mountinfo saying / is on loopNp2 (and nothing in swaps), the whole loop disk
    is refused as the system disk; an unrelated loop device is not."""
    with loops(tmp_path) as lp:
        disk_file = tmp_path / "sys.img"
        shutil.copyfile(image, disk_file)
        dev = lp.attach(backing=disk_file, partitions=True)
        other = lp.attach(64)
        devno = Path(f"/sys/class/block/{dev.name}p2/dev").read_text().strip()
        mountinfo = tmp_path / "mountinfo"
        mountinfo.write_text(f"27 1 {devno} / /boot rw,relatime - ext4 {dev}p2 rw\n"
                             "28 1 0:25 / /tmp rw - tmpfs tmpfs rw\n")
        swaps = tmp_path / "swaps"
        swaps.write_text("Filename Type Size Used Priority\n")
        size = image.stat().st_size
        decision = blockdev.check_target(dev, size, mountinfo=mountinfo, swaps=swaps)
        system = [r for r in decision.refusals if r.rule == "system-disk"]
        assert system and "/boot" in system[0].message and dev.name in system[0].message
        assert rules(other, size, mountinfo=mountinfo, swaps=swaps) == []


# --- flashing -----------------------------------------------------------------------------

def test_flash_to_a_loop_device(image: Path, tmp_path: Path) -> None:
    size = image.stat().st_size
    with loops(tmp_path) as lp:
        dev = lp.attach(64, partitions=True, fill=0xAA)
        # Typing the wrong name stops before anything is written.
        result = mlos_flash(image, dev, stdin="sda\n")
        assert result.returncode == 1 and "not confirmed" in result.stderr
        assert backing_file(dev).read_bytes()[:16] == b"\xaa" * 16
        result = mlos_flash(image, dev, stdin=f"{dev.name}\n")
        assert result.returncode == 0, result.stderr
        assert "model:" in result.stderr and "transport: loop" in result.stderr
        assert "verifying" in result.stderr and "flashed disk.raw" in result.stderr
        written, data = backing_file(dev).read_bytes(), image.read_bytes()
        # Mapped ranges and the whole first MiB hold the image; holes keep old bytes.
        blockmap = bmap.create(image)
        for r in blockmap.ranges:
            offset, length = blockmap.byte_range(r)
            assert written[offset:offset + length] == data[offset:offset + length]
        assert written[:MiB] == data[:MiB]
        assert b"\xaa" * 4096 in written[:size]
        # The last MiB of the larger device was cleared (no stale backup GPT).
        assert written[-MiB:] == bytes(MiB)
        # The kernel re-read the new partition table (BLKRRPART). This host's kernel has no
        # partition parsers, so it may show none.
        assert "the kernel re-read the partition table" in result.stderr


def test_flash_to_a_file_uses_the_bmap_beside_the_image(image: Path, tmp_path: Path) -> None:
    local = tmp_path / "img.raw"
    shutil.copyfile(image, local)  # copyfile keeps no holes; the map is what keeps them
    bmap.write(bmap.create(image), tmp_path / "img.bmap")
    out = tmp_path / "out.raw"
    result = mlos_flash(local, out, "--to-file")
    assert result.returncode == 0, result.stderr
    assert f"map: {tmp_path / 'img.bmap'}" in result.stderr
    assert out.read_bytes() == image.read_bytes()
    assert out.stat().st_blocks * 512 < out.stat().st_size  # holes stayed holes


def test_a_stale_bmap_is_refused(image: Path, tmp_path: Path) -> None:
    local = tmp_path / "img.raw"
    shutil.copyfile(image, local)
    bmap.write(bmap.create(image), tmp_path / "img.bmap")
    with open(local, "ab") as f:
        f.write(bytes(4096))
    with pytest.raises(BuildError, match="block map of another image"):
        flash.plan(local, tmp_path / "out.raw", to_file=True)


def test_corruption_between_write_and_read_back_is_caught(image: Path, tmp_path: Path) -> None:
    with loops(tmp_path) as lp:
        dev = lp.attach(64)
        plan = flash.plan(image, dev)
        written = flash.write(plan)
        # Damage one byte inside the ext4 file's data, behind the flash code's back.
        data = image.read_bytes()
        offset = data.index(b"MLOS flash test")
        with open(backing_file(dev), "r+b") as f:
            f.seek(offset + 3)
            f.write(b"X")
            f.flush()
            os.fsync(f.fileno())
        with pytest.raises(flash.FlashError, match=f"at offset {offset + 3} "):
            flash.verify(plan, written)


def test_ctrl_c_in_the_middle_of_a_write_says_half_written(tmp_path: Path) -> None:
    need_root_tools()
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        chunk = os.urandom(MiB)
        for _ in range(48):
            f.write(chunk)
    with loops(tmp_path) as lp:
        dev = lp.attach(64)
        devno = Path(f"/sys/class/block/{dev.name}/dev").read_text().strip()
        with write_throttle(devno, 8 * MiB) as procs:
            proc = subprocess.Popen(
                ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh", *CLI, "flash", big,
                 dev, "--yes"], stderr=subprocess.PIPE, text=True)
            assert proc.stderr is not None
            seen = ""
            deadline = time.monotonic() + 60
            while "writing" not in seen and time.monotonic() < deadline:
                seen += proc.stderr.read(1)
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=120)
        err = seen + rest
        assert proc.returncode == 1, err
        assert "interrupted" in err and "HALF-WRITTEN" in err and "Traceback" not in err


def device_mapper_works() -> bool:
    return (os.geteuid() == 0 and shutil.which("dmsetup") is not None
            and sh("dmsetup", "version", check=False).returncode == 0)


def test_refuses_a_device_held_by_device_mapper(image: Path, tmp_path: Path) -> None:
    """A loop device under two stacked device-mapper targets, the top one mounted. This
    host's kernel may have no device-mapper: tests/kernel/test_flash_guest.py runs this
    test in a QEMU guest whose kernel has it (and there it must pass, not skip)."""
    if not device_mapper_works():
        pytest.skip("no device-mapper in this kernel (the kernel layer runs this in a guest)")
    with loops(tmp_path) as lp:
        dev = lp.attach(64)
        sectors = 64 * MiB // 512
        names = [f"mlos-held-{os.getpid()}-a", f"mlos-held-{os.getpid()}-b"]
        try:
            # No udev here: dmsetup must neither wait for it nor expect its rules.
            sh("dmsetup", "create", "--noudevsync", "--noudevrules", names[0],
               "--table", f"0 {sectors} linear {dev} 0")
            lower = next(p.name for p in Path(f"/sys/class/block/{dev.name}/holders").iterdir())
            sh("dmsetup", "create", "--noudevsync", "--noudevrules", names[1],
               "--table", f"0 {sectors} linear /dev/{lower} 0")
            upper = next(p.name for p in Path(f"/sys/class/block/{lower}/holders").iterdir())
            decision = blockdev.check_target(dev, MiB)
            assert [r.rule for r in decision.refusals] == ["held"]
            message = decision.refusals[0].message
            assert f"{lower} (device-mapper {names[0]})" in message
            assert f"-> {upper} (device-mapper {names[1]})" in message
            # The top device is not held: flashing it would be allowed.
            assert rules(Path(f"/dev/{upper}"), MiB) == []
            sh("mkfs.ext4", "-q", f"/dev/{upper}")
            lp.mount(Path(f"/dev/{upper}"), tmp_path / "mnt")
            assert set(rules(dev, MiB)) == {"held", "mounted"}
            result = mlos_flash(image, dev, "--yes")
            assert result.returncode == 1 and "[held]" in result.stderr
        finally:
            lp.close()  # unmount before the targets go
            for name in reversed(names):
                sh("dmsetup", "remove", "--noudevsync", name, check=False)
