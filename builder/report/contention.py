# SPDX-License-Identifier: Apache-2.0
"""CPU contention: busy-loop "hog" processes running while a load phase is measured.

Where the hogs run decides what a contended figure means, so the results record it:
- `local`: N hogs on this machine, the same machine as a local service;
- `host`: N hogs on the host while the service runs in a QEMU guest: they compete with
  the guest's vCPU threads (the guest sees stolen time, not an in-guest competitor);
- `command`: a user-given shell command that starts hogs on the target (for example
  over ssh into the guest) and runs until it is stopped; its process group is ended
  after the phase.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from types import TracebackType

WHERES = ("local", "host", "command")

_HOG = "while True:\n    pass\n"


class Hogs:
    """A context manager that keeps `count` CPU hogs running inside its block."""

    def __init__(self, count: int, where: str = "local", command: str | None = None,
                 settle_s: float = 0.3) -> None:
        if where not in WHERES:
            raise ValueError(f"contention place {where!r}: expected one of {WHERES}")
        if where == "command" and not command:
            raise ValueError("contention place 'command' needs --hog-command")
        self.count = count
        self.where = where
        self.command = command
        self.settle_s = settle_s
        self.procs: list[subprocess.Popen[bytes]] = []

    def describe(self) -> dict[str, object]:
        return {"hogs": self.count, "where": self.where, "command": self.command}

    def __enter__(self) -> Hogs:
        try:
            if self.where == "command":
                assert self.command is not None
                cmd = self.command.replace("{n}", str(self.count))
                self.procs.append(subprocess.Popen(cmd, shell=True, start_new_session=True,
                                                   stdout=subprocess.DEVNULL))
            else:
                for _ in range(self.count):
                    self.procs.append(subprocess.Popen([sys.executable, "-c", _HOG],
                                                       start_new_session=True))
        except BaseException:
            self.stop()
            raise
        # Let the hogs reach the run queue before measuring.
        time.sleep(self.settle_s)
        for proc in self.procs:
            if proc.poll() is not None:
                code = proc.returncode
                self.stop()
                raise RuntimeError(f"contention process exited early with status {code}")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """End every process this object started (by its own process group id)."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
