# SPDX-License-Identifier: Apache-2.0
"""The module's parameters as sysfs shows them, and the runtime mode they imply."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..runtime_mode import mode_for

MODULE = "mlos_ml"
RUNTIME_MODES = ("userspace", "kernel_basic", "kernel_scheduler", "kernel_full")


def parse_bool(text: str) -> bool:
    """Bool parameters read back as Y/N; some kernels and writers use 1/0."""
    value = text.strip().lower()
    if value in ("y", "1", "yes", "true", "on"):
        return True
    if value in ("n", "0", "no", "false", "off", ""):
        return False
    raise ValueError(f"not a bool module parameter value: {text!r}")


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
    """The loaded module's parameters, or None when mlos_ml is not loaded."""
    pdir = Path(sysfs_root) / "module" / MODULE / "parameters"
    if not pdir.is_dir():
        return None
    raw = {p.name: p.read_text().strip() for p in sorted(pdir.iterdir()) if p.is_file()}

    def flag(name: str) -> bool:
        return parse_bool(raw.pop(name, "N"))

    debug = raw.pop("debug_level", "0")
    return ModuleParameters(debug_level=int(debug or 0), enable_tmm=flag("enable_tmm"),
                            enable_scheduler=flag("enable_scheduler"),
                            enable_gpu_manager=flag("enable_gpu_manager"), extra=raw)


def runtime_mode(sysfs_root: str | Path = "/sys") -> str:
    params = read_parameters(sysfs_root)
    return params.runtime_mode if params else "userspace"
