# SPDX-License-Identifier: Apache-2.0
"""The mlos-ml module in real Debian kernels (6.1 and 6.12) under QEMU.

One boot per kernel loads the module in each mode (basic, scheduler, full), checks sysfs,
runs the C selftests (TAP) and the ioctl fuzzer, unloads, and scans the kernel log.
"""

from __future__ import annotations

import mlos_guest as guest
import pytest
from conftest import FUZZ_CALLS, MODES

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(900)]

Booted = tuple[str, int, guest.GuestRun]


def _tail(run: guest.GuestRun) -> str:
    return run.output[-6000:]


def test_guest_boots_and_finishes(booted: Booted) -> None:
    abi, _, run = booted
    assert run.result("kernel") == [abi], _tail(run)
    assert run.result("done") == [], _tail(run)
    assert run.returncode == 0, _tail(run)


@pytest.mark.parametrize("mode", list(MODES))
def test_mode_loads_with_its_parameters(booted: Booted, mode: str) -> None:
    _, _, run = booted
    assert run.result(mode, "insmod") == ["ok"], _tail(run)
    for name, value in MODES[mode].items():
        assert run.result(mode, "param", name) == [value], (mode, name, _tail(run))
    assert run.result(mode, "param", "reserved_cpus") == ["1"]
    assert run.result(mode, "param", "max_total_mb") == ["256"]
    assert run.result(mode, "devnode") == ["660"]
    assert run.result(mode, "rmmod") == ["ok"], _tail(run)


@pytest.mark.parametrize("mode", list(MODES))
def test_selftests_pass(booted: Booted, mode: str) -> None:
    _, _, run = booted
    tap = run.prefixed("MLOS-TAP", mode)
    assert "TAP version 13" in tap, _tail(run)
    plan = next(line for line in tap if line.startswith("1.."))
    total = int(plan[3:])
    results = [line for line in tap if line.startswith(("ok ", "not ok "))]
    assert len(results) == total, tap
    failed = [line for line in results if line.startswith("not ok")]
    assert not failed, failed
    skipped = [line for line in results if "# SKIP" in line]
    # Only the features this mode switches off may skip, never the ones it enables.
    for line in skipped:
        assert "feature disabled" in line, line
        name = line.split(" - ")[1].split()[0]
        feature = {"pool": "enable_tmm", "buf": "enable_tmm", "memlock": "enable_tmm",
                   "close": "enable_tmm", "sched": "enable_scheduler",
                   "gpu": "enable_gpu_manager"}[name.split("_")[0]]
        assert MODES[mode][feature] == "N", line
    assert run.result(mode, "selftest_rc") == ["0"]


@pytest.mark.parametrize("mode", list(MODES))
def test_fuzz_leaves_no_leak(booted: Booted, mode: str) -> None:
    _, ngpus, run = booted
    assert run.result(mode, "fuzz_rc") == ["0"], run.prefixed("MLOS-FUZZ", mode)
    summary = [line for line in run.prefixed("MLOS-FUZZ", mode) if line.startswith("fuzz ")]
    assert summary, _tail(run)
    fields = dict(item.split("=") for item in summary[0].split()[1:])
    assert int(fields["calls"]) >= FUZZ_CALLS[mode]
    assert int(fields["ok"]) > 0 and int(fields["einval"]) > 0
    stats = run.result(mode, "stats")
    assert stats, _tail(run)
    figures = dict(zip(stats[::2], (int(v) for v in stats[1::2]), strict=True))
    want_gpus = ngpus if MODES[mode]["enable_gpu_manager"] == "Y" else 0
    assert figures.pop("gpus") == want_gpus
    assert all(v == 0 for v in figures.values()), figures
    # The fuzzer registers random threads, pid 1 among them: all must be restored.
    assert run.result(mode, "init_sched") == ["0"]


def test_kernel_log_clean(booted: Booted) -> None:
    _, _, run = booted
    assert run.result("dmesg_bad") == ["0"], run.prefixed("MLOS-DMESG")
    klog = "\n".join(run.prefixed("MLOS-KLOG"))
    assert klog.count("mlos-ml: loaded") == len(MODES), klog
    assert klog.count("mlos-ml: unloaded") == len(MODES), klog


def test_gpu_discovery_matches_devices(booted: Booted) -> None:
    _, ngpus, run = booted
    lines = [line for line in run.prefixed("MLOS-TAP", "full") if line.startswith("# gpu ")]
    assert len(lines) == ngpus, lines
