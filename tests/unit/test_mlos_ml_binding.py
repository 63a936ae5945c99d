# SPDX-License-Identifier: Apache-2.0
"""The mlos-ml Python binding. Layout, parameters and errors are checked everywhere; the
tests that need /dev/mlos-ml skip on a host without the module and run for real inside the
kernel layer's QEMU guests (tests/kernel/test_kernel_python.py)."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from mlos_core.kernel import mlos_ml
from mlos_core.kernel.mlos_ml import uapi
from mlos_core.kernel.mlos_ml.errors import from_oserror

REPO = Path(__file__).resolve().parents[2]
HEADER = REPO / "kernel" / "include" / "uapi" / "mlos_ml.h"
HAS_DEVICE = os.path.exists(mlos_ml.DEVICE)
needs_device = pytest.mark.skipif(not HAS_DEVICE, reason=f"{mlos_ml.DEVICE} absent "
                                  "(module not loaded; the kernel layer runs these in QEMU)")


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_layout_matches_the_c_header(tmp_path: Path) -> None:
    lines = [f'printf("{n} %zu\\n", sizeof(struct {n}));' for n in uapi.STRUCTS]
    lines += [f'printf("IOC_{c} %lu\\n", (unsigned long)MLOS_ML_IOC_{c});'
              for c in (name[4:] for name in uapi.COMMANDS)]
    src = tmp_path / "layout.c"
    src.write_text(f'#include <stdio.h>\n#include "{HEADER}"\nint main(void) {{\n'
                   + "\n".join(lines) + "\nreturn 0;\n}\n")
    subprocess.run(["cc", "-o", str(tmp_path / "layout"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True,
                         check=True).stdout
    got = dict(line.split() for line in out.splitlines())
    for name, struct in uapi.STRUCTS.items():
        assert int(got[name]) == ctypes.sizeof(struct), name
    for name, value in uapi.COMMANDS.items():
        assert int(got[name]) == value, name


@pytest.mark.parametrize(("text", "value"), [("Y", True), ("N", False), ("1", True),
                                             ("0", False), ("y\n", True)])
def test_bool_parameters_accept_y_n_1_0(text: str, value: bool) -> None:
    assert mlos_ml.parse_bool(text) is value


def _fake_sysfs(root: Path, tmm: str, sched: str, gpu: str) -> Path:
    pdir = root / "module" / "mlos_ml" / "parameters"
    pdir.mkdir(parents=True)
    for name, value in {"enable_tmm": tmm, "enable_scheduler": sched,
                        "enable_gpu_manager": gpu, "debug_level": "2",
                        "reserved_cpus": "1"}.items():
        (pdir / name).write_text(value + "\n")
    return root


@pytest.mark.parametrize(("flags", "mode"), [
    (("Y", "N", "N"), "kernel_basic"), (("Y", "Y", "N"), "kernel_scheduler"),
    (("1", "1", "1"), "kernel_full"), (("N", "Y", "Y"), "userspace")])
def test_runtime_mode_from_parameters(tmp_path: Path, flags: tuple[str, str, str],
                                      mode: str) -> None:
    root = _fake_sysfs(tmp_path, *flags)
    params = mlos_ml.read_parameters(root)
    assert params is not None and params.runtime_mode == mode
    assert params.debug_level == 2 and params.extra == {"reserved_cpus": "1"}
    assert mlos_ml.runtime_mode(root) == mode


def test_absent_module_means_userspace(tmp_path: Path) -> None:
    assert mlos_ml.read_parameters(tmp_path) is None
    assert mlos_ml.runtime_mode(tmp_path) == "userspace"


def test_missing_device_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(mlos_ml.DeviceNotFoundError, match="not loaded"):
        mlos_ml.Device.open(str(tmp_path / "mlos-ml"))


def test_errno_maps_to_exceptions() -> None:
    exc = from_oserror(OSError(errno.EOPNOTSUPP, "Operation not supported"), "sched_register")
    assert isinstance(exc, mlos_ml.FeatureDisabledError) and "enable_scheduler" in str(exc)
    assert isinstance(from_oserror(OSError(errno.ENOSPC, "x"), "buf_alloc"),
                      mlos_ml.PoolExhaustedError)
    assert isinstance(from_oserror(OSError(errno.EPERM, "x"), "x"), mlos_ml.ModulePermissionError)
    assert isinstance(from_oserror(OSError(errno.EINVAL, "x"), "x"), mlos_ml.MlosMlError)


# ---- with the module loaded ---------------------------------------------------------


@needs_device
def test_version_matches_parameters() -> None:
    params = mlos_ml.read_parameters()
    assert params is not None
    with mlos_ml.Device.open() as dev:
        assert dev.has_memory == params.enable_tmm
        assert dev.has_scheduler == params.enable_scheduler
        assert dev.has_gpu_manager == params.enable_gpu_manager
        assert dev.page_size == os.sysconf("SC_PAGE_SIZE")


@needs_device
def test_pool_buffer_as_numpy_and_shared_by_fd() -> None:
    with mlos_ml.Device.open() as dev:
        if not dev.has_memory:
            with pytest.raises(mlos_ml.FeatureDisabledError):
                dev.create_pool(1 << 20)
            return
        pool = dev.create_pool(4 << 20)
        buf = pool.alloc(1 << 20)
        arr = buf.array(np.float32, (512, 512))
        arr[:] = np.arange(512 * 512, dtype=np.float32).reshape(512, 512)
        parent, child = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # another process maps the same pages from the passed descriptor
            try:
                _, fds, _, _ = socket.recv_fds(child, 1, 1)
                other = mlos_ml.Buffer.from_fd(fds[0]).array(np.float32, (512, 512))
                ok = other[511, 511] == 512 * 512 - 1
                other[0, 0] = -1.0
                os._exit(0 if ok else 1)
            except BaseException:
                os._exit(2)
        socket.send_fds(parent, [b"x"], [buf.fd])
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert arr[0, 0] == -1.0  # the child's write, seen without any copy
        stats = pool.stats()
        assert stats["nr_buffers"] == 1 and stats["free"] == 3 << 20
        with open("/dev/null", "rb") as null, pytest.raises(mlos_ml.MlosMlError):
            mlos_ml.Buffer.from_fd(null.fileno())
        with pytest.raises(ValueError):
            mlos_ml.Buffer.from_fd(buf.fd, 2 << 20)
        with pytest.raises(mlos_ml.PoolExhaustedError):
            pool.alloc(4 << 20)
        del arr
        buf.close()
        assert pool.stats()["nr_buffers"] == 0
        pool.destroy()
        with pytest.raises(mlos_ml.NotFoundError):
            pool.stats()


@needs_device
def test_scheduler_registration_round_trip() -> None:
    with mlos_ml.Device.open() as dev:
        if not dev.has_scheduler:
            with pytest.raises(mlos_ml.FeatureDisabledError, match="enable_scheduler"):
                dev.register_thread(mlos_ml.ThreadClass.LATENCY)
            return
        result: dict[str, object] = {}

        def worker() -> None:
            dev.register_thread(mlos_ml.ThreadClass.LATENCY)
            result["policy"] = os.sched_getscheduler(0)
            result["stats"] = dev.thread_stats()
            with pytest.raises(mlos_ml.BusyError):
                dev.register_thread(mlos_ml.ThreadClass.LATENCY)
            dev.unregister_thread()
            result["after"] = os.sched_getscheduler(0)

        th = threading.Thread(target=worker)
        th.start()
        th.join()
        assert result["policy"] == os.SCHED_FIFO | os.SCHED_RESET_ON_FORK
        assert result["after"] == os.SCHED_OTHER
        stats = result["stats"]
        assert isinstance(stats, mlos_ml.ThreadStats)
        assert stats.thread_class is mlos_ml.ThreadClass.LATENCY
        with pytest.raises(mlos_ml.NotFoundError):
            dev.register_thread(mlos_ml.ThreadClass.BACKGROUND, tid=999999)


@needs_device
def test_gpu_table_and_leases() -> None:
    with mlos_ml.Device.open() as dev:
        if not dev.has_gpu_manager:
            with pytest.raises(mlos_ml.FeatureDisabledError):
                dev.gpus()
            return
        gpus = dev.gpus()
        if not gpus:
            with pytest.raises(mlos_ml.NoDeviceError):
                dev.lease_gpu(1 << 20)
            return
        for gpu in gpus:
            dev.set_gpu_capacity(gpu["index"], 32 << 20)
        lease = dev.lease_gpu(8 << 20)
        assert dev.gpus()[lease.gpu]["used"] == 8 << 20
        assert dev.stats()["leases"] == 1
        dev.release_gpu(lease)
        assert dev.stats()["leases"] == 0
