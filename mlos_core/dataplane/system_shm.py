# SPDX-License-Identifier: Apache-2.0
"""Triton's system shared-memory extension: clients register POSIX shared-memory regions
(shm_open key, offset, byte size) by name; inputs are read from and outputs written to
them instead of travelling in the request body. The data plane owns the one registry
(DataPlane.shm, beside DataPlane.cuda_shm for the CUDA extension, cuda_shm.py); the REST
and gRPC transports call it through the plane and never import this module.

A POSIX key is opened the way glibc's shm_open opens it: a plain name in /dev/shm (no '/'
beyond the leading ones, not '.' or '..'), O_NOFOLLOW, and it must be a regular file, so
a symlink planted in /dev/shm cannot point the service at another file. The region is
never mapped: its owner can truncate it at any moment, and touching a mapped page past the
end of a file is a SIGBUS that kills the whole service. Inputs are copied out with pread
and outputs in with pwrite, both checked against the file's size, so a shrunken region
fails that one request with a 4xx.

A region can also be an mlos-ml pool buffer (memory manager, docs/kernel-modes.md): the
client allocates a buffer from its own /dev/mlos-ml descriptor and registers the key
`mlos-ml:<its pid>:<the buffer fd>`; the service takes a duplicate of that descriptor with
pidfd_getfd(2) (same user, or CAP_SYS_PTRACE), checks through /proc that it is an mlos-ml
buffer (no /proc: refused) and maps the same pinned pages. Such a buffer cannot shrink, so
ONNX Runtime reads the inputs from and writes the outputs into the client's buffer in
place."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError
from ..kernel.pools import PoolUnavailableError

SHM_DIR = Path("/dev/shm")
_NAME_MAX = 255
_MLOS_ML_BUFFER = "anon_inode:[mlos-ml-buf]"
# O_NONBLOCK: opening a FIFO planted in /dev/shm must not hang the request.
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass
class Region:
    """A registered region. POSIX regions hold an open descriptor (`_fd`) and are read and
    written with pread/pwrite; mlos-ml regions hold a mapping (`_map`) used in place."""

    name: str
    key: str
    offset: int
    byte_size: int
    _map: mmap.mmap | None = None
    kind: str = "posix"  # posix | mlos-ml
    _fd: int = -1
    #: A BufferPool (kernel/pools.py) the copies of inputs are read into: reused, already
    #: faulted-in pages instead of a fresh allocation per request. None: allocate.
    _buffers: Any = None
    _users: int = 0
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _span(self, offset: int, size: int) -> int:
        if offset < 0 or size < 0 or offset + size > self.byte_size:
            raise InvalidInputError(
                f"shared memory region {self.name!r}: offset {offset} + {size} bytes exceeds "
                f"its {self.byte_size} bytes"
            )
        return self.offset + offset

    @contextlib.contextmanager
    def _descriptor(self) -> Iterator[int]:
        """The descriptor, kept open while in use (an unregister meanwhile closes it after:
        a descriptor number closed under a reader could be reused by another file)."""
        with self._lock:
            if self._closed:
                raise InvalidInputError(f"shared memory region {self.name!r} was unregistered")
            self._users += 1
        try:
            yield self._fd
        finally:
            with self._lock:
                self._users -= 1
                if self._closed and not self._users:
                    os.close(self._fd)

    def _truncated(self, fd: int, end: int) -> InvalidInputError:
        size = os.fstat(fd).st_size
        return InvalidInputError(
            f"shared memory region {self.name!r} (key {self.key!r}) now has {size} bytes, "
            f"fewer than the {end} this request uses: it was truncated after registration; "
            "register it again")

    def target(self, offset: int, size: int) -> memoryview | None:
        """Memory a backend may write outputs into directly; None for POSIX regions (they
        can shrink under the writer), which get write() instead."""
        start = self._span(offset, size)
        if self._map is None:
            return None
        return memoryview(self._map)[start : start + size]

    def read(self, offset: int, size: int) -> memoryview:
        """`size` bytes at `offset`: the mapping itself (mlos-ml) or a private copy."""
        start = self._span(offset, size)
        if self._map is not None:
            return memoryview(self._map)[start : start + size]
        view = self._buffer(size).data
        with self._descriptor() as fd:
            done = 0
            while done < size:
                n = os.preadv(fd, [view[done:]], start + done)
                if n <= 0:
                    raise self._truncated(fd, start + size)
                done += n
        return view

    def _buffer(self, size: int) -> np.ndarray:
        if self._buffers is not None and size:
            with contextlib.suppress(PoolUnavailableError):
                return self._buffers.acquire(size)  # type: ignore[no-any-return]
        return np.empty(size, dtype=np.uint8)  # not zero-filled: every byte is read into

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        start = self._span(offset, view.nbytes)
        if self._map is not None:
            memoryview(self._map)[start : start + view.nbytes] = view
            return
        with self._descriptor() as fd:
            # pwrite past the end would grow the client's file instead of failing.
            if os.fstat(fd).st_size < start + view.nbytes:
                raise self._truncated(fd, start + view.nbytes)
            done = 0
            while done < view.nbytes:
                done += os.pwrite(fd, view[done:], start + done)

    def close(self) -> None:
        if self._map is not None:
            # A response may still hold a view; the GC closes the map later then.
            with contextlib.suppress(BufferError):
                self._map.close()
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self._users and self._fd >= 0:
                os.close(self._fd)


def shm_name(key: Any) -> str:
    """The file name in /dev/shm that shm_open would use for `key` (glibc's rules)."""
    name = key.lstrip("/") if isinstance(key, str) else ""
    if not name or "/" in name or "\0" in name or name in (".", "..") \
            or len(name.encode("utf-8", "surrogateescape")) > _NAME_MAX:
        raise InvalidInputError(
            f"invalid shared memory key {key!r}: use a shm_open name, '/' and a plain name "
            "of at most 255 bytes (no further '/')")
    return name


def open_shm(key: str) -> tuple[int, int]:
    """(descriptor, size) of a POSIX shared-memory object, opened like shm_open does."""
    name = shm_name(key)
    try:
        dir_fd = os.open(SHM_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidInputError(f"cannot open {SHM_DIR}: {exc.strerror}") from None
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        why = "it is a symlink, which shm_open never follows" if exc.errno == errno.ELOOP \
            else exc.strerror
        raise InvalidInputError(f"cannot open shared memory key {key!r}: {why}") from None
    finally:
        os.close(dir_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InvalidInputError(
            f"shared memory key {key!r} is not a shared-memory object (not a regular file)")
    return fd, info.st_size


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
        #: mlos_core.kernel.modes.KernelModes: says whether mlos-ml regions are available.
        self.kernel = kernel

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name or not isinstance(name, str):
            raise InvalidInputError("shared memory region needs a name")
        if isinstance(key, str) and key.startswith("mlos-ml:"):
            self._register_mlos_ml(name, key, offset, byte_size)
            return
        shm_name(key)
        if type(offset) is not int or type(byte_size) is not int or offset < 0 or byte_size <= 0:
            raise InvalidInputError("shared memory offset must be >= 0 and byte_size > 0")
        with self._lock:
            if name in self._regions:
                raise InvalidInputError(f"shared memory region {name!r} is already registered")
            fd, size = open_shm(key)
            if offset + byte_size > size:
                os.close(fd)
                raise InvalidInputError(
                    f"shared memory {key!r} has {size} bytes, less than offset {offset} + "
                    f"byte_size {byte_size}"
                )
            buffers = getattr(self.kernel, "request_pool", None)
            self._regions[name] = Region(name, key, offset, byte_size, _fd=fd,
                                         _buffers=buffers)

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
                try:
                    target = os.readlink(f"/proc/self/fd/{dup}")
                except OSError as exc:  # fail closed: an unchecked file could be anything
                    raise InvalidInputError(
                        f"cannot check that descriptor {fd} of process {pid} is an mlos-ml "
                        f"buffer: /proc/self/fd is unreadable here ({exc.strerror}); mount "
                        "/proc for the service or register a POSIX shm key") from None
                if target != _MLOS_ML_BUFFER:
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

    def targets(self, refs: dict[str, Any]) -> dict[str, memoryview] | None:
        """Output memory a backend may write in place, by output name, for `refs` (output
        name -> ShmRef); None when any region cannot take that (POSIX regions)."""
        out = {}
        for name, ref in refs.items():
            target = self.get(ref.region).target(ref.offset, ref.byte_size)
            if target is None:
                return None
            out[name] = target
        return out

    def get(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            raise InvalidInputError(f"shared memory region {name!r} is not registered")
        return region
