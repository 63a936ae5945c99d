# SPDX-License-Identifier: Apache-2.0
"""The mlos-ml module in real Debian kernels (6.1 and 6.12) under QEMU.

One boot per kernel loads the module in each mode (basic, scheduler, full), checks sysfs,
runs the C selftests (TAP), the race selftests, the multi-threaded and the single-threaded
ioctl fuzzers, unloads, and scans the kernel log.
"""

from __future__ import annotations

import mlos_guest as guest
import pytest
from conftest import FUZZ_CALLS, MODES, MTFUZZ_CALLS, RACE_MODES

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(900)]

Booted = tuple[str, int, guest.GuestRun]


def _tail(run: guest.GuestRun) -> str:
    return run.output[-6000:]


def _tap(lines: list[str]) -> tuple[list[str], list[str]]:
    """(every result line, the failed ones) of a TAP stream whose plan must be met."""
    assert "TAP version 13" in lines, lines
    plan = next(line for line in lines if line.startswith("1.."))
    results = [line for line in lines if line.startswith(("ok ", "not ok "))]
    assert len(results) == int(plan[3:]), lines
    return results, [line for line in results if line.startswith("not ok")]


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
    results, failed = _tap(run.prefixed("MLOS-TAP", mode))
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


@pytest.mark.parametrize("mode", RACE_MODES)
def test_race_selftests_pass(booted: Booted, mode: str) -> None:
    """Creates with read-only result buffers raced against destroys by guessed id, and a
    process killed mid-flight: nothing destroyable before it is published, nothing left."""
    _, ngpus, run = booted
    results, failed = _tap(run.prefixed("MLOS-RACE", mode))
    assert not failed, failed
    ran = {line.split(" - ")[1].split()[0] for line in results if "# SKIP" not in line}
    must = {"pool_create_ro_vs_destroy", "buf_alloc_ro_vs_close", "crash_releases_all"}
    if MODES[mode]["enable_gpu_manager"] == "Y" and ngpus:
        must.add("gpu_lease_ro_vs_release")
    assert must <= ran, (must - ran, results)
    assert run.result(mode, "race_rc") == ["0"]


def _mtfuzz_summary(run: guest.GuestRun, mode: str) -> dict[str, str]:
    lines = [line for line in run.prefixed("MLOS-MTFUZZ", mode)
             if line.startswith("# fuzz_mt threads=")]
    assert lines, run.prefixed("MLOS-MTFUZZ", mode) or _tail(run)
    return dict(item.split("=") for item in lines[0].split()[2:])


@pytest.mark.parametrize("mode", list(MODES))
def test_mt_fuzz_leaves_no_leak(booted: Booted, mode: str) -> None:
    _, _, run = booted
    results, failed = _tap(run.prefixed("MLOS-MTFUZZ", mode))
    assert not failed and len(results) == 2, results
    fields = _mtfuzz_summary(run, mode)
    assert int(fields["threads"]) >= 2
    assert int(fields["ioctls"]) >= MTFUZZ_CALLS[mode]
    # It really reached the paths it is for: copies out that fault, ids other threads
    # created found by guessing, successes and rejections.
    for key in ("ok", "efault", "einval", "enoent", "guessed_hits", "ro_results", "mmaps"):
        assert int(fields[key]) > 0, (key, fields)
    assert run.result(mode, "mtfuzz_rc") == ["0"]


def test_mt_fuzz_calls_per_kernel(booted: Booted) -> None:
    _, _, run = booted
    total = sum(int(_mtfuzz_summary(run, mode)["ioctls"]) for mode in MODES)
    assert total >= 100_000, total


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
