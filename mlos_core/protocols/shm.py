# SPDX-License-Identifier: Apache-2.0
"""Triton's system shared-memory extension: clients register POSIX shared-memory regions
(shm_open key, offset, byte size) by name; inputs are read from and outputs written to
them instead of travelling in the request body. Shared by REST and gRPC.

A region can also be an mlos-ml pool buffer (memory manager, docs/kernel-modes.md): the
client allocates a buffer from its own /dev/mlos-ml descriptor and registers the key
`mlos-ml:<its pid>:<the buffer fd>`; the service takes a duplicate of that descriptor with
pidfd_getfd(2) (same user, or CAP_SYS_PTRACE) and maps the same pinned pages, so ONNX
Runtime reads the inputs from and writes the outputs into the client's buffer."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError

SHM_DIR = Path("/dev/shm")


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    _map: mmap.mmap
    kind: str = "posix"  # posix | mlos-ml

    def view(self, offset: int, size: int) -> memoryview:
        if offset < 0 or size < 0 or offset + size > self.byte_size:
            raise InvalidInputError(
                f"shared memory region {self.name!r}: offset {offset} + {size} bytes exceeds "
                f"its {self.byte_size} bytes"
            )
        start = self.offset + offset
        return memoryview(self._map)[start : start + size]

    def close(self) -> None:
        # A response may still hold a view; the GC closes the map later then.
        with contextlib.suppress(BufferError):
            self._map.close()


_SYS_PIDFD_GETFD = 438  # the same number on every architecture (since Linux 5.6)


def _take_fd(pid: int, fd: int) -> int:
    """A duplicate of process pid's descriptor fd (pidfd_getfd(2))."""
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        dup = int(libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
        if dup < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return dup
    finally:
        os.close(pidfd)


class SharedMemoryRegistry:
    def __init__(self, kernel: Any = None) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()
        #: mlos_core.kernel_modes.KernelModes: says whether mlos-ml regions are available.
        self.kernel = kernel

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name or not isinstance(name, str):
            raise InvalidInputError("shared memory region needs a name")
        if isinstance(key, str) and key.startswith("mlos-ml:"):
            self._register_mlos_ml(name, key, offset, byte_size)
            return
        if (not isinstance(key, str) or not key.strip("/") or "/" in key.strip("/")
                or "\0" in key or key.strip("/") in (".", "..")):
            raise InvalidInputError(f"invalid shared memory key {key!r}")
        if type(offset) is not int or type(byte_size) is not int or offset < 0 or byte_size <= 0:
            raise InvalidInputError("shared memory offset must be >= 0 and byte_size > 0")
        with self._lock:
            if name in self._regions:
                raise InvalidInputError(f"shared memory region {name!r} is already registered")
            path = SHM_DIR / key.strip("/")
            try:
                fd = os.open(path, os.O_RDWR)
            except OSError as exc:
                raise InvalidInputError(
                    f"cannot open shared memory key {key!r}: {exc.strerror}"
                ) from None
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise InvalidInputError(
                        f"shared memory {key!r} has {size} bytes, less than offset {offset} + "
                        f"byte_size {byte_size}"
                    )
                mapping = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            self._regions[name] = Region(name, key, offset, byte_size, mapping)

    def _register_mlos_ml(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name or type(offset) is not int or type(byte_size) is not int or offset < 0 \
                or byte_size <= 0:
            raise InvalidInputError("shared memory region needs a name, offset >= 0 and "
                                    "byte_size > 0")
        try:
            pid, fd = (int(part) for part in key[len("mlos-ml:"):].split(":"))
        except ValueError:
            raise InvalidInputError(
                f"invalid mlos-ml key {key!r}: expected mlos-ml:<pid>:<buffer fd>") from None
        features = getattr(self.kernel, "features", None)
        if features is not None and not features["memory_manager"].in_use:
            raise InvalidInputError(
                "mlos-ml shared memory needs the memory manager, which is not in use here ("
                f"{features['memory_manager'].reason}); register a POSIX shm key instead")
        with self._lock:
            if name in self._regions:
                raise InvalidInputError(f"shared memory region {name!r} is already registered")
            try:
                dup = _take_fd(pid, fd)
            except OSError as exc:
                raise InvalidInputError(
                    f"cannot take descriptor {fd} of process {pid}: {exc.strerror} (the "
                    "service needs the client's user or CAP_SYS_PTRACE)") from None
            try:
                with contextlib.suppress(OSError):  # no /proc: mmap still checks the size
                    if os.readlink(f"/proc/self/fd/{dup}") != "anon_inode:[mlos-ml-buf]":
                        raise InvalidInputError(f"descriptor {fd} of process {pid} is not "
                                                "an mlos-ml buffer")
                mapping = mmap.mmap(dup, offset + byte_size)
            except (OSError, ValueError) as exc:
                raise InvalidInputError(f"cannot map mlos-ml buffer {key!r}: {exc}") from None
            finally:
                os.close(dup)
            self._regions[name] = Region(name, key, offset, byte_size, mapping, "mlos-ml")

    def unregister(self, name: str | None = None) -> None:
        with self._lock:
            names = list(self._regions) if not name else [name]
            for region_name in names:
                region = self._regions.pop(region_name, None)
                if region is not None:
                    region.close()

    def status(self, name: str | None = None) -> list[Region]:
        with self._lock:
            if name:
                if name not in self._regions:
                    raise InvalidInputError(f"no shared memory region named {name!r}")
                return [self._regions[name]]
            return list(self._regions.values())

    def get(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            raise InvalidInputError(f"shared memory region {name!r} is not registered")
        return region
