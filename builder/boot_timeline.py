# SPDX-License-Identifier: Apache-2.0
"""Where a boot spends its time, read from the guest's serial console as QEMU writes it.

The host stamps each console line with the seconds since QEMU started (`StampedConsole`).
Kernel messages carry the guest's own clock (`[   12.345678] ...`), so the smallest
difference between the two is what the firmware, the boot loader and loading the kernel
took before the guest's clock started: adding it turns a guest uptime (the smoke test's
"healthy at uptime N") into host time. `Timeline` turns the stamped lines into the
milestones systemd prints on the console (its status lines: `Welcome to`, `Reached target
...`, `Started ...`, the login prompt) and the units that took longest from "Starting
X..." to "Started/Finished X". Nothing in the image is changed for it: a plain mkosi
image and an MLOS image are read the same way.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

# Terminal control: CSI sequences (colours, erase line) and two-byte ones (ESC M).
ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[A-Za-z]|[@-Z\\-_])")
KERNEL_TIME = re.compile(r"^\[\s*(\d+\.\d+)\]")
LOGIN = re.compile(r"\blogin: ")
# systemd's status lines: "         Starting foo.service - Description..." and
# "[  OK  ] Started foo.service - Description." (the text may be shortened with "…").
STARTING = re.compile(r"^\s+Starting (\S+)")
DONE = re.compile(r"^\[\s*OK\s*\] (?:Started|Finished|Mounted|Reached target|Found device) (\S+)")

#: (name, pattern, the how-manieth match counts): the milestones, in boot order.
MILESTONES: tuple[tuple[str, re.Pattern[str], int], ...] = (
    ("initrd: systemd starts", re.compile(r"^Welcome to "), 1),
    ("root file system mounted (initrd)", re.compile(r"\] Mounted sysroot\.mount"), 1),
    ("switched to the root file system", re.compile(r"^Welcome to "), 2),
    ("basic.target", re.compile(r"\] Reached target basic\.target"), 2),
    ("mlos-core.service started", re.compile(r"\] Started mlos-core\.service"), 1),
    ("multi-user.target", re.compile(r"\] Reached target multi-user\.target"), 1),
    ("login prompt", LOGIN, 1),
)


class StampedConsole:
    """While the block runs, reads `console` as it grows and stamps each line with the
    seconds since `start` (a time.monotonic() value). The login prompt has no line end
    yet when it appears: the unfinished last line counts as a line too."""

    def __init__(self, console: Path, start: float, poll_s: float = 0.1) -> None:
        self.console = console
        self.start = start
        self.poll_s = poll_s
        self.lines: list[tuple[float, str]] = []
        self._offset = 0
        self._pending = b""  # the unfinished last line, and when it first appeared
        self._pending_at = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._follow, name="console-stamp", daemon=True)

    def __enter__(self) -> StampedConsole:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._read()  # what was written after the last poll

    def stamped(self) -> list[tuple[float, str]]:
        """The lines so far, the unfinished last one included."""
        with self._lock:
            tail = [(self._pending_at, clean(self._pending))] if self._pending else []
            return self.lines + tail

    def wait_for(self, pattern: re.Pattern[str], timeout_s: float,
                 alive: Callable[[], bool] = lambda: True) -> float | None:
        """Host seconds of the first line matching `pattern`; None when `timeout_s`
        passes or `alive()` turns false first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and alive():
            for stamp, line in self.stamped():
                if pattern.search(line):
                    return stamp
            time.sleep(self.poll_s)
        return None

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self._read()

    def _read(self) -> None:
        try:
            with open(self.console, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        if not data:
            return
        now = time.monotonic() - self.start
        self._offset += len(data)
        *complete, rest = (self._pending + data).split(b"\n")
        with self._lock:
            for raw in complete:
                # A line begun in an earlier read keeps the time it first appeared.
                self.lines.append((self._pending_at if self._pending else now, clean(raw)))
                self._pending = b""
            if rest and not self._pending:
                self._pending_at = now
            self._pending = rest


def clean(raw: bytes) -> str:
    """A console line without colour codes and carriage returns."""
    return ANSI.sub("", raw.decode(errors="replace")).replace("\r", "")


def unit_key(text: str) -> str:
    """A unit's name as a status line shows it, cut where systemd shortened it."""
    return text.split("…")[0]


@dataclass
class Timeline:
    """A boot read from its stamped console: `kernel_start_s` (host seconds from QEMU's
    start to the guest clock's zero: add it to a guest uptime), the milestones in host
    seconds since QEMU's start, and the units that took longest."""

    kernel_start_s: float | None
    milestones: dict[str, float] = field(default_factory=dict)
    slowest_units: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def read(cls, lines: list[tuple[float, str]], top: int = 8) -> Timeline:
        offsets = [stamp - float(found.group(1)) for stamp, line in lines
                   if (found := KERNEL_TIME.match(line))]
        # The least delayed kernel line: QEMU writes the serial log as the guest prints.
        timeline = cls(min(offsets) if offsets else None)
        counts: dict[str, int] = {}
        for stamp, line in lines:
            for name, pattern, nth in MILESTONES:
                if name in timeline.milestones or not pattern.search(line):
                    continue
                counts[name] = counts.get(name, 0) + 1
                if counts[name] == nth:
                    timeline.milestones[name] = stamp
        started: dict[str, float] = {}
        took: dict[str, float] = {}
        for stamp, line in lines:
            if found := STARTING.match(line):
                started.setdefault(unit_key(found.group(1)), stamp)
            elif found := DONE.match(line):
                done = unit_key(found.group(1))
                for key in [k for k in started if k.startswith(done) or done.startswith(k)]:
                    took[key] = max(took.get(key, 0.0), stamp - started.pop(key))
        timeline.slowest_units = sorted(took.items(), key=lambda kv: -kv[1])[:top]
        return timeline
