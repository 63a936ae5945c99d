# SPDX-License-Identifier: Apache-2.0
"""Helpers every target uses: checksums, the free-space check, the per-cache build lock."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from mlos_build.errors import BuildError
from mlos_build.runner import Progress

# mkosi and the kernel build run helpers from PATH: they must be the system's, not a
# pyenv or venv python that shadows it.
SYSTEM_PATH = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
MIN_FREE_BYTES = 8 * 1024**3
# Where artifacts (and renders) go unless --output-dir says otherwise.
DEFAULT_OUTPUT_DIR = Path("output")


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def update_checksums(sums: Path, files: list[Path]) -> None:
    """Adds or replaces the entries for files in a SHA256SUMS beside them."""
    entries: dict[str, str] = {}
    if sums.exists():
        for line in sums.read_text().splitlines():
            digest, _, name = line.partition("  ")
            if name:
                entries[name] = digest
    for path in files:
        entries[path.name] = sha256(path)
    sums.write_text("".join(f"{d}  {n}\n" for n, d in sorted(entries.items())))


def check_free_space(dirs: list[Path], need: int = MIN_FREE_BYTES) -> None:
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(d).free
        if free < need:
            raise BuildError(f"no space: only {free / 1024**3:.1f} GiB free under {d}",
                             hint=f"an image build needs {need / 1024**3:.0f} GiB there: "
                             "free space or pass --output-dir/--cache-dir elsewhere")


def dir_bytes(path: Path) -> int:
    """Bytes allocated under path (what removing it gives back), not following links."""
    total = 0
    for entry in path.rglob("*"):
        with contextlib.suppress(OSError):
            if not entry.is_symlink():
                total += entry.lstat().st_blocks * 512
    return total


def make_room(where: Path, need: int, regenerable: list[Path], progress: Progress) -> None:
    """Drops the least recently used of `regenerable` (caches a build can make again, such
    as other package sets' mkosi trees) while `where` has less than `need` bytes free,
    saying what went; call it holding the cache lock. What it cannot free is left to
    check_free_space to report."""
    where.mkdir(parents=True, exist_ok=True)
    candidates = sorted((p for p in regenerable if p.exists()), key=lambda p: p.stat().st_mtime)
    for cache in candidates:
        free = shutil.disk_usage(where).free
        if free >= need:
            return
        size = dir_bytes(cache)
        progress(f"only {free / 1024**3:.1f} GiB free: dropping the least recently used "
                 f"cache {cache} ({size / 1024**3:.1f} GiB; a build that needs it again "
                 "makes it anew)")
        shutil.rmtree(cache, ignore_errors=True)


@contextlib.contextmanager
def cache_lock(cache_dir: Path, progress: Progress) -> Iterator[None]:
    """One build per cache directory at a time: two mkosi runs sharing a package cache
    rewrite each other's apt metadata (seen as "Unable to locate package base-files")."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".mlos-build.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another mlos-build using {cache_dir} (builds that should "
                     "run side by side need separate --cache-dir)")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# Build products left in a kernel module source tree that must not be copied into a
# fresh build (a stale .ko or .cmd from the host's own build would be reused).
KERNEL_SOURCE_SKIP = ("*.o", "*.ko", "*.mod", "*.mod.c", "*.cmd", "Module.symvers",
                      "modules.order", ".tmp_versions")
