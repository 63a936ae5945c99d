# SPDX-License-Identifier: Apache-2.0
"""A third-party backend, installed as its own package with an `mlos.backends` entry point,
is served without any change to MLOS code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from core_fixtures import *  # noqa: F403  (the fixtures)
from core_fixtures import add_sleepy_model

from mlos_core.plugins import PluginManager


def test_installed_plugin_is_discovered(with_plugin: Path) -> None:
    assert (with_plugin / "mlos_sleepy_backend").is_dir()
    assert list(with_plugin.glob("mlos_sleepy_backend-1.0.dist-info"))
    plugins = PluginManager().discover()
    assert plugins.formats()["sleepy"] == [".sleepy"]
    assert plugins.formats()["onnxruntime"] == [".onnx"]


def test_plugin_serves_a_model(with_plugin: Path, repo: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    add_sleepy_model(repo, delay=0.0)
    server = server_factory()
    client = httpclient.InferenceServerClient(server.url)
    assert client.get_model_metadata("sleepy")["platform"] == "sleepy"
    x = httpclient.InferInput("x", [3], "FP32")
    x.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
    assert client.infer("sleepy", [x]).as_numpy("y").tolist() == [2, 3, 4]
    assert server.plane.models_with("infer") == ["add", "double", "mlp", "sleepy"]
    assert server.plane.models_with("text_generation") == []


def test_without_plugin_the_model_is_reported_not_served(repo: Path, server_factory) -> None:  # type: ignore[no-untyped-def]
    add_sleepy_model(repo, delay=0.0)
    server = server_factory()
    client = httpclient.InferenceServerClient(server.url)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["sleepy"]["state"] == "UNAVAILABLE"
    assert ".onnx" in index["sleepy"]["reason"]
