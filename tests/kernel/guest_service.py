# SPDX-License-Identifier: Apache-2.0
"""What the in-guest service checks (guest_modes_check.py, guest_threads_check.py) share:
the module's own figures, the `mlos-core serve` command and stopping what it started, and
the one MLOS-MODES-JSON line per mode that the host test reads (mlos_guest.modes_report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

MODULE_STATS = Path("/sys/class/misc/mlos-ml/stats")
# The console script of the venv this guest runs (mlos.python): the checkout need not hold it.
SERVE = [str(Path(sys.executable).with_name("mlos-core")), "serve"]


def module_stats() -> dict[str, int]:
    out: dict[str, int] = {}
    if not MODULE_STATS.exists():  # a dry run on a host without the module
        return out
    for line in MODULE_STATS.read_text().splitlines():
        key, _, value = line.partition(" ")
        out[key] = int(value)
    return out


def stop_server(server: subprocess.Popen[bytes], log: IO[str]) -> None:
    server.terminate()
    try:
        server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    log.close()


def emit(mode: str, result: dict[str, Any]) -> int:
    """Prints the mode's result for the host; the exit status says whether it errored."""
    print(f"MLOS-MODES-JSON {mode} {json.dumps(result, separators=(',', ':'))}", flush=True)
    return 0 if "error" not in result else 1
