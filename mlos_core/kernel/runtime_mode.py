# SPDX-License-Identifier: Apache-2.0
"""Which runtime mode the service runs in, read from the mlos_ml module's parameters.

    <sysfs_root>/module/mlos_ml/parameters/{debug_level,enable_tmm,enable_scheduler,
                                             enable_gpu_manager}

No module: `userspace`. Module loaded: the mode its switches imply, by the one rule in
mode_for below (a module loaded with enable_tmm=0 is `userspace`: every
kernel mode stands on the memory manager).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

USERSPACE = "userspace"
KERNEL_BASIC = "kernel_basic"
KERNEL_SCHEDULER = "kernel_scheduler"
KERNEL_FULL = "kernel_full"

_TRUE = {"y", "1", "yes", "true", "on"}


def mode_for(enable_tmm: bool, enable_scheduler: bool, enable_gpu_manager: bool) -> str:
    """The one rule from the module's feature switches to a runtime mode (README's table):
    every kernel mode stands on the memory manager; the scheduler adds kernel_scheduler;
    scheduler and GPU manager together make kernel_full. Used for /health (from sysfs and
    from the features the service actually uses), the report and the variant data."""
    if not enable_tmm:
        return "userspace"
    if enable_scheduler and enable_gpu_manager:
        return "kernel_full"
    if enable_scheduler:
        return "kernel_scheduler"
    return "kernel_basic"


def parse_bool(text: str) -> bool:
    """Kernel bool params read back as Y/N (older kernels and int params: 1/0)."""
    return text.strip().lower() in _TRUE


@dataclass(frozen=True)
class RuntimeMode:
    mode: str
    parameters: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"runtime_mode": self.mode, "module": self.parameters}


def _value(text: str) -> Any:
    text = text.strip()
    if text.upper() in ("Y", "N"):
        return text.upper() == "Y"
    try:
        return int(text)
    except ValueError:
        return text


def detect(sysfs_root: Path) -> RuntimeMode:
    params_dir = Path(sysfs_root) / "module" / "mlos_ml" / "parameters"
    if not params_dir.is_dir():
        return RuntimeMode(USERSPACE, None)
    raw: dict[str, str] = {}
    for file in sorted(params_dir.iterdir()):
        try:
            raw[file.name] = file.read_text()
        except OSError:  # unreadable parameter (permissions): report what we can
            continue
    params = {name: _value(text) for name, text in raw.items()}
    for flag in ("enable_tmm", "enable_scheduler", "enable_gpu_manager"):
        if flag in raw:
            params[flag] = parse_bool(raw[flag])
    mode = mode_for(*(bool(params.get(flag)) for flag in
                      ("enable_tmm", "enable_scheduler", "enable_gpu_manager")))
    return RuntimeMode(mode, params)
