# SPDX-License-Identifier: Apache-2.0
"""Block maps: which blocks of a raw image hold data, with a checksum per range.

The file format is bmap-tools' XML, version 2.0 (`bmaptool create` writes it, `bmaptool
copy` reads it), so maps made here work with bmaptool and bmaptool's maps work with
`mlos-build flash`. Ranges come from the file system's extent map (FIEMAP, as bmaptool
does; SEEK_DATA/SEEK_HOLE where there is none): a block that holds any data is mapped;
holes (never written, or punched) are not.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import struct
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from mlos_build.errors import BuildError

FORMAT_VERSION = "2.0"
BLOCK_SIZE = 4096
CHECKSUM_TYPE = "sha256"
CHUNK = 4 << 20

_HEADER = """<?xml version="1.0" ?>
<!-- A block map for an image file: the ranges of blocks that hold data (partition
     tables, file-system metadata, files). Only these need to be copied to a disk; the
     rest of the image is holes. Written by mlos-build in bmap-tools' format, so
     `bmaptool copy` and `mlos-build flash` both use it. Each range's chksum is the
     {ctype} of its bytes; BmapFileChecksum is the {ctype} of this file with that
     field's value set to zeroes. -->
"""


@dataclass(frozen=True)
class Range:
    """Blocks first..last (inclusive) and the checksum of their bytes ('' when unknown)."""

    first: int
    last: int
    checksum: str = ""


@dataclass(frozen=True)
class BlockMap:
    image_size: int
    ranges: tuple[Range, ...]
    block_size: int = BLOCK_SIZE
    checksum_type: str = CHECKSUM_TYPE

    @property
    def blocks_count(self) -> int:
        return -(-self.image_size // self.block_size)

    @property
    def mapped_blocks(self) -> int:
        return sum(r.last - r.first + 1 for r in self.ranges)

    def byte_range(self, r: Range) -> tuple[int, int]:
        """(offset, length) of a range in the image; the last block stops at the image's end."""
        start = r.first * self.block_size
        end = min((r.last + 1) * self.block_size, self.image_size)
        return start, end - start

    @property
    def mapped_bytes(self) -> int:
        return sum(self.byte_range(r)[1] for r in self.ranges)

    def new_hash(self) -> hashlib._Hash:
        return hashlib.new(self.checksum_type)

    def with_checksums(self, checksums: list[str]) -> BlockMap:
        ranges = tuple(replace(r, checksum=c) for r, c in zip(self.ranges, checksums,
                                                              strict=True))
        return replace(self, ranges=ranges)


FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
FIEMAP_FLAG_SYNC = 0x1
FIEMAP_EXTENT_LAST = 0x1
_FIEMAP_HEAD = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")
_FIEMAP_BATCH = 256


def _fiemap_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """Extents the file system has allocated, unwritten (preallocated, zeroed with
    fallocate) ones included: a disk's old contents there are not zeroes, so they must be
    written. This is what bmaptool records."""
    pos = 0
    while pos < size:
        request = bytearray(_FIEMAP_HEAD.size + _FIEMAP_BATCH * _FIEMAP_EXTENT.size)
        _FIEMAP_HEAD.pack_into(request, 0, pos, size - pos, FIEMAP_FLAG_SYNC, 0,
                               _FIEMAP_BATCH, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, request)
        count = _FIEMAP_HEAD.unpack_from(request)[3]
        if count == 0:
            return
        for i in range(count):
            logical, _, length, _, _, flags, *_ = _FIEMAP_EXTENT.unpack_from(
                request, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size)
            yield max(logical, pos), min(logical + length, size)
            pos = logical + length
            if flags & FIEMAP_EXTENT_LAST:
                return


def _seek_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """Data extents from SEEK_DATA/SEEK_HOLE, for file systems without FIEMAP (tmpfs).
    A file system without hole support reports all data: correct, only slower."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        pos = end


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) byte extents that hold data, from FIEMAP, else SEEK_DATA/SEEK_HOLE."""
    try:
        return list(_fiemap_extents(fd, size))
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
            raise
    return list(_seek_extents(fd, size))


def mapped_ranges(fd: int, size: int, block_size: int = BLOCK_SIZE) -> tuple[Range, ...]:
    """Block ranges (no checksums) covering every data extent, adjacent ones merged."""
    ranges: list[Range] = []
    for start, end in data_extents(fd, size):
        first, last = start // block_size, (end - 1) // block_size
        if ranges and first <= ranges[-1].last + 1:
            ranges[-1] = Range(ranges[-1].first, max(last, ranges[-1].last))
        else:
            ranges.append(Range(first, last))
    return tuple(ranges)


def scan(image: Path, block_size: int = BLOCK_SIZE) -> BlockMap:
    """The map of an image without checksums (cheap: no data is read)."""
    fd = os.open(image, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return BlockMap(size, mapped_ranges(fd, size, block_size), block_size)
    finally:
        os.close(fd)


def create(image: Path, block_size: int = BLOCK_SIZE) -> BlockMap:
    """The map of an image with a checksum for every range (reads the mapped data once)."""
    bmap = scan(image, block_size)
    checksums = []
    with open(image, "rb", buffering=0) as f:
        for r in bmap.ranges:
            offset, length = bmap.byte_range(r)
            digest = bmap.new_hash()
            f.seek(offset)
            while length:
                chunk = f.read(min(CHUNK, length))
                if not chunk:
                    raise BuildError(f"{image} shrank while its block map was made",
                                     hint="make the map of an image nothing is writing")
                digest.update(chunk)
                length -= len(chunk)
            checksums.append(digest.hexdigest())
    return bmap.with_checksums(checksums)


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "0%"


def _human(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "bytes" else f"{size} bytes"
        value /= 1024
    raise AssertionError("unreachable")


def dumps(bmap: BlockMap) -> str:
    """The bmap XML text, BmapFileChecksum filled in."""
    if any(not r.checksum for r in bmap.ranges):
        raise ValueError("a block map is written with a checksum for every range")
    ctype = bmap.checksum_type
    width = len(bmap.new_hash().hexdigest())
    lines = [
        _HEADER.format(ctype=ctype),
        f'<bmap version="{FORMAT_VERSION}">',
        f"    <!-- Image size in bytes: {_human(bmap.image_size)} -->",
        f"    <ImageSize> {bmap.image_size} </ImageSize>",
        "",
        "    <!-- Size of a block in bytes -->",
        f"    <BlockSize> {bmap.block_size} </BlockSize>",
        "",
        "    <!-- Count of blocks in the image file -->",
        f"    <BlocksCount> {bmap.blocks_count} </BlocksCount>",
        "",
        f"    <!-- Count of mapped blocks: {_human(bmap.mapped_blocks * bmap.block_size)} or "
        f"{_percent(bmap.mapped_blocks, bmap.blocks_count)} -->",
        f"    <MappedBlocksCount> {bmap.mapped_blocks} </MappedBlocksCount>",
        "",
        "    <!-- Type of checksum used in this file -->",
        f"    <ChecksumType> {ctype} </ChecksumType>",
        "",
        "    <!-- The checksum of this bmap file, computed with this value set to zeroes -->",
        f"    <BmapFileChecksum> {'0' * width} </BmapFileChecksum>",
        "",
        "    <!-- The ranges of mapped blocks, each with the checksum of its bytes -->",
        "    <BlockMap>",
    ]
    for r in bmap.ranges:
        blocks = f"{r.first}-{r.last}" if r.last != r.first else f"{r.first}"
        lines.append(f'        <Range chksum="{r.checksum}"> {blocks} </Range>')
    lines += ["    </BlockMap>", "</bmap>", ""]
    text = "\n".join(lines)
    digest = hashlib.new(ctype, text.encode()).hexdigest()
    return text.replace(f"<BmapFileChecksum> {'0' * width} ", f"<BmapFileChecksum> {digest} ", 1)


def write(bmap: BlockMap, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dumps(bmap), encoding="utf-8")
    tmp.replace(path)
    return path


def _text(root: ET.Element, tag: str, path: Path) -> str:
    node = root.find(tag)
    if node is None or not (node.text or "").strip():
        raise BuildError(f"{path}: no <{tag}> in the block map",
                         hint="remake it with `mlos-build release IMAGE` or `bmaptool create`")
    return (node.text or "").strip()


def load(path: Path) -> BlockMap:
    """Reads a bmap file (format 2.x), checking its own checksum."""
    raw = path.read_bytes()
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise BuildError(f"{path} is not a block map: {exc}",
                         hint="remove it, or remake it with `mlos-build release IMAGE`") from exc
    version = root.get("version", "")
    if root.tag != "bmap" or not version.startswith("2."):
        raise BuildError(f"{path}: block map format '{version}' is not supported (2.x is)",
                         hint="remake it with `mlos-build release IMAGE` or bmaptool >= 3.0")
    ctype = _text(root, "ChecksumType", path)
    if ctype not in hashlib.algorithms_available:
        raise BuildError(f"{path}: unknown checksum type {ctype}", hint="use sha256")
    stated = _text(root, "BmapFileChecksum", path)
    zeroed = raw.replace(stated.encode(), b"0" * len(stated), 1)
    if hashlib.new(ctype, zeroed).hexdigest() != stated:
        raise BuildError(f"{path} is damaged: its BmapFileChecksum does not match",
                         hint="remake it with `mlos-build release IMAGE`, or flash with "
                         "--no-bmap")
    bmap_node = root.find("BlockMap")
    ranges: list[Range] = []
    for node in bmap_node if bmap_node is not None else []:
        match = re.fullmatch(r"\s*(\d+)(?:\s*-\s*(\d+))?\s*", node.text or "")
        if node.tag != "Range" or match is None:
            raise BuildError(f"{path}: bad range {ET.tostring(node, encoding='unicode')!r}",
                             hint="remake the block map")
        first = int(match.group(1))
        ranges.append(Range(first, int(match.group(2) or first), node.get("chksum", "")))
    bmap = BlockMap(int(_text(root, "ImageSize", path)), tuple(ranges),
                    int(_text(root, "BlockSize", path)), ctype)
    if bmap.mapped_blocks != int(_text(root, "MappedBlocksCount", path)):
        raise BuildError(f"{path}: MappedBlocksCount disagrees with its ranges",
                         hint="remake the block map")
    return bmap


def beside(image: Path) -> Path | None:
    """The block map next to an image: IMAGE.bmap, or the name without its extension plus
    .bmap (mlos-x.raw -> mlos-x.bmap), as bmaptool looks for it."""
    for candidate in (image.with_name(image.name + ".bmap"), image.with_suffix(".bmap")):
        if candidate.is_file():
            return candidate
    return None
