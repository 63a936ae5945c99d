# SPDX-License-Identifier: Apache-2.0
"""Triton's logging and trace extensions, answered with what MLOS really does.

Logging maps onto the Python logging level of the `mlos_core` logger (the service's own
messages): `log_verbose_level` > 0 is DEBUG, else the lowest of info/warning/error that is
on. MLOS logs to stderr (journald under systemd), so `log_file` can only be "", and its one
format is "default"; other values are refused, not silently kept.

Tracing is not implemented (the statistics extension and /metrics give per-model timings):
the settings read `trace_level: ["OFF"]`, and an update may only keep tracing off."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import InvalidInputError, UnsupportedError

SERVICE_LOGGER = "mlos_core"
_BOOLS = ("log_info", "log_warning", "log_error")


class LogSettings:
    def __init__(self, logger: str = SERVICE_LOGGER) -> None:
        self.logger = logging.getLogger(logger)
        level = self.logger.getEffectiveLevel()
        self.values: dict[str, Any] = {
            "log_file": "",
            "log_info": level <= logging.INFO,
            "log_warning": level <= logging.WARNING,
            "log_error": level <= logging.ERROR,
            "log_verbose_level": 1 if level <= logging.DEBUG else 0,
            "log_format": "default",
        }

    def get(self) -> dict[str, Any]:
        return dict(self.values)

    def update(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Checks every setting first, then applies them together (a refused update
        changes nothing)."""
        if not isinstance(settings, dict):
            raise InvalidInputError("log settings must be a JSON object")
        new = dict(self.values)
        for key, value in settings.items():
            if value is None:
                continue
            if key in _BOOLS:
                if not isinstance(value, bool):
                    raise InvalidInputError(f"log setting {key!r} must be a boolean")
            elif key == "log_verbose_level":
                if type(value) is not int or value < 0:
                    raise InvalidInputError("log setting 'log_verbose_level' must be an "
                                            "integer >= 0")
            elif key == "log_file":
                if value != "":
                    raise UnsupportedError(
                        "log_file: MLOS Core logs to stderr (journald under systemd), not to "
                        "a file of its own; leave log_file empty")
            elif key == "log_format":
                if value != "default":
                    raise UnsupportedError(
                        f"log_format {value!r}: MLOS Core has one log format, 'default'")
            else:
                raise InvalidInputError(
                    f"unknown log setting {key!r}; settings: {sorted(self.values)}")
            new[key] = value
        self.values = new
        self.logger.setLevel(self._level())
        return self.get()

    def _level(self) -> int:
        values = self.values
        if values["log_verbose_level"] > 0:
            return logging.DEBUG
        for key, level in zip(_BOOLS, (logging.INFO, logging.WARNING, logging.ERROR),
                              strict=True):
            if values[key]:
                return level
        return logging.CRITICAL + 1  # everything off


#: Triton's trace settings with tracing off (values are lists of strings or strings, as
#: Triton's REST answer has them).
TRACE_DEFAULTS: dict[str, Any] = {
    "trace_level": ["OFF"],
    "trace_rate": "1000",
    "trace_count": "-1",
    "log_frequency": "0",
    "trace_file": "",
    "trace_mode": "triton",
}


def trace_settings() -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in TRACE_DEFAULTS.items()}


def update_trace_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Accepts only what keeps tracing off: trace_level OFF, or clearing a setting."""
    if not isinstance(settings, dict):
        raise InvalidInputError("trace settings must be a JSON object")
    for key, value in settings.items():
        if key not in TRACE_DEFAULTS:
            raise InvalidInputError(
                f"unknown trace setting {key!r}; settings: {sorted(TRACE_DEFAULTS)}")
        default = TRACE_DEFAULTS[key]
        if isinstance(value, list) and len(value) == 1 and not isinstance(default, list):
            value = value[0]  # gRPC sends every value as a list of strings
        if value is None or value == [] or value == default:
            continue
        if key == "trace_level" and value in ("OFF", ["OFF"]):
            continue
        raise UnsupportedError(
            f"trace setting {key!r}: MLOS Core does not trace requests (tracing stays OFF); "
            "per-model timings are in the statistics extension (/v2/models/stats) and "
            "/metrics")
    return trace_settings()
