# SPDX-License-Identifier: Apache-2.0
"""Every subprocess of mlos-build goes through run(): it logs the command, streams
progress, and turns a missing tool or a failure into a BuildError with a hint."""

from __future__ import annotations

import collections
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mlos_build.errors import BuildError

# Host tools and the Debian package that provides each.
TOOL_PACKAGES: dict[str, str] = {
    "mkosi": "mkosi (apt-get install -t bookworm-backports mkosi)",
    "bootctl": "systemd-boot (apt-get install -t bookworm-backports systemd-boot)",
    "ukify": "systemd-ukify or systemd-boot (bookworm-backports)",
    "systemd-repart": "systemd-repart or systemd (bookworm-backports)",
    "mcopy": "mtools",
    "mkfs.vfat": "dosfstools",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "btrfs": "btrfs-progs",
    "cpio": "cpio",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "apt-get": "apt",
    "dpkg": "dpkg",
    "mksquashfs": "squashfs-tools",
    "unsquashfs": "squashfs-tools",
    "ignition-validate": "ignition",
    "xz": "xz-utils",
    "zstd": "zstd",
    "make": "make (build-essential)",
    "gcc": "gcc (build-essential)",
    "strip": "binutils",
}

# Lines of a failed command's output that explain the failure better than its status.
KNOWN_FAILURES: tuple[tuple[str, str, str], ...] = (
    ("No space left on device", "the disk is full",
     "free space under the output and cache directories (an image build needs about 8 GiB)"),
    ("Could not find mcopy", "mtools is missing", "apt-get install mtools"),
    ("bootctl was not found", "bootctl is missing",
     "apt-get install -t bookworm-backports systemd-boot systemd-boot-efi"),
    ("Could not resolve", "a mirror's host name does not resolve",
     "check the network or pass --mirror URL"),
    ("Failed to fetch", "apt could not download from the mirror",
     "check the network or pass --mirror URL"),
    ("Unable to connect", "the mirror is unreachable", "check the network or pass --mirror URL"),
    ("NO_PUBKEY", "the mirror's signing key is not in the host keyring",
     "install the distribution's keyring package (ubuntu-keyring, debian-archive-keyring)"),
)

Progress = Callable[[str], None]
HEARTBEAT_S = 30.0


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def require_tools(tools: Sequence[str]) -> None:
    """Fails with the package to install for the first host tool not on PATH."""
    for tool in tools:
        if shutil.which(tool) is None:
            package = TOOL_PACKAGES.get(tool, tool)
            raise BuildError(f"host tool '{tool}' not found", hint=f"install {package}, "
                             "or run ./scripts/setup.sh")


def _explain(output_tail: Sequence[str]) -> tuple[str, str] | None:
    text = "\n".join(output_tail)
    for needle, message, hint in KNOWN_FAILURES:
        if needle in text:
            return message, hint
    return None


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    show: Callable[[str], bool] | None = None,
    log_file: Path | None = None,
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs argv, reporting it as `what` in errors.

    With `progress`, output is read line by line: lines for which `show` is true (all when
    `show` is None) go to `progress`, every line goes to `log_file`, prefixed with the
    seconds since the command started (`[    12.3s] `).
    Without it, output is captured and returned. A missing program or a failing exit
    status raises BuildError naming the package or the likely cause.
    """
    args = [str(a) for a in argv]
    full_env = None if env is None else {**os.environ, **env}
    if progress is not None:
        progress(f"$ {shlex.join(args)}")
    try:
        if progress is None:
            result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True,
                                    text=True, timeout=timeout, check=False)
            tail = (result.stdout + result.stderr).splitlines()[-40:]
        else:
            result, tail = _stream(args, cwd, full_env, progress, show, log_file, timeout)
    except FileNotFoundError as exc:
        require_tools([args[0]])
        raise BuildError(f"{what}: cannot run {args[0]}", hint=str(exc)) from exc
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"{what} did not finish within {timeout:.0f}s",
                         hint="see the log" if log_file else "run with --debug") from exc
    if check and result.returncode != 0:
        known = _explain(tail)
        where = f" (full log: {log_file})" if log_file else ""
        if known:
            raise BuildError(f"{what} failed: {known[0]}{where}", hint=known[1])
        last = next((line for line in reversed(tail) if line.strip()), "no output")
        raise BuildError(f"{what} failed with exit status {result.returncode}{where}",
                         hint=f"last output: {last.strip()}")
    return result


def _stream(
    args: list[str],
    cwd: Path | None,
    env: Mapping[str, str] | None,
    progress: Progress,
    show: Callable[[str], bool] | None,
    log_file: Path | None,
    timeout: float | None,
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    start = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=40)
    log = open(log_file, "a", encoding="utf-8") if log_file else None  # noqa: SIM115
    # A long step (package downloads, pip) prints nothing worth showing for minutes: say
    # every HEARTBEAT_S that the command is still working, with its latest output line.
    last_shown = [time.monotonic()]
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(HEARTBEAT_S):
            if time.monotonic() - last_shown[0] >= HEARTBEAT_S:
                latest = tail[-1].strip()[:100] if tail else ""
                progress(f"  ... still working ({latest})" if latest else "  ... still working")
                last_shown[0] = time.monotonic()

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    try:
        with subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace",
                              bufsize=1) as proc:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                tail.append(line)
                if log:
                    # Seconds since the command started: the log says where the time went
                    # (benchmarks/build_images.py sums mkosi's steps from it).
                    log.write(f"[{time.monotonic() - start:8.1f}s] {raw}")
                if show is None or show(line):
                    progress(line)
                    last_shown[0] = time.monotonic()
                if timeout is not None and time.monotonic() - start > timeout:
                    proc.kill()
                    raise subprocess.TimeoutExpired(args, timeout)
            returncode = proc.wait()
    finally:
        done.set()
        if log:
            log.close()
    return subprocess.CompletedProcess(args, returncode, "", ""), list(tail)
