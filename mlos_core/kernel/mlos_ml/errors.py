# SPDX-License-Identifier: Apache-2.0
"""Errors of the mlos-ml binding: one class per way the module says no.

All derive from MlosMlError (an OSError, so errno and strerror stay available); MLOS Core
catches MlosMlError to fall back to the userspace path without failing requests.
"""

from __future__ import annotations

import errno as _errno


class MlosMlError(OSError):
    """The module refused or failed a call."""


class DeviceNotFoundError(MlosMlError):
    """/dev/mlos-ml does not exist: the module is not loaded (userspace mode)."""


class FeatureDisabledError(MlosMlError):
    """The feature is switched off by its module parameter (ioctl answered EOPNOTSUPP)."""


class ModulePermissionError(MlosMlError):
    """The caller may not do this (another process's thread, or an admin-only call)."""


class PoolExhaustedError(MlosMlError):
    """The pool has no room for the buffer (ENOSPC), or a GPU has no capacity left."""


class NoDeviceError(MlosMlError):
    """No such GPU, or no GPU at all (ENODEV)."""


class NotFoundError(MlosMlError):
    """No pool, registration or lease by that id on this descriptor (ENOENT / ESRCH)."""


class BusyError(MlosMlError):
    """The thread is already registered, or the capacity is in use (EBUSY)."""


class LimitError(MlosMlError):
    """Locked-memory limit (RLIMIT_MEMLOCK) or a module pool limit reached (ENOMEM/E2BIG)."""


_FEATURE = {"pool": "memory manager (enable_tmm)", "buf": "memory manager (enable_tmm)",
            "sched": "scheduler (enable_scheduler)", "gpu": "GPU manager (enable_gpu_manager)"}
_BY_ERRNO: dict[int, type[MlosMlError]] = {
    _errno.EOPNOTSUPP: FeatureDisabledError, _errno.EPERM: ModulePermissionError,
    _errno.EACCES: ModulePermissionError, _errno.ENOSPC: PoolExhaustedError,
    _errno.ENODEV: NoDeviceError, _errno.ENOENT: NotFoundError, _errno.ESRCH: NotFoundError,
    _errno.EBUSY: BusyError, _errno.ENOMEM: LimitError, _errno.E2BIG: LimitError,
}


def from_oserror(exc: OSError, operation: str) -> MlosMlError:
    """The binding's exception for an ioctl that failed with exc."""
    code = exc.errno or 0
    cls = _BY_ERRNO.get(code, MlosMlError)
    if cls is FeatureDisabledError:
        feature = _FEATURE.get(operation.split("_")[0], operation)
        msg = f"{operation}: the module's {feature} is disabled; reload mlos_ml with it enabled"
    elif cls is LimitError:
        msg = (f"{operation}: {exc.strerror} (raise RLIMIT_MEMLOCK / LimitMEMLOCK=, or the "
               "module's max_pool_mb / max_total_mb)")
    else:
        msg = f"{operation}: {exc.strerror or 'failed'}"
    return cls(code, msg)
