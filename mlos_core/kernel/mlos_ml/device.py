# SPDX-License-Identifier: Apache-2.0
"""The /dev/mlos-ml descriptor and the objects it hands out (pools, buffers, leases)."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import enum
import fcntl
import mmap
import os
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import numpy as np

from . import uapi
from .errors import DeviceNotFoundError, MlosMlError, from_oserror


class ThreadClass(enum.IntEnum):
    LATENCY = uapi.CLASS_LATENCY  # SCHED_FIFO on the reserved CPUs, CPU latency QoS
    THROUGHPUT = uapi.CLASS_THROUGHPUT  # SCHED_OTHER nice 0, off the reserved CPUs
    BACKGROUND = uapi.CLASS_BACKGROUND  # SCHED_IDLE, off the reserved CPUs


@dataclasses.dataclass(frozen=True)
class ThreadStats:
    thread_class: ThreadClass
    preemptions: int
    voluntary: int


@dataclasses.dataclass(frozen=True)
class GpuLease:
    lease_id: int
    gpu: int
    size: int


def _ioctl(fd: int, cmd: int, arg: ctypes.Structure, operation: str) -> None:
    try:
        fcntl.ioctl(fd, cmd, arg, True)
    except OSError as exc:
        raise from_oserror(exc, operation) from None


class Buffer:
    """Pages of a pool behind their own descriptor: map them, pass the fd to others.

    `array()` views the pages as a numpy array without copying; ONNX Runtime IO binding
    reads and writes the same memory. Another process maps it with Buffer.from_fd().
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._map: mmap.mmap | None = None

    @classmethod
    def from_fd(cls, fd: int, size: int | None = None) -> Buffer:
        """Adopts a buffer descriptor received from another process (SCM_RIGHTS).

        The module is asked what the descriptor is: anything but an mlos-ml buffer raises
        MlosMlError (ENOTTY), and a size larger than the buffer raises ValueError."""
        info = uapi.BufInfo()
        _ioctl(fd, uapi.IOC_BUF_INFO, info, "buf_info")
        if size is not None and size > info.size:
            raise ValueError(f"buffer has {info.size} bytes, {size} requested")
        return cls(fd, int(info.size) if size is None else size)

    @property
    def memory(self) -> mmap.mmap:
        if self._map is None:
            if self.fd < 0:
                raise MlosMlError(0, "buffer is closed")
            self._map = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
        return self._map

    def array(self, dtype: Any = np.uint8, shape: Sequence[int] | None = None,
              offset: int = 0) -> np.ndarray:
        """A writable numpy view of the buffer (no copy)."""
        dt = np.dtype(dtype)
        count = -1 if shape is None else int(np.prod(shape))
        arr = np.frombuffer(self.memory, dtype=dt, count=count, offset=offset)
        return arr if shape is None else arr.reshape(tuple(shape))

    @property
    def address(self) -> int:
        """Address of the mapping in this process (for IO binding's buffer_ptr)."""
        return int(self.array().ctypes.data)

    def close(self) -> None:
        """Drops this process's descriptor and mapping; the pages return to the pool when
        no process holds either any more. Live numpy views keep the mapping alive."""
        if self._map is not None:
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Buffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Pool:
    """Pinned pages reserved at creation, charged to this process's RLIMIT_MEMLOCK."""

    def __init__(self, device: Device, pool_id: int, size: int) -> None:
        self.device = device
        self.pool_id = pool_id
        self.size = size

    def alloc(self, nbytes: int, zero: bool = False) -> Buffer:
        req = uapi.BufAlloc(pool_id=self.pool_id, size=nbytes,
                            flags=uapi.BUF_ZERO if zero else 0)
        _ioctl(self.device.fd, uapi.IOC_BUF_ALLOC, req, "buf_alloc")
        return Buffer(req.fd, req.size)

    def stats(self) -> dict[str, int]:
        req = uapi.PoolStats(pool_id=self.pool_id)
        _ioctl(self.device.fd, uapi.IOC_POOL_STATS, req, "pool_stats")
        out = req.as_dict()
        out.pop("pool_id")
        return out  # type: ignore[return-value]

    def destroy(self) -> None:
        """Drops the pool id; buffers still open keep their pages until they close."""
        _ioctl(self.device.fd, uapi.IOC_POOL_DESTROY, uapi.PoolDestroy(pool_id=self.pool_id),
               "pool_destroy")


class Device:
    """One open descriptor of /dev/mlos-ml. Closing it releases everything it created:
    pools (once their buffers are closed), thread registrations, GPU leases."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        ver = uapi.Version()
        _ioctl(fd, uapi.IOC_VERSION, ver, "version")
        if ver.api_version != uapi.API_VERSION:
            os.close(fd)
            raise MlosMlError(0, f"module API {ver.api_version}, binding {uapi.API_VERSION}")
        self.features = int(ver.features)
        self.page_size = int(ver.page_size)

    @classmethod
    def open(cls, path: str = uapi.DEVICE) -> Device:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise DeviceNotFoundError(2, f"{path} not found: the mlos_ml module is not "
                                      "loaded (modprobe mlos_ml)") from None
        except PermissionError as exc:
            raise from_oserror(exc, f"open {path} (join the mlos group)") from None
        try:
            return cls(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    @property
    def has_memory(self) -> bool:
        return bool(self.features & uapi.FEAT_MEMORY)

    @property
    def has_scheduler(self) -> bool:
        return bool(self.features & uapi.FEAT_SCHED)

    @property
    def has_gpu_manager(self) -> bool:
        return bool(self.features & uapi.FEAT_GPU)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Device:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        st = uapi.Stats()
        _ioctl(self.fd, uapi.IOC_STATS, st, "stats")
        out: dict[str, Any] = st.as_dict()
        threads = list(st.sched_threads)
        out["sched_threads"] = {c.name.lower(): threads[c.value] for c in ThreadClass}
        return out

    # memory manager
    def create_pool(self, size: int, numa_node: int | None = None) -> Pool:
        req = uapi.PoolCreate(size=size, numa_node=uapi.NUMA_ANY if numa_node is None
                              else numa_node)
        _ioctl(self.fd, uapi.IOC_POOL_CREATE, req, "pool_create")
        return Pool(self, int(req.pool_id), (size + self.page_size - 1) // self.page_size
                    * self.page_size)

    # scheduler
    def register_thread(self, thread_class: ThreadClass, tid: int = 0, rt_priority: int = 0,
                        cpus: Iterable[int] | None = None) -> None:
        """Applies the class's policy to a thread (0: the caller) until unregistered or
        this descriptor closes. cpus (latency only) overrides the reserved_cpus parameter."""
        mask = 0
        for cpu in cpus or ():
            if not 0 <= cpu < 64:
                raise ValueError(f"CPU {cpu} outside 0..63")
            mask |= 1 << cpu
        req = uapi.SchedRegister(tid=tid, thread_class=int(thread_class),
                                 rt_priority=rt_priority, cpu_mask=mask)
        _ioctl(self.fd, uapi.IOC_SCHED_REGISTER, req, "sched_register")

    def unregister_thread(self, tid: int = 0) -> None:
        _ioctl(self.fd, uapi.IOC_SCHED_UNREGISTER, uapi.SchedUnregister(tid=tid),
               "sched_unregister")

    def thread_stats(self, tid: int = 0) -> ThreadStats:
        req = uapi.SchedStats(tid=tid)
        _ioctl(self.fd, uapi.IOC_SCHED_STATS, req, "sched_stats")
        return ThreadStats(ThreadClass(req.thread_class), int(req.preemptions),
                           int(req.voluntary))

    # GPU manager
    def gpus(self) -> list[dict[str, Any]]:
        table = (uapi.GpuInfo * uapi.MAX_GPUS)()
        req = uapi.GpuList(count=uapi.MAX_GPUS, gpus=ctypes.addressof(table))
        _ioctl(self.fd, uapi.IOC_GPU_LIST, req, "gpu_list")
        return [table[i].as_dict() for i in range(min(req.count, uapi.MAX_GPUS))]

    def set_gpu_capacity(self, index: int, capacity: int) -> None:
        """Admin only (CAP_SYS_ADMIN): how many bytes device `index` may lend."""
        _ioctl(self.fd, uapi.IOC_GPU_SET_CAPACITY,
               uapi.GpuSetCapacity(index=index, capacity=capacity), "gpu_set_capacity")

    def lease_gpu(self, size: int, gpu: int | None = None) -> GpuLease:
        """Leases size bytes on device gpu, or on the least loaded device that fits."""
        req = uapi.GpuLease(size=size, gpu=uapi.GPU_ANY if gpu is None else gpu)
        _ioctl(self.fd, uapi.IOC_GPU_LEASE, req, "gpu_lease")
        return GpuLease(int(req.lease_id), int(req.gpu), size)

    def release_gpu(self, lease: GpuLease | int) -> None:
        lease_id = lease.lease_id if isinstance(lease, GpuLease) else lease
        _ioctl(self.fd, uapi.IOC_GPU_RELEASE, uapi.GpuRelease(lease_id=lease_id),
               "gpu_release")
