# SPDX-License-Identifier: Apache-2.0
"""ctypes mirror of kernel/include/uapi/mlos_ml.h (the module's user-space API).

Field for field the same layout as the C header; tests/unit/test_mlos_ml_binding.py
compiles the header and compares sizes and command numbers so the two cannot drift.
"""

from __future__ import annotations

import ctypes

DEVICE = "/dev/mlos-ml"
API_VERSION = 1
IOC_MAGIC = 0xB7

FEAT_MEMORY = 1 << 0
FEAT_SCHED = 1 << 1
FEAT_GPU = 1 << 2

NUMA_ANY = -1
BUF_ZERO = 1 << 0
CLASS_LATENCY = 1
CLASS_THROUGHPUT = 2
CLASS_BACKGROUND = 3
GPU_ANY = -1
MAX_GPUS = 16

u16, u32, u64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
s32, u8 = ctypes.c_int32, ctypes.c_uint8


class _Struct(ctypes.Structure):
    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name, *_ in self._fields_ if name != "reserved"}


class Version(_Struct):
    _fields_ = [("api_version", u32), ("features", u32), ("page_size", u32),
                ("reserved", u32 * 5)]


class PoolCreate(_Struct):
    _fields_ = [("size", u64), ("numa_node", s32), ("flags", u32), ("pool_id", u32),
                ("reserved", u32)]


class PoolDestroy(_Struct):
    _fields_ = [("pool_id", u32), ("reserved", u32)]


class BufAlloc(_Struct):
    _fields_ = [("pool_id", u32), ("flags", u32), ("size", u64), ("fd", s32),
                ("reserved", u32)]


class BufInfo(_Struct):
    _fields_ = [("size", u64), ("numa_node", s32), ("reserved0", u32), ("reserved", u64 * 2)]


class PoolStats(_Struct):
    _fields_ = [("pool_id", u32), ("numa_node", s32), ("size", u64), ("free", u64),
                ("peak_used", u64), ("nr_buffers", u64), ("allocs", u64),
                ("alloc_failures", u64), ("reserved", u64 * 2)]


class SchedRegister(_Struct):
    _fields_ = [("tid", s32), ("thread_class", u32), ("rt_priority", u32), ("flags", u32),
                ("cpu_mask", u64), ("reserved", u64 * 2)]


class SchedUnregister(_Struct):
    _fields_ = [("tid", s32), ("reserved", u32)]


class SchedStats(_Struct):
    _fields_ = [("tid", s32), ("thread_class", u32), ("preemptions", u64),
                ("voluntary", u64), ("reserved", u64 * 2)]


class GpuInfo(_Struct):
    _fields_ = [("index", u32), ("vendor", u16), ("device", u16), ("pci_class", u32),
                ("domain", u16), ("bus", u8), ("devfn", u8), ("capacity", u64),
                ("used", u64), ("nr_leases", u32), ("reserved", u32)]


class GpuList(_Struct):
    _fields_ = [("count", u32), ("reserved", u32), ("gpus", u64)]


class GpuSetCapacity(_Struct):
    _fields_ = [("index", u32), ("reserved", u32), ("capacity", u64)]


class GpuLease(_Struct):
    _fields_ = [("size", u64), ("gpu", s32), ("lease_id", u32), ("flags", u32),
                ("reserved", u32)]


class GpuRelease(_Struct):
    _fields_ = [("lease_id", u32), ("reserved", u32)]


class Stats(_Struct):
    _fields_ = [("pools", u64), ("buffers", u64), ("pinned_bytes", u64),
                ("sched_threads", u64 * 4), ("qos_active", u64), ("gpus", u64),
                ("leases", u64), ("leased_bytes", u64), ("reserved", u64 * 4)]


def _iowr(nr: int, struct: type[ctypes.Structure]) -> int:
    # _IOC(_IOC_READ|_IOC_WRITE, magic, nr, size) on x86/arm64 (asm-generic ioctl.h)
    return (3 << 30) | (ctypes.sizeof(struct) << 16) | (IOC_MAGIC << 8) | nr


IOC_VERSION = _iowr(0x00, Version)
IOC_STATS = _iowr(0x01, Stats)
IOC_POOL_CREATE = _iowr(0x10, PoolCreate)
IOC_POOL_DESTROY = _iowr(0x11, PoolDestroy)
IOC_BUF_ALLOC = _iowr(0x12, BufAlloc)
IOC_POOL_STATS = _iowr(0x13, PoolStats)
IOC_BUF_INFO = _iowr(0x14, BufInfo)
IOC_SCHED_REGISTER = _iowr(0x20, SchedRegister)
IOC_SCHED_UNREGISTER = _iowr(0x21, SchedUnregister)
IOC_SCHED_STATS = _iowr(0x22, SchedStats)
IOC_GPU_LIST = _iowr(0x30, GpuList)
IOC_GPU_SET_CAPACITY = _iowr(0x31, GpuSetCapacity)
IOC_GPU_LEASE = _iowr(0x32, GpuLease)
IOC_GPU_RELEASE = _iowr(0x33, GpuRelease)

STRUCTS: dict[str, type[ctypes.Structure]] = {
    "mlos_ml_version": Version, "mlos_ml_pool_create": PoolCreate,
    "mlos_ml_pool_destroy": PoolDestroy, "mlos_ml_buf_alloc": BufAlloc,
    "mlos_ml_pool_stats": PoolStats, "mlos_ml_buf_info": BufInfo,
    "mlos_ml_sched_register": SchedRegister,
    "mlos_ml_sched_unregister": SchedUnregister, "mlos_ml_sched_stats": SchedStats,
    "mlos_ml_gpu_info": GpuInfo, "mlos_ml_gpu_list": GpuList,
    "mlos_ml_gpu_set_capacity": GpuSetCapacity, "mlos_ml_gpu_lease": GpuLease,
    "mlos_ml_gpu_release": GpuRelease, "mlos_ml_stats": Stats,
}
COMMANDS: dict[str, int] = {
    name: value for name, value in globals().items() if name.startswith("IOC_") and
    name != "IOC_MAGIC"
}
