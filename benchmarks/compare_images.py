# SPDX-License-Identifier: Apache-2.0
"""Where two raw disk images differ: the whole image, each GPT partition, and inside the
file systems (vfat ESP, ext4 root) the files whose contents or metadata differ, plus the
ext4 superblock fields that differ. For reproducibility checks of two builds with the
same SOURCE_DATE_EPOCH (docs/reproducibility.md).

    sudo .venv/bin/python benchmarks/compare_images.py A.raw B.raw [--json out.json]

Mounts each partition read-only through a loop device (detached afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

CHUNK = 1 << 20


def sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True,
                          text=True).stdout


def differing_bytes(a: Path, b: Path, offset: int, length: int) -> tuple[int, int | None]:
    """(count of differing bytes, first differing offset) within a byte range."""
    count, first = 0, None
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(offset)
        fb.seek(offset)
        pos = offset
        while pos < offset + length:
            n = min(CHUNK, offset + length - pos)
            x, y = fa.read(n), fb.read(n)
            if x != y:
                n = min(len(x), len(y))
                diff = np.flatnonzero(np.frombuffer(x[:n], np.uint8)
                                      != np.frombuffer(y[:n], np.uint8))
                count += len(diff) + abs(len(x) - len(y))
                if first is None and len(diff):
                    first = pos + int(diff[0])
            pos += n
    return count, first


@contextlib.contextmanager
def opened(image: Path, start: int, size: int, fs: str) -> Iterator[Path]:
    """The partition's files: a read-only loop mount, or for vfat (which kernels without
    it cannot mount) a copy made with mtools (mcopy -m keeps the times)."""
    if fs != "vfat":
        with mounted(image, start, size) as where:
            yield where
        return
    where = Path(tempfile.mkdtemp(prefix="mlos-compare-"))
    try:
        sh("mcopy", "-s", "-m", "-n", "-i", f"{image}@@{start}", "::*", where)
        yield where
    finally:
        shutil.rmtree(where)


@contextlib.contextmanager
def mounted(image: Path, start: int, size: int) -> Iterator[Path]:
    dev = sh("losetup", "--find", "--show", "--read-only", "--offset", str(start),
             "--sizelimit", str(size), image).strip()
    where = Path(tempfile.mkdtemp(prefix="mlos-compare-"))
    try:
        sh("mount", "-o", "ro", dev, where)
        try:
            yield where
        finally:
            sh("umount", where)
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)
        where.rmdir()


def tree(root: Path) -> dict[str, tuple[str, ...]]:
    """path -> (kind, mode, uid, gid, mtime, content digest or link target)."""
    out: dict[str, tuple[str, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if path.is_symlink():
                what = ("link", os.readlink(path))
            elif path.is_file():
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(CHUNK), b""):
                        digest.update(chunk)
                what = ("file", digest.hexdigest())
            else:
                what = ("dir" if path.is_dir() else "other", "")
            out[rel] = (what[0], oct(st.st_mode), str(st.st_uid), str(st.st_gid),
                        str(int(st.st_mtime)), what[1])
    return out


def superblock(image: Path, start: int, size: int) -> dict[str, str]:
    dev = sh("losetup", "--find", "--show", "--read-only", "--offset", str(start),
             "--sizelimit", str(size), image).strip()
    try:
        text = subprocess.run(["dumpe2fs", "-h", dev], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["losetup", "--detach", dev], check=False)
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def compare(a: Path, b: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"identical": sh("sha256sum", a)[:64] == sh("sha256sum", b)[:64]}
    table_a = json.loads(sh("sfdisk", "--json", a))["partitiontable"]
    table_b = json.loads(sh("sfdisk", "--json", b))["partitiontable"]
    report["disk_guid"] = (table_a["id"], table_b["id"])
    sector = table_a.get("sectorsize", 512)
    parts = []
    for pa, pb in zip(table_a["partitions"], table_b["partitions"], strict=False):
        start, size = pa["start"] * sector, pa["size"] * sector
        count, first = differing_bytes(a, b, start, size)
        entry: dict[str, Any] = {"name": pa.get("name"), "start": start, "size": size,
                                 "uuids": (pa.get("uuid"), pb.get("uuid")),
                                 "differing_bytes": count, "first_difference": first}
        if count:
            kind = sh("blkid", "-p", "-o", "value", "-s", "TYPE", "--offset", str(start),
                      a).strip()
            entry["fs"] = kind
            if kind == "ext4":
                sa, sb = superblock(a, start, size), superblock(b, start, size)
                entry["superblock"] = {k: (sa.get(k), sb.get(k)) for k in sorted(sa)
                                       if sa.get(k) != sb.get(k)}
            with opened(a, start, size, kind) as ma, opened(b, start, size, kind) as mb:
                ta, tb = tree(ma), tree(mb)
            entry["only_in_a"] = sorted(set(ta) - set(tb))
            entry["only_in_b"] = sorted(set(tb) - set(ta))
            changed = {}
            for path in sorted(set(ta) & set(tb)):
                if ta[path] != tb[path]:
                    fields = ("kind", "mode", "uid", "gid", "mtime", "content")
                    changed[path] = [f for f, x, y in zip(fields, ta[path], tb[path],
                                                          strict=True) if x != y]
            entry["changed"] = changed
        parts.append(entry)
    report["partitions"] = parts
    # Bytes outside the partitions: protective MBR, GPT headers and entries.
    first_start = table_a["partitions"][0]["start"] * sector
    report["gpt_head_differing_bytes"] = differing_bytes(a, b, 0, first_start)[0]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = compare(args.a, args.b)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
