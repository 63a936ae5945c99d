# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from core_models import make_repository

from mlos_core.server import MLOSServer
from mlos_core.settings import Settings, load_settings


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
        "grpc_enabled": False,
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
