# SPDX-License-Identifier: Apache-2.0
"""`mlos-build flash IMAGE DEVICE`: put a raw disk image on a disk, safely.

Order of work: check the target (blockdev.check_target: every refusal rule, before any
open for writing), show the device and have the user type its name back, then write()
and verify() as two phases, so a test can damage the device in between and see verify
catch it. write() opens the device O_EXCL (the kernel refuses while anything mounts or
holds it), writes only the mapped ranges of the block map (the .bmap beside the image, or
one computed from SEEK_DATA/SEEK_HOLE), with O_DIRECT where aligned, fsyncs and asks the
kernel to re-read the partition table. The image's first MiB (MBR + primary GPT) is
zeroed first and written last, so an interrupted flash leaves no partition table that
looks whole. verify() reads every written range back from the device, bypassing the
page cache, and compares it with the map's checksums.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from mlos_build import blockdev
from mlos_build import bmap as bmaplib
from mlos_build.errors import BuildError
from mlos_build.qemu import disk_format

CHUNK = 4 << 20
HEAD = 1 << 20  # MBR + primary GPT + what sits before the first partition
TAIL = 1 << 20  # where an older, larger image's backup GPT may still sit
BLKRRPART = 0x125F
BLKFLSBUF = 0x1261


class FlashError(BuildError):
    """A flash that stopped or failed after the device was touched."""


@dataclass(frozen=True)
class Plan:
    image: Path
    target: Path
    bmap: bmaplib.BlockMap
    bmap_source: str  # the .bmap file used, or "computed"
    device: blockdev.Device | None  # None when writing into a file (--to-file)

    @property
    def total(self) -> int:
        return self.bmap.mapped_bytes


@dataclass(frozen=True)
class Result:
    written: int
    write_s: float
    verify_s: float


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")


class Meter:
    """A progress bar on stderr: bytes done, rate, ETA. On a terminal it redraws one line;
    in a log it prints a line every few seconds."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = self.last = time.monotonic()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else 0
        pct = 100 * self.done / self.total if self.total else 100
        return (f"{self.label} {human(self.done)} / {human(self.total)} {pct:3.0f}%  "
                f"{human(rate)}/s  ETA {int(eta) // 60}:{int(eta) % 60:02d}")

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= (0.2 if self.tty else 5.0):
            self.last = now
            self.show()

    def show(self, end: str = "") -> None:
        if self.tty:
            print("\r" + self.line().ljust(78), end=end, file=self.stream, flush=True)
        else:
            print(self.line(), file=self.stream, flush=True)

    def finish(self) -> None:
        self.show(end="\n")


def _image_size(image: Path) -> int:
    try:
        st = image.stat()
    except OSError as exc:
        raise BuildError(f"cannot read image {image}: {exc.strerror}",
                         hint="give the path of a raw disk image (.raw)") from exc
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        raise BuildError(f"{image} is not a raw disk image (not a regular, non-empty file)",
                         hint="give the path of a raw disk image (.raw)")
    if disk_format(image) == "qcow2":
        raise BuildError(f"{image} is a qcow2 image", hint="flash the .raw image beside it "
                         "(or convert: qemu-img convert -O raw IN OUT)")
    return st.st_size


def plan(image: Path, target: Path, *, to_file: bool = False, bmap_path: Path | None = None,
         use_bmap: bool = True, sysfs_root: Path = blockdev.SYSFS,
         mountinfo: Path = blockdev.MOUNTINFO, swaps: Path = blockdev.SWAPS) -> Plan:
    """Checks everything before anything is opened for writing; raises BuildError listing
    every refusal."""
    size = _image_size(image)
    found = bmap_path if bmap_path is not None else (bmaplib.beside(image) if use_bmap
                                                     else None)
    if found is not None:
        bmap = bmaplib.load(found)
        if bmap.image_size != size:
            raise BuildError(f"{found} is the block map of another image (ImageSize "
                             f"{bmap.image_size}, {image.name} has {size} bytes)",
                             hint="remake it (mlos-build release IMAGE) or flash with --no-bmap")
        source = str(found)
    else:
        bmap, source = bmaplib.scan(image), "computed"
    decision = blockdev.check_target(target, size, to_file=to_file, sysfs_root=sysfs_root,
                                     mountinfo=mountinfo, swaps=swaps)
    if not decision.ok:
        # The running system's own disk is the refusal that matters most: it comes first.
        ordered = sorted(decision.refusals, key=lambda r: r.rule != "system-disk")
        rules = "; ".join(str(r) for r in ordered)
        first = ordered[0]
        raise BuildError(f"refusing to flash {target}: {rules}", hint=first.hint)
    return Plan(image, target, bmap, source, decision.device)


def describe(p: Plan) -> str:
    d = p.device
    what = (f"{human(p.total)} of data ({p.bmap.mapped_blocks} of {p.bmap.blocks_count} "
            f"blocks, map: {p.bmap_source})")
    if d is None:
        return f"image:  {p.image} ({human(p.bmap.image_size)}), {what}\ntarget: file {p.target}"
    lines = [f"image:     {p.image} ({human(p.bmap.image_size)}), {what}",
             f"device:    {d.path} ({d.name}, {d.devno})",
             f"model:     {d.model or 'unknown'}",
             f"serial:    {d.serial or 'unknown'}",
             f"size:      {human(d.size)} ({d.size} bytes)",
             f"transport: {d.transport}{', removable' if d.removable else ''}"]
    if d.partitions:
        lines.append("partitions (all of them will be lost):")
        lines += [f"  {q.name}: {human(q.size)} at {q.start}" for q in d.partitions]
    else:
        lines.append("partitions: none")
    return "\n".join(lines)


def confirm(p: Plan, ask: Callable[[str], str] = input) -> None:
    """The user types the device's name back; anything else stops."""
    if p.device is None:
        return
    name = p.device.name
    try:
        answer = ask(f"Everything on {p.target} will be overwritten. Type '{name}' to go on: ")
    except EOFError:
        answer = ""
    if answer.strip() not in (name, str(p.target), f"/dev/{name}"):
        raise BuildError(f"not confirmed: nothing was written to {p.target}",
                         hint=f"type {name} at the prompt, or pass --yes in scripts")


class _Buffer:
    """A page-aligned buffer, as O_DIRECT needs (freed with its last view)."""

    def __init__(self, size: int) -> None:
        self.view = memoryview(mmap.mmap(-1, size))


def _set_direct(fd: int, on: bool) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)


def _pwrite_all(fd: int, data: memoryview, offset: int, align: int, direct: bool) -> None:
    unaligned = direct and (offset % align or len(data) % align)
    if unaligned:  # only an odd-sized image's last piece: write it through the page cache
        _set_direct(fd, False)
    try:
        while data:
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n
    finally:
        if unaligned:
            _set_direct(fd, True)


def _pread_exact(fd: int, view: memoryview, offset: int, what: str) -> None:
    pos = 0
    while pos < len(view):
        n = os.preadv(fd, [view[pos:]], offset + pos)
        if n == 0:
            raise FlashError(f"{what} ended early at offset {offset + pos}",
                             hint="is the image or the device smaller than it should be?")
        pos += n


@contextlib.contextmanager
def _open_target(p: Plan, *, write: bool) -> Iterator[tuple[int, bool, int]]:
    """(fd, O_DIRECT in effect, alignment) for the target. A device is opened O_EXCL, so
    the kernel itself refuses when something mounted or claimed it since the check."""
    if p.device is None:
        flags = (os.O_WRONLY | os.O_CREAT) if write else os.O_RDONLY
        fd = os.open(p.target, flags | os.O_CLOEXEC, 0o644)
        direct, align = False, 1
    else:
        align = max(p.device.logical_block_size, 512)
        base = (os.O_WRONLY if write else os.O_RDONLY) | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(p.target, base | os.O_DIRECT)
            direct = True
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # no O_DIRECT on this device: synced buffered I/O
                fd, direct = os.open(p.target, base), False
            elif exc.errno == errno.EBUSY:
                raise BuildError(f"{p.target} is busy: the kernel refused exclusive access",
                                 hint="something mounted, opened or claimed it after the "
                                 "check; stop it and flash again") from exc
            else:
                raise BuildError(f"cannot open {p.target}: {exc.strerror}",
                                 hint="run as root (or a user with write access to it)") from exc
    try:
        yield fd, direct, align
    finally:
        os.close(fd)


def _pieces(bmap: bmaplib.BlockMap) -> Iterator[tuple[int, int, int]]:
    """(range index, offset, length) chunks of the mapped data, in image order."""
    for index, r in enumerate(bmap.ranges):
        offset, length = bmap.byte_range(r)
        while length:
            n = min(CHUNK, length)
            yield index, offset, n
            offset, length = offset + n, length - n


def write(p: Plan, stream: TextIO | None = None) -> bmaplib.BlockMap:
    """Writes the mapped ranges to the target; returns the map with the checksums of what
    was read from the image (checked against the .bmap's as it goes, like bmaptool)."""
    meter = Meter("writing  ", p.total, stream)
    checksums: list[str] = []
    buf = _Buffer(CHUNK)
    head = bytearray(HEAD)  # the image's first MiB, written last
    img = os.open(p.image, os.O_RDONLY | os.O_CLOEXEC)
    started = False
    try:
        with _open_target(p, write=True) as (fd, direct, align):
            if p.device is None:
                os.ftruncate(fd, p.bmap.image_size)  # a sparse file, holes where the map has
            else:
                _wipe(fd, p, buf, align, direct)
            started = True
            meter.show()
            digest, current = p.bmap.new_hash(), 0
            for index, offset, length in _pieces(p.bmap):
                if index != current:
                    checksums.append(_check_source(p, current, digest))
                    digest, current = p.bmap.new_hash(), index
                view = buf.view[:length]
                _pread_exact(img, view, offset, f"image {p.image}")
                digest.update(view)
                if offset < HEAD:
                    cut = min(HEAD - offset, length)
                    head[offset:offset + cut] = view[:cut]
                    view = view[cut:]
                    offset += cut
                if view:
                    _pwrite_all(fd, view, offset, align, direct)
                meter.add(length)
            if p.bmap.ranges:
                checksums.append(_check_source(p, current, digest))
            buf.view[:HEAD] = head
            first = min(HEAD, p.bmap.image_size)
            _pwrite_all(fd, buf.view[:first], 0, align, direct)
            meter.finish()
            os.fsync(fd)
            if p.device is not None:
                print(_reread_partitions(fd, p), file=meter.stream, flush=True)
    except KeyboardInterrupt:
        if not started:
            raise FlashError(f"interrupted: nothing was written to {p.target}") from None
        raise FlashError(_half_written(p, meter, "interrupted"),
                         hint="flash again to finish; until then the disk will not boot"
                         ) from None
    except OSError as exc:
        if not started:
            raise
        raise FlashError(_half_written(p, meter, f"write failed ({exc.strerror})"),
                         hint="check the disk (dmesg) and flash again") from exc
    finally:
        os.close(img)
    return p.bmap.with_checksums(checksums)


def _half_written(p: Plan, meter: Meter, why: str) -> str:
    return (f"{why}: {p.target} is HALF-WRITTEN ({human(meter.done)} of {human(p.total)}); "
            "it holds no usable image and its old partition table is gone")


def _check_source(p: Plan, index: int, digest: hashlib._Hash) -> str:
    value = digest.hexdigest()
    expected = p.bmap.ranges[index].checksum
    if expected and value != expected:
        offset, _ = p.bmap.byte_range(p.bmap.ranges[index])
        raise FlashError(f"{p.image} does not match its block map {p.bmap_source} in the "
                         f"range at offset {offset}; {p.target} is HALF-WRITTEN",
                         hint="the image changed after its map was made: remake the map "
                         "(mlos-build release IMAGE) or flash with --no-bmap")
    return value


def _wipe(fd: int, p: Plan, buf: _Buffer, align: int, direct: bool) -> None:
    """Zeroes the first MiB (the old partition table) and, on a device larger than the
    image, its last MiB (an old backup GPT), so no stale table survives the flash."""
    assert p.device is not None
    buf.view[:HEAD] = bytes(HEAD)
    _pwrite_all(fd, buf.view[:min(HEAD, p.device.size)], 0, align, direct)
    tail_start = max(p.bmap.image_size, p.device.size - TAIL)
    tail_start -= tail_start % align
    if tail_start < p.device.size:
        _pwrite_all(fd, buf.view[:p.device.size - tail_start], tail_start, align, direct)
    os.fsync(fd)


def _reread_partitions(fd: int, p: Plan) -> str:
    """Asks the kernel to read the new partition table; says what it found."""
    try:
        fcntl.ioctl(fd, BLKRRPART)
    except OSError as exc:
        # A loop device attached without partition scanning answers EINVAL.
        return (f"warning: the kernel did not re-read the partition table of {p.target} "
                f"({exc.strerror}); run `partx -u {p.target}` or replug it")
    assert p.device is not None
    found = blockdev.Sysfs().partitions(p.device.name)
    return (f"the kernel re-read the partition table: {', '.join(found)}" if found else
            "the kernel re-read the partition table and shows no partitions (this kernel "
            f"or device does not scan them; `partx -a {p.target}` adds them)")


def verify(p: Plan, bmap: bmaplib.BlockMap, stream: TextIO | None = None) -> None:
    """Reads every written range back from the target (not from the page cache) and
    compares it with the map's checksums; the first difference fails with its offset."""
    meter = Meter("verifying", p.total, stream)
    buf = _Buffer(CHUNK)
    try:
        with _open_target(p, write=False) as (fd, direct, align):
            if not direct:
                _drop_cache(fd, p)
            for r in bmap.ranges:
                offset, length = bmap.byte_range(r)
                digest = bmap.new_hash()
                for _, off, n in _pieces(replace(bmap, ranges=(r,))):
                    view = buf.view[:n]
                    if direct and (off % align or n % align):
                        _set_direct(fd, False)
                        _pread_exact(fd, view, off, f"{p.target}")
                        _set_direct(fd, True)
                    else:
                        _pread_exact(fd, view, off, f"{p.target}")
                    digest.update(view)
                    meter.add(n)
                if digest.hexdigest() != r.checksum:
                    bad = _first_difference(p, fd, offset, length)
                    raise FlashError(f"verification FAILED: {p.target} differs from "
                                     f"{p.image.name} at offset {bad} (in the range "
                                     f"{offset}..{offset + length - 1}); the disk is not a "
                                     "faithful copy", hint="the disk may be failing or a "
                                     "counterfeit; flash again or use another disk")
            meter.finish()
    except KeyboardInterrupt:
        raise FlashError(f"verification interrupted: {p.target} is fully written but not "
                         "verified", hint="flash again to write and verify it") from None


def _drop_cache(fd: int, p: Plan) -> None:
    """Without O_DIRECT, make reads come from the device (or file), not cached pages."""
    with contextlib.suppress(OSError):
        if p.device is not None:
            fcntl.ioctl(fd, BLKFLSBUF)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _first_difference(p: Plan, fd: int, offset: int, length: int) -> int:
    """The first byte offset where the target differs from the image within one range."""
    _set_direct(fd, False)
    _drop_cache(fd, p)
    with open(p.image, "rb") as img:
        for pos in range(offset, offset + length, CHUNK):
            n = min(CHUNK, offset + length - pos)
            want, have = os.pread(img.fileno(), n, pos), os.pread(fd, n, pos)
            if want != have:
                same = next((i for i, (a, b) in enumerate(zip(want, have, strict=False))
                             if a != b),
                            min(len(want), len(have)))
                return pos + same
    return offset


def flash(p: Plan, *, yes: bool = False, stream: TextIO | None = None,
          ask: Callable[[str], str] = input) -> Result:
    """Shows, confirms, writes, verifies."""
    out = stream or sys.stderr
    print(describe(p), file=out, flush=True)
    if not yes:
        confirm(p, ask)
    # The default SIGINT handler may have been replaced (a parent that ignores it): Ctrl-C
    # must stop the write, which then says the device is half-written.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    start = time.monotonic()
    written = write(p, stream)
    mid = time.monotonic()
    verify(p, written, stream)
    return Result(p.total, mid - start, time.monotonic() - mid)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("flash", help="write an image to a disk, safely (checks, confirmation, "
                       "block map, read-back verification)",
                       description="Writes a raw disk image to a disk: refuses mounted, swap, "
                       "held, too small and system disks, shows the disk and asks for its name "
                       "back, writes only the blocks that hold data, then reads them back.")
    p.add_argument("image", type=Path, help="the raw disk image (.raw)")
    p.add_argument("device", type=Path, help="the whole disk, e.g. /dev/sdb (or a file with "
                   "--to-file)")
    p.add_argument("--yes", action="store_true", help="do not ask for the device's name "
                   "(automation)")
    p.add_argument("--to-file", action="store_true", help="the target is a file: create or "
                   "overwrite it (sparse)")
    p.add_argument("--bmap", type=Path, help="block map to use (default: IMAGE.bmap or the "
                   "image's name with .bmap, else computed from the image)")
    p.add_argument("--no-bmap", action="store_true", help="ignore a block map beside the image "
                   "and compute one")
    p.set_defaults(handler=run_flash)


def run_flash(args: argparse.Namespace, progress: Callable[[str], None]) -> int:
    p = plan(args.image, args.device, to_file=args.to_file, bmap_path=args.bmap,
             use_bmap=not args.no_bmap)
    result = flash(p, yes=args.yes)
    progress(f"flashed {p.image.name} to {p.target}: {human(result.written)} written in "
             f"{result.write_s:.1f}s, verified in {result.verify_s:.1f}s")
    return 0
