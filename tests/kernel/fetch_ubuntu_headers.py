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
import shutil
import subprocess
import sys
import tempfile
import urllib.request

MIRROR = os.environ.get("MLOS_UBUNTU_MIRROR", "http://archive.ubuntu.com/ubuntu")
RELEASES = {"jammy": "5.15.0", "noble": "6.8.0"}


def _packages(release: str) -> dict[str, dict[str, str]]:
    url = f"{MIRROR}/dists/{release}-updates/main/binary-amd64/Packages.xz"
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
        if name and name.startswith("linux-headers-"):
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
    pkgs = _packages(release)
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
    with open(stamp, "w") as fh:
        fh.write(kver + "\n")
    return kver


def main() -> int:
    dest = sys.argv[1] if len(sys.argv) > 1 else ".cache/ubuntu-headers"
    for release, base in RELEASES.items():
        kver = fetch(dest, release, base)
        print(f"{release}: {dest}/{release}/usr/src/linux-headers-{kver}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
