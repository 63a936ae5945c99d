# SPDX-License-Identifier: Apache-2.0
"""Python binding of the mlos-ml kernel module (kernel/include/uapi/mlos_ml.h).

    from mlos_core.kernel import mlos_ml
    params = mlos_ml.read_parameters()          # None when the module is not loaded
    with mlos_ml.Device.open() as dev:          # DeviceNotFoundError without it
        pool = dev.create_pool(64 << 20)        # pinned, charged to RLIMIT_MEMLOCK
        buf = pool.alloc(4 << 20)               # buf.fd: pass to another process
        x = buf.array("float32", (1024, 1024))  # zero-copy numpy view
        dev.register_thread(mlos_ml.ThreadClass.LATENCY)
        lease = dev.lease_gpu(1 << 30)          # NoDeviceError without GPUs

Disabled features raise FeatureDisabledError; every error is an MlosMlError.
"""

from .device import Buffer, Device, GpuLease, Pool, ThreadClass, ThreadStats
from .errors import (
    BusyError,
    DeviceNotFoundError,
    FeatureDisabledError,
    LimitError,
    MlosMlError,
    ModulePermissionError,
    NoDeviceError,
    NotFoundError,
    PoolExhaustedError,
)
from .params import (
    RUNTIME_MODES,
    ModuleParameters,
    mode_for,
    parse_bool,
    read_parameters,
    runtime_mode,
)
from .uapi import DEVICE

__all__ = [
    "DEVICE", "RUNTIME_MODES", "Buffer", "BusyError", "Device", "DeviceNotFoundError",
    "FeatureDisabledError", "GpuLease", "LimitError", "MlosMlError", "ModuleParameters",
    "mode_for",
    "ModulePermissionError", "NoDeviceError", "NotFoundError", "Pool", "PoolExhaustedError",
    "ThreadClass", "ThreadStats", "parse_bool", "read_parameters", "runtime_mode",
]
