# SPDX-License-Identifier: Apache-2.0
"""Triton's system shared-memory extension: clients register POSIX shared-memory regions
(shm_open key, offset, byte size) by name; inputs are read from and outputs written to
them instead of travelling in the request body. Shared by REST and gRPC."""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidInputError

SHM_DIR = Path("/dev/shm")


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    _map: mmap.mmap

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


class SharedMemoryRegistry:
    def __init__(self) -> None:
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name or not isinstance(name, str):
            raise InvalidInputError("shared memory region needs a name")
        if not isinstance(key, str) or not key.strip("/") or "/" in key.strip("/"):
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
