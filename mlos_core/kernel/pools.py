# SPDX-License-Identifier: Apache-2.0
"""Reusable tensor and request-body buffers in power-of-two size classes.

One pool shape, two backings: `TensorPool` carves buffers from a pinned mlos-ml pool (the
memory manager); `HostPool` from anonymous memory of this process (userspace mode, or
when the memory manager is not in use), so request bodies are pooled in every mode.

A buffer is handed out as a uint8 numpy array and goes back to its free list when the last
view of that array dies (so a response still being serialised, or an inference thread that
outlived its request's timeout, keeps its bytes). Buffers idle longer than `idle_s` are
dropped, and a pool never holds more than its size: an allocation it cannot make raises
PoolUnavailableError, the caller's cue to fall back to a per-request allocation.
"""

from __future__ import annotations

import contextlib
import mmap
import threading
import time
import weakref
from typing import Any, Protocol

import numpy as np

from . import mlos_ml

_MIN_CLASS = 64 << 10
#: Purposes counted apart in stats() (every acquire also counts in the totals).
REQUEST = "request"
TENSOR = "tensor"


class PoolUnavailableError(Exception):
    """The pool cannot give a buffer now (full, or the module refused): fall back."""


class _Slab(Protocol):
    """One buffer's memory, whatever backs it."""

    def view(self) -> np.ndarray: ...

    def close(self) -> None: ...

    @property
    def alive(self) -> bool: ...


class _MlosMlSlab:
    def __init__(self, buf: mlos_ml.Buffer, size: int) -> None:
        self.buf, self.size = buf, size

    def view(self) -> np.ndarray:
        # Straight from the mapping: not a reshaped view, whose slices would keep only
        # the array below it alive (see BufferPool.acquire).
        return np.frombuffer(self.buf.memory, np.uint8, count=self.size)

    def close(self) -> None:
        self.buf.close()

    @property
    def alive(self) -> bool:
        return self.buf.fd >= 0


class _AnonymousSlab:
    """Private anonymous pages (page aligned, handed back to the kernel on close)."""

    def __init__(self, size: int) -> None:
        self.map = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def view(self) -> np.ndarray:
        return np.frombuffer(self.map, np.uint8)

    def close(self) -> None:
        with contextlib.suppress(BufferError):  # a live view keeps it until that view dies
            self.map.close()

    @property
    def alive(self) -> bool:
        return not self.map.closed


def _counters() -> dict[str, int]:
    return {"acquired": 0, "reused": 0, "allocated": 0, "failures": 0, "bytes": 0}


class BufferPool:
    """Size-classed free lists, counters and the idle policy; subclasses make slabs."""

    kind = "abstract"

    def __init__(self, size: int, idle_s: float = 30.0) -> None:
        self.size = size
        self.idle_s = idle_s
        self._free: dict[int, list[tuple[_Slab, float]]] = {}
        self._lock = threading.Lock()
        self._totals = _counters()
        self._by_purpose: dict[str, dict[str, int]] = {}
        self.in_use_bytes = 0
        self.idle_bytes = 0
        self.dropped = 0
        self._next_trim = 0.0

    # Kept as attributes of the pool for callers that read them directly.
    @property
    def acquired(self) -> int:
        return self._totals["acquired"]

    @property
    def reused(self) -> int:
        return self._totals["reused"]

    @property
    def allocated(self) -> int:
        return self._totals["allocated"]

    @property
    def failures(self) -> int:
        return self._totals["failures"]

    @staticmethod
    def size_class(nbytes: int) -> int:
        return max(_MIN_CLASS, 1 << max(0, nbytes - 1).bit_length())

    def _new_slab(self, klass: int) -> _Slab:
        raise NotImplementedError

    def _count(self, purpose: str, key: str, n: int = 1) -> None:
        self._totals[key] += n
        self._by_purpose.setdefault(purpose, _counters())[key] += n

    def acquire(self, nbytes: int, purpose: str = TENSOR) -> np.ndarray:
        """A uint8 array of nbytes (its base spans the whole size class) in pool memory;
        PoolUnavailableError when the pool cannot give one."""
        klass = self.size_class(nbytes)
        now = time.monotonic()
        with self._lock:
            free = self._free.get(klass)
            slab = free.pop()[0] if free else None
            if slab is not None:
                self._count(purpose, "reused")
                self.idle_bytes -= klass
        if now >= self._next_trim:
            self.trim(now)
        if slab is None:
            slab = self._allocate(klass, purpose)
        array = slab.view()
        # numpy collapses view chains: a slice of a slice has the first array that owns
        # its memory, or sits on a non-array buffer, as its base. The finalizer must be on
        # that array, else it fires while slices of the buffer are still in use.
        assert not isinstance(array.base, np.ndarray)
        weakref.finalize(array, self._release, klass, slab)
        with self._lock:
            self._count(purpose, "acquired")
            self._count(purpose, "bytes", nbytes)
            self.in_use_bytes += klass
        return array[:nbytes]

    def _allocate(self, klass: int, purpose: str) -> _Slab:
        try:
            slab = self._try_new(klass)
        except PoolUnavailableError:
            self._drop_idle()  # idle buffers of other sizes hold the room: give it back
            try:
                slab = self._try_new(klass)
            except PoolUnavailableError:
                with self._lock:
                    self._count(purpose, "failures")
                raise
        with self._lock:
            self._count(purpose, "allocated")
        return slab

    def _try_new(self, klass: int) -> _Slab:
        with self._lock:
            if self.in_use_bytes + self.idle_bytes + klass > self.size:
                raise PoolUnavailableError(
                    f"a {klass}-byte buffer does not fit the {self.size}-byte {self.kind} pool")
        try:
            return self._new_slab(klass)
        except (OSError, ValueError) as exc:  # includes every mlos_ml error
            raise PoolUnavailableError(str(exc)) from exc

    def trim(self, now: float | None = None) -> None:
        """Drops buffers idle for longer than idle_s (memory stays bounded by use)."""
        now = time.monotonic() if now is None else now
        dropped: list[_Slab] = []
        with self._lock:
            self._next_trim = now + min(1.0, self.idle_s)
            for klass, entries in self._free.items():
                old = [slab for slab, since in entries if now - since >= self.idle_s]
                if old:
                    entries[:] = [e for e in entries if now - e[1] < self.idle_s]
                    self.idle_bytes -= klass * len(old)
                    dropped += old
            self.dropped += len(dropped)
        for slab in dropped:
            slab.close()

    def _drop_idle(self) -> None:
        with self._lock:
            idle = [slab for entries in self._free.values() for slab, _ in entries]
            self._free.clear()
            self.idle_bytes = 0
            self.dropped += len(idle)
        for slab in idle:
            slab.close()

    def _release(self, klass: int, slab: _Slab) -> None:
        with self._lock:
            self.in_use_bytes -= klass
            if slab.alive:
                self._free.setdefault(klass, []).append((slab, time.monotonic()))
                self.idle_bytes += klass

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self._totals, "in_use_bytes": self.in_use_bytes,
                    "idle_bytes": self.idle_bytes, "dropped": self.dropped}

    def purpose_stats(self, purpose: str) -> dict[str, int]:
        with self._lock:
            return dict(self._by_purpose.get(purpose) or _counters())

    def close(self) -> None:
        self._drop_idle()


class HostPool(BufferPool):
    """Anonymous memory of this process, at most `size` bytes in buffers at once."""

    kind = "userspace"

    def _new_slab(self, klass: int) -> _Slab:
        return _AnonymousSlab(klass)


class TensorPool(BufferPool):
    """Buffers carved from one pinned mlos-ml pool of `size` bytes (the module enforces
    the size; a full pool first gives back the idle buffers of other classes)."""

    kind = "mlos_ml"

    def __init__(self, device: mlos_ml.Device, size: int, idle_s: float = 30.0) -> None:
        self.pool = device.create_pool(size)
        super().__init__(self.pool.size, idle_s)

    def _try_new(self, klass: int) -> _Slab:
        try:
            return _MlosMlSlab(self.pool.alloc(klass), klass)
        except mlos_ml.MlosMlError as exc:
            raise PoolUnavailableError(str(exc)) from exc

    def stats(self) -> dict[str, int]:
        own = super().stats()
        with contextlib.suppress(mlos_ml.MlosMlError):
            kernel: dict[str, Any] = self.pool.stats()
            own.update(pool_size=int(kernel["size"]), pool_free=int(kernel["free"]),
                       pool_peak_used=int(kernel["peak_used"]),
                       pool_buffers=int(kernel["nr_buffers"]))
        return own

    def close(self) -> None:
        super().close()
        with contextlib.suppress(mlos_ml.MlosMlError):
            self.pool.destroy()
