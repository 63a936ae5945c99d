# SPDX-License-Identifier: Apache-2.0
"""A Flatcar image file as the source of a release's kernel build tree.

Flatcar publishes per release the production image (`flatcar_production_image.bin.bz2`,
and for QEMU `flatcar_production_qemu_image.img`, a qcow2) and the developer container
(`flatcar_developer_container.bin.bz2`). Both are GPT disks whose /usr holds the kernel's
build tree at `lib/modules/<kver>/build` beside `lib/os-release`
(flatcar/scripts build_library/disk_layout.json):
- the production image mounts partition USR-A (btrfs, zstd-compressed) at /usr, so the
  paths sit at that file system's top;
- the developer container is one partition, ROOT (ext4), holding a whole root: usr/lib/...

The tree is read out of the file system without mounting it (no root, no loop device):
`btrfs restore` for btrfs, `debugfs rdump` for ext2/3/4. A compressed image is inflated
as a stream and only the partition that holds the tree is kept (sparse), so a 9 GB
production image costs the 3 GB up to USR-A's end, not its whole size on disk.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
import shutil
import stat
import struct
import uuid
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from mlos_build.errors import BuildError
from mlos_build.runner import require_tools, run

SECTOR = 512
CHUNK = 1 << 20
GPT_SIGNATURE = b"EFI PART"
QCOW2_MAGIC = b"QFI\xfb"
BTRFS_MAGIC_AT = (0x10040, b"_BHRfS_M")
EXT_MAGIC_AT = (1024 + 56, b"\x53\xef")


@dataclass(frozen=True)
class Layout:
    """Where one kind of Flatcar image keeps /usr."""
    partition: str   # GPT partition name
    usr: str         # /usr's path inside that partition's file system
    kind: str        # what users call the file


# In the order they are looked for: a production image also has a ROOT partition (the
# node's state, empty in the image), so USR-A decides when it is there.
LAYOUTS = (Layout("USR-A", "", "production image"),
           Layout("ROOT", "usr/", "developer container"))


@dataclass(frozen=True)
class Partition:
    name: str
    start: int  # bytes
    size: int


def image_hint(version: str) -> str:
    return ("pass that release's production image, e.g. https://stable.release.flatcar-linux"
            f".net/amd64-usr/{version}/flatcar_production_image.bin.bz2 (or its "
            "developer container), or a tarball of a node's tree (docs/flatcar.md)")


def _open_stream(path: Path, head: bytes) -> io.BufferedIOBase | None:
    """The file's decompressed stream when it is bzip2, xz or gzip, else None."""
    if head.startswith(b"BZh"):
        return bz2.open(path, "rb")
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(path, "rb")
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(path, "rb")
    return None


def _read_head(path: Path, size: int) -> bytes:
    with path.open("rb") as raw:
        head = raw.read(8)
        stream = _open_stream(path, head)
        if stream is None:
            raw.seek(0)
            return raw.read(size)
    with stream:
        try:
            return stream.read(size)
        except (OSError, EOFError, lzma.LZMAError):
            return b""


def is_disk_image(path: Path) -> bool:
    """A GPT disk image (raw or bzip2/xz/gzip-compressed) or a qcow2 file, as opposed to
    a tarball of the tree."""
    head = _read_head(path, 2 * SECTOR)
    return head.startswith(QCOW2_MAGIC) or head[SECTOR:SECTOR + 8] == GPT_SIGNATURE


def partitions(table: bytes) -> list[Partition]:
    """The named partitions of a GPT, read from the disk's first bytes (the header at LBA
    1 and its entry array, which Flatcar's images keep in the first MiB)."""
    header = table[SECTOR:2 * SECTOR]
    entries_lba, count, entry_size = struct.unpack_from("<QII", header, 72)
    found = []
    for index in range(count):
        offset = entries_lba * SECTOR + index * entry_size
        entry = table[offset:offset + entry_size]
        if len(entry) < 128:
            break
        type_guid = uuid.UUID(bytes_le=entry[:16])
        if type_guid.int == 0:
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        if last < first:
            raise ValueError(f"partition entry {index} ends before it starts")
        name = entry[56:128].decode("utf-16-le", errors="replace").split("\0")[0]
        found.append(Partition(name, first * SECTOR, (last - first + 1) * SECTOR))
    return found


def _chunks(path: Path, work: Path) -> Generator[bytes, None, None]:
    """The raw disk's bytes, from the start: qcow2 converted by qemu-img, compressed
    files inflated on the fly."""
    with path.open("rb") as raw:
        head = raw.read(8)
    converted = None
    if head.startswith(QCOW2_MAGIC):
        require_tools(["qemu-img"])
        converted = work / "image.raw"
        run(["qemu-img", "convert", "-O", "raw", path, converted],
            what=f"converting {path.name} to a raw disk")
        path = converted
    try:
        with _open_stream(path, head) or path.open("rb") as stream:
            while chunk := stream.read(CHUNK):
                yield chunk
    finally:
        if converted is not None:
            converted.unlink(missing_ok=True)


def carve(path: Path, work: Path, version: str) -> tuple[Path, Layout]:
    """The file system image of the partition that holds /usr, written sparse under
    work, and the layout it was found by."""
    chunks = _chunks(path, work)
    table = b""
    try:
        while len(table) < CHUNK and (chunk := next(chunks, b"")):
            table += chunk
        if table[SECTOR:SECTOR + 8] != GPT_SIGNATURE:
            raise BuildError(f"--kernel-build-tree {path} has no GPT partition table",
                             hint=image_hint(version))
        try:
            named = {p.name: p for p in partitions(table)}
        except (struct.error, ValueError) as exc:
            raise BuildError(f"--kernel-build-tree {path} has a damaged GPT partition table "
                             f"({exc})", hint=image_hint(version)) from exc
        layout = next((lay for lay in LAYOUTS if lay.partition in named), None)
        if layout is None:
            raise BuildError(
                f"--kernel-build-tree {path} is a disk image with neither a USR-A nor a "
                f"ROOT partition (it has {', '.join(sorted(named)) or 'none'}): not a "
                "Flatcar production image or developer container", hint=image_hint(version))
        part = named[layout.partition]
        dest = work / f"{layout.partition}.img"
        offset = 0
        with dest.open("wb") as out:
            for chunk in itertools.chain([table], chunks):
                end = offset + len(chunk)
                lo, hi = max(offset, part.start), min(end, part.start + part.size)
                if lo < hi:
                    piece = chunk[lo - offset:hi - offset]
                    if piece.count(0) == len(piece):
                        out.seek(len(piece), 1)  # a hole: the file stays sparse
                    else:
                        out.write(piece)
                offset = end
                if offset >= part.start + part.size:
                    break
            out.truncate(part.size)
        if offset < part.start + part.size:
            raise BuildError(f"--kernel-build-tree {path} ends inside partition "
                             f"{layout.partition} (a truncated download?)",
                             hint=image_hint(version))
    except EOFError as exc:
        raise BuildError(f"--kernel-build-tree {path} is cut short ({exc}; a truncated "
                         "download?)", hint=image_hint(version)) from exc
    except (OSError, lzma.LZMAError) as exc:
        raise BuildError(f"--kernel-build-tree {path} cannot be read ({exc})",
                         hint=image_hint(version)) from exc
    finally:
        chunks.close()
    return dest, layout


def _filesystem(fs_image: Path) -> str | None:
    with fs_image.open("rb") as f:
        for name, (at, magic) in (("btrfs", BTRFS_MAGIC_AT), ("ext", EXT_MAGIC_AT)):
            f.seek(at)
            if f.read(len(magic)) == magic:
                return name
    return None


def _restore_btrfs(fs_image: Path, usr: str, dest: Path) -> None:
    """lib/os-release and every lib/modules/*/build, with their symlinks (btrfs restore
    descends only into directories the pattern matches, hence the nesting). lib64 too:
    older Flatcar releases had /usr/lib as a link to it."""
    require_tools(["btrfs"])
    parts = [p for p in usr.strip("/").split("/") if p]
    pattern = "(|/os-release|/modules(|/[^/]+(|/build(|/.*))))"
    pattern = "(|/lib(64)?" + pattern + ")"
    for part in reversed(parts):
        pattern = f"(|/{part}{pattern})"
    run(["btrfs", "restore", "-S", "-m", "-i", "--path-regex", f"^{pattern}$", fs_image, dest],
        what=f"reading the kernel tree out of {fs_image.name} (btrfs restore)")


def _debugfs(fs_image: Path, request: str) -> str:
    return run(["debugfs", "-R", request, fs_image],
               what=f"reading {fs_image.name} (debugfs {request.split()[0]})").stdout


def _restore_ext(fs_image: Path, usr: str, dest: Path) -> None:
    require_tools(["debugfs"])
    lib = f"/{usr}lib"
    (dest / usr / "lib" / "modules").mkdir(parents=True, exist_ok=True)
    _debugfs(fs_image, f"dump {lib}/os-release {dest / usr / 'lib' / 'os-release'}")
    # `ls -p`: /inode/mode/uid/gid/name/size/ per entry (mode in octal).
    for line in _debugfs(fs_image, f"ls -p {lib}/modules").splitlines():
        fields = line.strip().strip("/").split("/")
        if (len(fields) >= 5 and fields[1].isdigit() and stat.S_ISDIR(int(fields[1], 8))
                and fields[4] not in (".", "..")):
            target = dest / usr / "lib" / "modules" / fields[4]
            target.mkdir(exist_ok=True)
            _debugfs(fs_image, f"rdump {lib}/modules/{fields[4]}/build {target}")


def extract(path: Path, work: Path, version: str) -> Path:
    """A directory holding build/ and os-release, read out of the image file `path`."""
    fs_image, layout = carve(path, work, version)
    filesystem = _filesystem(fs_image)
    tree = work / "image-tree"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    try:
        if filesystem == "btrfs":
            _restore_btrfs(fs_image, layout.usr, tree)
        elif filesystem == "ext":
            _restore_ext(fs_image, layout.usr, tree)
        else:
            raise BuildError(f"--kernel-build-tree {path}: partition {layout.partition} "
                             "holds neither btrfs nor ext4", hint=image_hint(version))
    finally:
        fs_image.unlink()
    lib = tree / layout.usr / "lib"
    # A set: with lib a link to lib64 both names reach the same tree.
    builds = sorted({p.resolve() for p in lib.parent.glob("lib*/modules/*/build")
                     if (p / "Makefile").is_file()})
    if not builds:
        raise BuildError(f"--kernel-build-tree {path}: the {layout.kind}'s /usr has no "
                         "lib/modules/<kver>/build", hint=image_hint(version))
    if len(builds) > 1:
        raise BuildError(f"--kernel-build-tree {path} holds build trees of several kernels "
                         f"({', '.join(b.parent.name for b in builds)})",
                         hint="pass a tarball of the one the node boots (docs/flatcar.md)")
    top = work / "kernel-tree"
    shutil.rmtree(top, ignore_errors=True)
    top.mkdir()
    builds[0].rename(top / "build")
    if (lib / "os-release").is_file():
        (lib / "os-release").rename(top / "os-release")
    shutil.rmtree(tree)
    return top
