# SPDX-License-Identifier: Apache-2.0
"""CPU hogs run while a phase is measured and are all gone after it; figures add up."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from mlos_build.report.charts import log_ticks, nice_ticks
from mlos_build.report.contention import Hogs, measure_memory_bandwidth
from mlos_build.report.stats import spread, summarize_latencies


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _group_states(pgid: int) -> set[str]:
    states = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            states.add(fields[0])
    return states


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes only once reaped; Hogs waits for each child.
    return True


def test_local_hogs_burn_cpu_and_stop() -> None:
    with Hogs(2, "local", settle_s=0.2) as hogs:
        pids = [p.pid for p in hogs.procs]
        assert len(pids) == 2
        before = [_cpu_ticks(pid) for pid in pids]
        # Each must gain CPU time; on a loaded machine a hog may wait its turn (seen: one
        # still at its start-up ticks after 0.5 s beside two QEMU vCPUs), so poll.
        deadline = time.monotonic() + 15
        while True:
            time.sleep(0.2)
            after = [_cpu_ticks(pid) for pid in pids]
            if all(a > b for a, b in zip(after, before, strict=True)):
                break
            assert time.monotonic() < deadline, (before, after)
    assert not hogs.procs
    assert not any(_alive(pid) for pid in pids)


def test_a_hog_command_runs_in_its_own_group_and_is_ended(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    cmd = f"echo {{n}} > {marker}; sleep 60 & sleep 60"
    with Hogs(3, "command", command=cmd, settle_s=0.3) as hogs:
        pid = hogs.procs[0].pid
        assert os.getpgid(pid) == pid
        assert marker.read_text().strip() == "3"
    time.sleep(0.2)
    # The whole group, background sleep included, has ended (zombies wait for a reaper).
    assert _group_states(pid) <= {"Z"}


def test_a_hog_command_that_fails_at_once_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="exited early"), Hogs(1, "command",
                                                                 command="exit 3"):
        pass


def test_command_mode_needs_a_command() -> None:
    with pytest.raises(ValueError, match="--hog-command"):
        Hogs(2, "command")


def test_repetition_figures() -> None:
    lat = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    rep = summarize_latencies(lat, wall_s=2.0, errors=1)
    assert rep["requests"] == 101 and rep["ok"] == 100 and rep["errors"] == 1
    assert rep["p50_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 50))
    assert rep["p99_ms"] == pytest.approx(99.01)
    assert rep["throughput_rps"] == pytest.approx(50.0)
    empty = summarize_latencies([], 1.0, 5)
    assert empty["p99_ms"] is None and empty["throughput_rps"] == 0
    assert spread([3.0, None, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}
    assert spread([None]) is None


def test_axis_ticks_cover_the_range() -> None:
    ticks = nice_ticks(0, 23.4)
    assert ticks[0] == 0 and ticks[-1] >= 23.4 and len(ticks) <= 7
    assert nice_ticks(0, 3250)[-1] >= 3250  # the axis always reaches the longest bar
    decades = log_ticks(0.2, 4000)
    assert decades[0] <= 1 and decades[-1] >= 1000 and 10 in decades


def test_memory_hogs_move_memory_and_are_ended_with_the_cpu_hogs() -> None:
    # Measured alone, one hog streams far more than a cache could hold each second.
    assert measure_memory_bandwidth(64, seconds=0.3) > 0.5  # GiB/s
    with Hogs(1, "local", settle_s=0.5, mem_hogs=1, mem_mib=64) as hogs:
        assert len(hogs.procs) == 2
        mem = hogs.procs[1]
        rss_kib = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{mem.pid}/status")
                                .read_text()).group(1))  # type: ignore[union-attr]
        assert rss_kib > 2 * 60 * 1024  # both 64 MiB buffers are touched
        before = _cpu_ticks(mem.pid)
        time.sleep(0.4)
        assert _cpu_ticks(mem.pid) > before
        described = hogs.describe()
    assert described["memory_hogs"] == 1 and described["memory_hog_mib"] == 64
    assert described["nice"] == 0  # HOG_NICE, whatever the suite's own priority
    assert not hogs.procs and not _alive(mem.pid)
    # A user-given command runs what it runs: no memory hog is added beside it.
    assert Hogs(2, "command", command="sleep 1", mem_hogs=1).describe()["memory_hogs"] == 0


# Run from a suite at nice -10: every hog is at HOG_NICE (0) all the same.
_FROM_A_RAISED_SUITE = """
import os
from mlos_build.report.contention import Hogs
with Hogs(1, "local", settle_s=0.1, mem_hogs=1, mem_mib=8) as hogs:
    print(os.getpriority(os.PRIO_PROCESS, 0),
          *(os.getpriority(os.PRIO_PROCESS, p.pid) for p in hogs.procs))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority needs root")
def test_hogs_run_at_normal_priority_beside_a_raised_suite() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FROM_A_RAISED_SUITE], capture_output=True,
                         text=True, timeout=120, check=True, preexec_fn=lambda: os.nice(-10))
    assert out.stdout.split() == ["-10", "0", "0"], out.stderr


def test_a_suite_that_may_not_lower_a_nice_value_keeps_its_hogs_at_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Asked for hogs at a lower nice than its own, an unprivileged suite cannot lower it
    # (setpriority would fail in the child): the hogs stay at the suite's nice, and the
    # results say so.
    own = os.getpriority(os.PRIO_PROCESS, 0)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with Hogs(1, "local", settle_s=0.1, nice=own - 1) as hogs:
        assert hogs.describe()["nice"] == own
        assert os.getpriority(os.PRIO_PROCESS, hogs.procs[0].pid) == own


_FROM_A_REAL_TIME_SUITE = """
import os, threading, time
from mlos_build.report.contention import Hogs, client_priority, set_client_rt_priority
from mlos_build.report.sched_probe import Probe
set_client_rt_priority(1)
seen = {}
worker = threading.Thread(target=lambda: seen.update(worker=client_priority()["policy"]))
worker.start(); worker.join()
probe = Probe(os.getpid())
probe.start()
time.sleep(0.3)  # the sampler has set its own policy by now
sampler = next(t for t in threading.enumerate() if t.name == "sched-probe")
probe_policy = os.sched_getscheduler(sampler.native_id)
probe.stop()
with Hogs(1, "local", settle_s=0.1, mem_hogs=1, mem_mib=8) as hogs:
    hog_policies = [os.sched_getscheduler(p.pid) for p in hogs.procs]
print(client_priority()["policy"], client_priority()["rt_priority"], seen["worker"],
      probe_policy, *hog_policies)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a real-time priority needs root")
def test_a_real_time_load_generator_keeps_its_hogs_and_probe_at_normal_policy() -> None:
    # The suite's threads inherit SCHED_FIFO (the load generator is not delayed by the
    # hogs), but the hogs it starts and the probe's sampler run SCHED_OTHER (0): neither
    # may get ahead of the service.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FROM_A_REAL_TIME_SUITE],
                         capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["fifo", "1", "fifo", "0", "0", "0"], out.stderr


def test_an_unprivileged_real_time_load_generator_is_refused_with_what_to_do() -> None:
    import shutil
    import subprocess
    import sys

    code = ("import resource\n"
            "resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))\n"
            "from mlos_build.report.contention import set_client_rt_priority\n"
            "set_client_rt_priority(1)\n")
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:  # root without CAP_SYS_NICE, as an unprivileged user runs it
        if not shutil.which("setpriv"):
            pytest.skip("setpriv (util-linux) is needed to drop CAP_SYS_NICE")
        cmd = ["setpriv", "--inh-caps=-sys_nice", "--bounding-set=-sys_nice", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "ClientPriorityError" in out.stderr and "as root" in out.stderr, out.stderr
