# SPDX-License-Identifier: Apache-2.0
"""Backend plugins: classes registered under the `mlos.backends` entry-point group.

A third-party package adds a backend by declaring, in its own metadata,
`[project.entry-points."mlos.backends"] myname = "mypkg.module:MyBackend"`; no MLOS code
changes. A plugin that fails to import is reported (logs, /v2 metadata) but never stops
the service.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .backends.base import Backend
from .errors import ModelLoadError

ENTRY_POINT_GROUP = "mlos.backends"
log = logging.getLogger(__name__)


def plain_file_name(value: object, what: str) -> str:
    """A file name that stays inside its directory: no path separators, no '.' or '..',
    nothing absolute (the model config could otherwise load files from anywhere)."""
    if not isinstance(value, str) or not value or "/" in value or "\0" in value \
            or value in (".", ".."):
        raise ModelLoadError(
            f"model config {what} {value!r} must be a plain file name inside the version "
            "directory (no '/', not '..')")
    return value


class PluginManager:
    def __init__(self) -> None:
        self.backends: dict[str, type[Backend]] = {}
        self.errors: dict[str, str] = {}

    def discover(self) -> PluginManager:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self.backends:
                continue
            try:
                cls = ep.load()
            except Exception as exc:  # a broken plugin must not take the service down
                self.errors[ep.name] = f"{ep.value}: {exc}"
                log.warning("backend plugin %s failed to load: %s", ep.name, exc)
                continue
            if not (isinstance(cls, type) and issubclass(cls, Backend)):
                self.errors[ep.name] = f"{ep.value} is not a mlos_core Backend subclass"
                log.warning("backend plugin %s: %s", ep.name, self.errors[ep.name])
                continue
            self.add(ep.name, cls)
        return self

    def add(self, name: str, cls: type[Backend]) -> None:
        self.backends[name] = cls

    def capabilities(self) -> set[str]:
        caps: set[str] = set()
        for cls in self.backends.values():
            caps |= set(getattr(cls, "capabilities", ()))
        return caps

    def formats(self) -> dict[str, list[str]]:
        return {name: list(cls.formats) for name, cls in self.backends.items()}

    def select(self, version_dir: Path, config: dict[str, Any]) -> tuple[type[Backend], Path]:
        """The backend for a model version and the file it should load.

        The model config may name a `backend` and a `default_model_filename`; otherwise the
        first file whose suffix a backend serves decides.
        """
        wanted = config.get("backend") or config.get("platform")
        if wanted is not None:
            cls = self.backends.get(str(wanted))
            if cls is None:
                raise ModelLoadError(
                    f"model config asks for backend {wanted!r}, installed: "
                    f"{sorted(self.backends) or 'none'}"
                )
            candidates = [cls]
        else:
            candidates = list(self.backends.values())
        files = sorted(p for p in version_dir.iterdir() if not p.name.startswith("."))
        default_file = config.get("default_model_filename")
        if default_file:
            files = [version_dir / plain_file_name(default_file, "default_model_filename")]
        for file in files:
            for cls in candidates:
                if any(file.name.endswith(fmt) for fmt in cls.formats):
                    return cls, file
        served = sorted({fmt for cls in candidates for fmt in cls.formats})
        raise ModelLoadError(
            f"{version_dir}: no file in a format an installed backend serves ({served})"
        )
