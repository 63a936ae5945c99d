# SPDX-License-Identifier: Apache-2.0
"""Fixtures for the MLOS Core tests (a named module, not conftest.py, so other areas'
tests/unit files never collide with it): test modules import it with *."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from core_models import make_repository

from mlos_core.server import MLOSServer
from mlos_core.settings import Settings, load_settings

__all__ = [
    "add_sleepy_model", "make_settings", "model_templates", "plugin_site", "repo", "server",
    "server_factory", "with_plugin",
]


@pytest.fixture(scope="session")
def model_templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repository(tmp_path_factory.mktemp("templates"))


@pytest.fixture
def repo(tmp_path: Path, model_templates: Path) -> Path:
    import shutil

    target = tmp_path / "models"
    shutil.copytree(model_templates, target)
    return target


def make_settings(repo: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "rest_port": 0,
        "grpc_port": 0,
        "model_repository": repo,
        "sysfs_root": repo.parent / "no-sysfs",
    }
    values.update(overrides)
    return load_settings(None, **values)


@pytest.fixture
def server_factory(repo: Path) -> Iterator[object]:
    servers: list[MLOSServer] = []

    def start(**overrides: object) -> MLOSServer:
        server = MLOSServer(make_settings(repo, **overrides)).start_background()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop_background()


@pytest.fixture
def server(server_factory: object) -> MLOSServer:
    return server_factory()  # type: ignore[operator,no-any-return]


PLUGIN_SOURCE = '''# SPDX-License-Identifier: Apache-2.0
"""A third-party MLOS backend: y = x + 1 after the delay (seconds) in its .sleepy file."""
import time
from typing import ClassVar

from mlos_core.backends.base import Backend, TensorSpec


class SleepyBackend(Backend):
    name: ClassVar[str] = "sleepy"
    formats: ClassVar[tuple[str, ...]] = (".sleepy",)

    def load(self):
        self.delay = float(self.source.model_file.read_text())
        self._loaded = True

    @property
    def ready(self):
        return getattr(self, "_loaded", False)

    @property
    def inputs(self):
        return [TensorSpec("x", "FP32", (-1,))]

    @property
    def outputs(self):
        return [TensorSpec("y", "FP32", (-1,))]

    def infer(self, inputs, output_names=None):
        time.sleep(self.delay)
        return {"y": inputs["x"] + 1}

    def unload(self):
        self._loaded = False
'''

PLUGIN_PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "mlos-sleepy-backend"
version = "1.0"

[project.entry-points."mlos.backends"]
sleepy = "mlos_sleepy_backend:SleepyBackend"
"""


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A separate package, pip-installed into its own target directory (not MLOS's tree)."""
    import subprocess
    import sys

    src = tmp_path_factory.mktemp("plugin-src")
    (src / "mlos_sleepy_backend").mkdir()
    (src / "mlos_sleepy_backend" / "__init__.py").write_text(PLUGIN_SOURCE)
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    site = tmp_path_factory.mktemp("plugin-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(src)],
        check=True,
    )
    return site


@pytest.fixture
def with_plugin(plugin_site: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(plugin_site))
    return plugin_site


def add_sleepy_model(repo: Path, name: str = "sleepy", delay: float = 0.5) -> None:
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "1" / "model.sleepy").write_text(str(delay))
