# SPDX-License-Identifier: Apache-2.0
"""Reuse of the host's llama-cpp-python wheel in images, so llama.cpp compiles once.

llama-cpp-python exists on PyPI only as source: compiling llama.cpp takes about 10 minutes
on 2 cores. scripts/setup.d/50-llm.sh compiles it once for the host, with portable code
(GGML_NATIVE=OFF), into `$MLOS_WHEEL_CACHE/portable-glibc<X.Y>/` (default cache
~/.cache/mlos/wheels), where X.Y is the C library of the machine that compiled it. Its
libraries call Python only through ctypes, so the wheel serves any Python; what binds it
is the C library: a wheel compiled against glibc 2.36 (bookworm) runs on 2.36 and newer
(noble 2.39, trixie 2.41), not on jammy's 2.35. A release whose glibc is older than every
seed compiles its own wheel in the image's build overlay, as before.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

SEED_PREFIX = "portable-glibc"


def _glibc_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def host_wheel_cache() -> Path:
    return Path(os.environ.get("MLOS_WHEEL_CACHE", Path.home() / ".cache" / "mlos" / "wheels"))


def has_llama_libraries(wheel: Path) -> bool:
    """A wheel without llama.cpp's shared library installs and imports, then loads no model
    (seen when cmake's install honoured a DESTDIR): never reuse one."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            return any(n.startswith("llama_cpp/lib/libllama.so") for n in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def find_seed(version: str, release_glibc: str, cache: Path | None = None) -> Path | None:
    """The host-compiled wheel of llama-cpp-python `version` whose glibc is the newest not
    newer than `release_glibc`, or None."""
    cache = cache or host_wheel_cache()
    candidates: list[tuple[tuple[int, ...], Path]] = []
    for seed_dir in cache.glob(f"{SEED_PREFIX}*"):
        try:
            built_with = _glibc_key(seed_dir.name.removeprefix(SEED_PREFIX))
        except ValueError:
            continue
        if built_with > _glibc_key(release_glibc):
            continue
        for wheel in seed_dir.glob(f"llama_cpp_python-{version}-*.whl"):
            if has_llama_libraries(wheel):
                candidates.append((built_with, wheel))
    return max(candidates)[1] if candidates else None


def seed_release_wheels(requirement: str, release_dir: Path, release_glibc: str | None,
                        cache: Path | None = None) -> Path | None:
    """Puts a reusable host wheel for `requirement` (llama-cpp-python==X.Y.Z) into the
    release's wheel directory unless one is there; returns the wheel copied, if any."""
    version = requirement.partition("==")[2]
    if not version or release_glibc is None:
        return None
    if any(has_llama_libraries(w) for w in release_dir.glob(f"llama_cpp_python-{version}-*.whl")):
        return None
    seed = find_seed(version, release_glibc, cache)
    if seed is None:
        return None
    release_dir.mkdir(parents=True, exist_ok=True)
    target = release_dir / seed.name
    partial = target.with_suffix(".partial")
    shutil.copyfile(seed, partial)
    partial.replace(target)  # never a half-copied wheel under the name pip looks for
    return target
