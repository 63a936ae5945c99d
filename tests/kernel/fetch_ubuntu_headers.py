#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Fetch and extract Ubuntu's generic kernel headers (jammy 5.15, noble 6.8).

Used by scripts/setup.d/30-kernel.sh for the compile-only tests: the newest
linux-headers-generic of each release's -updates pocket is resolved from the Packages
index, and its two .debs (the flavour package and the common one) are extracted under
DEST/<release>/. Idempotent: a release whose .done stamp exists is skipped.
Standard library only, so it runs before the virtual environment exists.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable

MIRROR = os.environ.get("MLOS_UBUNTU_MIRROR", "http://archive.ubuntu.com/ubuntu")
RELEASES = {"jammy": "5.15.0", "noble": "6.8.0"}


# Host tools in the headers (objtool, modpost) are linked against the release's glibc; where
# that is newer than ours they run through the release's own loader and libraries.
RUNTIME_LIBS = {"jammy": ["libc6", "libelf1", "zlib1g", "libzstd1"],
                "noble": ["libc6", "libelf1t64", "zlib1g", "libzstd1"]}


def _packages(pocket: str, wanted: Callable[[str], bool]) -> dict[str, dict[str, str]]:
    url = f"{MIRROR}/dists/{pocket}/main/binary-amd64/Packages.xz"
    with urllib.request.urlopen(url, timeout=120) as resp:
        text = lzma.decompress(resp.read()).decode("utf-8", "replace")
    out: dict[str, dict[str, str]] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        name = fields.get("Package")
        if name and wanted(name):
            out[name] = fields
    return out


def _depends(fields: dict[str, str], prefix: str) -> str:
    for dep in fields.get("Depends", "").split(","):
        name = dep.strip().split(" ")[0]
        if name.startswith(prefix):
            return name
    raise SystemExit(f"no dependency starting with {prefix} in {fields.get('Package')}")


def fetch(dest: str, release: str, base: str) -> str:
    target = os.path.join(dest, release)
    stamp = os.path.join(target, ".done")
    if os.path.exists(stamp):
        with open(stamp) as fh:
            return fh.read().strip()
    pkgs = _packages(f"{release}-updates", lambda n: n.startswith("linux-headers-"))
    flavour = _depends(pkgs["linux-headers-generic"], f"linux-headers-{base}")
    common = _depends(pkgs[flavour], f"linux-headers-{base}")
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target)
    with tempfile.TemporaryDirectory() as tmp:
        for name in (flavour, common):
            deb = os.path.join(tmp, name + ".deb")
            urllib.request.urlretrieve(f"{MIRROR}/{pkgs[name]['Filename']}", deb)
            subprocess.run(["dpkg-deb", "-x", deb, target], check=True)
    kver = flavour.removeprefix("linux-headers-")
    _wrap_new_glibc_tools(target, release, os.path.join(target, "usr/src", flavour))
    with open(stamp, "w") as fh:
        fh.write(kver + "\n")
    return kver


def _glibc_needed(path: str) -> tuple[int, ...]:
    out = subprocess.run(["objdump", "-T", path], capture_output=True, text=True).stdout
    versions = [tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_(\d+\.\d+)", out)]
    return max(versions, default=(0,))


def _wrap_new_glibc_tools(target: str, release: str, kdir: str) -> None:
    host = tuple(int(x) for x in os.confstr("CS_GNU_LIBC_VERSION").split()[1].split("."))
    tools = []
    for root, _, names in os.walk(kdir):
        for name in names:
            path = os.path.join(root, name)
            if name.endswith(".o") or os.path.islink(path) or not os.access(path, os.X_OK):
                continue
            with open(path, "rb") as fh:
                if fh.read(4) != b"\x7fELF":
                    continue
            if _glibc_needed(path) > host:
                tools.append(path)
    if not tools:
        return
    libroot = os.path.abspath(os.path.join(target, "hostlibs"))
    names = set(RUNTIME_LIBS[release])
    pkgs = _packages(release, names.__contains__)
    pkgs.update(_packages(f"{release}-updates", names.__contains__))
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(names):
            deb = os.path.join(tmp, name + ".deb")
            urllib.request.urlretrieve(f"{MIRROR}/{pkgs[name]['Filename']}", deb)
            subprocess.run(["dpkg-deb", "-x", deb, libroot], check=True)
    loader = os.path.join(libroot, "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    if not os.path.exists(loader):
        loader = os.path.join(libroot, "lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    libdirs = ":".join(os.path.join(libroot, d) for d in
                       ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"))
    for tool in tools:
        tool = os.path.abspath(tool)
        os.rename(tool, tool + ".real")
        with open(tool, "w") as fh:
            fh.write(f'#!/bin/sh\nexec "{loader}" --library-path "{libdirs}" "{tool}.real" "$@"\n')
        os.chmod(tool, 0o755)


def main() -> int:
    dest = sys.argv[1] if len(sys.argv) > 1 else ".cache/ubuntu-headers"
    for release, base in RELEASES.items():
        kver = fetch(dest, release, base)
        print(f"{release}: {dest}/{release}/usr/src/linux-headers-{kver}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
