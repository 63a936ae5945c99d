# SPDX-License-Identifier: Apache-2.0
"""/health and runtime-mode detection from fixture sysfs trees."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest
import requests
from core_fixtures import *  # noqa: F403  (the fixtures)

from mlos_core.kernel.runtime_mode import detect, parse_bool


def sysfs(root: Path, **params: str) -> Path:
    directory = root / "module" / "mlos_ml" / "parameters"
    directory.mkdir(parents=True)
    for name, value in params.items():
        (directory / name).write_text(value + "\n")
    return root


@pytest.mark.parametrize(
    ("params", "mode"),
    [
        ({"debug_level": "0", "enable_tmm": "Y", "enable_scheduler": "N",
          "enable_gpu_manager": "N"}, "kernel_basic"),
        ({"debug_level": "1", "enable_tmm": "Y", "enable_scheduler": "Y",
          "enable_gpu_manager": "N"}, "kernel_scheduler"),
        ({"debug_level": "2", "enable_tmm": "1", "enable_scheduler": "1",
          "enable_gpu_manager": "1"}, "kernel_full"),
        # Loaded with the memory manager off: no kernel mode stands (mlos_ml.mode_for).
        ({"enable_tmm": "0", "enable_scheduler": "0", "enable_gpu_manager": "0"},
         "userspace"),
        ({"enable_tmm": "N", "enable_scheduler": "Y", "enable_gpu_manager": "Y"},
         "userspace"),
    ],
)
def test_modes(tmp_path: Path, params: dict[str, str], mode: str) -> None:
    detected = detect(sysfs(tmp_path, **params))
    assert detected.mode == mode
    assert detected.parameters is not None
    assert detected.parameters["enable_tmm"] is parse_bool(params["enable_tmm"])
    if "debug_level" in params:
        assert detected.parameters["debug_level"] == int(params["debug_level"])


def test_no_module_is_userspace(tmp_path: Path) -> None:
    assert detect(tmp_path).mode == "userspace"
    assert detect(tmp_path).parameters is None
    assert parse_bool("Y") and parse_bool("1") and not parse_bool("N") and not parse_bool("0")


def test_health_endpoint(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root = sysfs(tmp_path / "sys", debug_level="1", enable_tmm="Y", enable_scheduler="Y",
                 enable_gpu_manager="N")
    server = server_factory(sysfs_root=root, api_key="k")
    body = requests.get(f"http://{server.url}/health", timeout=5).json()  # exempt from key
    assert body["status"] == "ok"
    assert body["version"] == version("mlos")
    assert body["runtime_mode"] == "kernel_scheduler"
    assert body["module"] == {"debug_level": 1, "enable_tmm": True, "enable_scheduler": True,
                              "enable_gpu_manager": False}
    assert body["models"] == {"total": 3, "ready": 3, "unavailable": 0}


def test_health_userspace(server) -> None:  # type: ignore[no-untyped-def]
    body = requests.get(f"http://{server.url}/health", timeout=5).json()
    assert body["runtime_mode"] == "userspace" and body["module"] is None
