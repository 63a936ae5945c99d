# SPDX-License-Identifier: Apache-2.0
"""The module's parameters as sysfs shows them, and the runtime mode they imply."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..runtime_mode import (
    MODULE,
    RUNTIME_MODES,
    USERSPACE,
    mode_for,
    parse_bool,
    read_parameter_files,
)

__all__ = ["MODULE", "RUNTIME_MODES", "ModuleParameters", "parse_bool", "read_parameters",
           "runtime_mode"]


@dataclasses.dataclass(frozen=True)
class ModuleParameters:
    debug_level: int
    enable_tmm: bool
    enable_scheduler: bool
    enable_gpu_manager: bool
    extra: dict[str, str]  # every other parameter, verbatim (reserved_cpus, pool limits...)

    @property
    def runtime_mode(self) -> str:
        return mode_for(self.enable_tmm, self.enable_scheduler, self.enable_gpu_manager)

    def as_dict(self) -> dict[str, object]:
        return {"debug_level": self.debug_level, "enable_tmm": self.enable_tmm,
                "enable_scheduler": self.enable_scheduler,
                "enable_gpu_manager": self.enable_gpu_manager, **self.extra}


def read_parameters(sysfs_root: str | Path = "/sys") -> ModuleParameters | None:
    """The loaded module's parameters, or None when mlos_ml is not loaded. Strict: a
    switch that is not a bool raises ValueError."""
    raw = read_parameter_files(sysfs_root)
    if raw is None:
        return None

    def flag(name: str) -> bool:
        return parse_bool(raw.pop(name, "N"))

    debug = raw.pop("debug_level", "0")
    return ModuleParameters(debug_level=int(debug or 0), enable_tmm=flag("enable_tmm"),
                            enable_scheduler=flag("enable_scheduler"),
                            enable_gpu_manager=flag("enable_gpu_manager"), extra=raw)


def runtime_mode(sysfs_root: str | Path = "/sys") -> str:
    params = read_parameters(sysfs_root)
    return params.runtime_mode if params else USERSPACE
