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
RUNTIME_MODES = (USERSPACE, KERNEL_BASIC, KERNEL_SCHEDULER, KERNEL_FULL)
MODULE = "mlos_ml"  # the kernel module, as /sys/module names it
SWITCHES = ("enable_tmm", "enable_scheduler", "enable_gpu_manager")


def mode_for(enable_tmm: bool, enable_scheduler: bool, enable_gpu_manager: bool) -> str:
    """The one rule from the module's feature switches to a runtime mode (README's table):
    every kernel mode stands on the memory manager; the scheduler adds kernel_scheduler;
    scheduler and GPU manager together make kernel_full. Used for /health (from sysfs and
    from the features the service actually uses), the report and the variant data."""
    if not enable_tmm:
        return USERSPACE
    if enable_scheduler and enable_gpu_manager:
        return KERNEL_FULL
    if enable_scheduler:
        return KERNEL_SCHEDULER
    return KERNEL_BASIC


def parse_bool(text: str) -> bool:
    """Kernel bool params read back as Y/N (older kernels and int params: 1/0); anything
    else is refused."""
    value = text.strip().lower()
    if value in ("y", "1", "yes", "true", "on"):
        return True
    if value in ("n", "0", "no", "false", "off", ""):
        return False
    raise ValueError(f"not a bool module parameter value: {text!r}")


def read_parameter_files(sysfs_root: str | Path) -> dict[str, str] | None:
    """The loaded module's parameter files, name -> stripped text (None when mlos_ml is
    not loaded). A parameter this user may not read is left out: the one reader of
    <sysfs_root>/module/mlos_ml/parameters, for /health and for the binding."""
    params_dir = Path(sysfs_root) / "module" / MODULE / "parameters"
    if not params_dir.is_dir():
        return None
    raw: dict[str, str] = {}
    for file in sorted(params_dir.iterdir()):
        try:
            raw[file.name] = file.read_text().strip()
        except OSError:
            continue
    return raw


@dataclass(frozen=True)
class RuntimeMode:
    mode: str
    parameters: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"runtime_mode": self.mode, "module": self.parameters}


def _value(text: str) -> Any:
    if text.upper() in ("Y", "N"):
        return text.upper() == "Y"
    try:
        return int(text)
    except ValueError:
        return text


def detect(sysfs_root: Path) -> RuntimeMode:
    """The mode /health reports. Lenient: a switch that is not a bool counts as off (the
    service still starts and says what it read)."""
    raw = read_parameter_files(sysfs_root)
    if raw is None:
        return RuntimeMode(USERSPACE, None)
    params = {name: _value(text) for name, text in raw.items()}
    for flag in SWITCHES:
        if flag in raw:
            try:
                params[flag] = parse_bool(raw[flag])
            except ValueError:
                params[flag] = False
    mode = mode_for(*(bool(params.get(flag)) for flag in SWITCHES))
    return RuntimeMode(mode, params)
