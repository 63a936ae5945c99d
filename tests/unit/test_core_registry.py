# SPDX-License-Identifier: Apache-2.0
"""The on-disk repository: layout, atomic writes, crash leftovers, corrupt models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from core_models import make_double

from mlos_core.dataplane import DataPlane, InferRequest, InputTensor
from mlos_core.errors import InvalidInputError, ModelLoadError, ModelNotFoundError
from mlos_core.registry import ModelRepository
from mlos_core.settings import load_settings


def test_versions_and_atomic_add(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "models")
    model_file = make_double(tmp_path / "src" / "model.onnx")
    assert repo.add_version("double", [("model.onnx", model_file)]) == ("double", "1")
    assert repo.add_version("double", [("model.onnx", model_file.read_bytes())]) == ("double", "2")
    assert repo.add_version("double", [("model.onnx", model_file)], version="10")[1] == "10"
    assert repo.get("double").versions == ["1", "2", "10"]
    with pytest.raises(InvalidInputError):
        repo.add_version("double", [("model.onnx", model_file)], version="2")
    with pytest.raises(InvalidInputError):
        repo.add_version("../evil", [("model.onnx", model_file)])
    with pytest.raises(InvalidInputError):
        repo.add_version("x", [("../model.onnx", model_file)])
    assert not [p for p in repo.root.iterdir() if p.name.startswith(".")]
    repo.delete("double", "2")
    assert repo.get("double").versions == ["1", "10"]
    repo.delete("double")
    with pytest.raises(ModelNotFoundError):
        repo.get("double")


def test_interrupted_write_leaves_nothing_visible(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "models")
    model_file = make_double(tmp_path / "src" / "model.onnx")

    class Crash(Exception):
        pass

    def files():  # type: ignore[no-untyped-def]
        yield "model.onnx", model_file
        raise Crash  # the process "dies" half way through copying

    with pytest.raises(Crash):
        repo.add_version("half", files())
    assert [m.name for m in repo.scan()] == []
    # A real crash leaves the staging directory behind: the next start removes it.
    leftover = repo.root / ".staging-dead"
    (leftover / "half" / "1").mkdir(parents=True)
    (leftover / "half" / "1" / "model.onnx").write_bytes(b"partial")
    repo.ensure()
    assert not leftover.exists()


def test_corrupt_model_does_not_block_others(tmp_path: Path) -> None:
    root = tmp_path / "models"
    make_double(root / "good" / "1" / "model.onnx")
    (root / "bad" / "1").mkdir(parents=True)
    (root / "bad" / "1" / "model.onnx").write_bytes(os.urandom(256))
    (root / "unknown" / "1").mkdir(parents=True)
    (root / "unknown" / "1" / "weights.xyz").write_bytes(b"?")
    plane = DataPlane(load_settings(None, model_repository=root, sysfs_root=tmp_path))
    plane.start()
    try:
        index = {m["name"]: m for m in plane.repository_index()}
        assert index["good"]["state"] == "READY"
        assert index["bad"]["state"] == "UNAVAILABLE" and "cannot load" in index["bad"]["reason"]
        assert index["unknown"]["state"] == "UNAVAILABLE"
        with pytest.raises(ModelLoadError):
            plane.load_model("bad")
        with pytest.raises(ModelLoadError):
            plane.register_model("bad2", [("model.onnx", b"not onnx")])
        assert "bad2" not in {m["name"] for m in plane.repository_index()}
        x = np.arange(4, dtype=np.float32)
        response = plane.infer_blocking(
            InferRequest("good", None, [InputTensor("x", "FP32", (4,), x)])
        )
        np.testing.assert_array_equal(response.outputs[0].data, 2 * x)  # type: ignore[arg-type]
    finally:
        plane.close()
