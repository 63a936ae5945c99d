# SPDX-License-Identifier: Apache-2.0
"""The upstream MLOS REST shape, driven with curl (the client its users have) and requests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
from core_fixtures import *  # noqa: F403  (the fixtures)
from core_models import make_double, make_mlp, mlp_reference

from mlos_core.server import MLOSServer


def curl(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    out = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args],
                         capture_output=True, text=True, check=True).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_register_upload_list_infer_delete(server: MLOSServer, tmp_path: Path) -> None:
    base = f"http://{server.url}"
    model = make_mlp(tmp_path / "upload" / "mlp2.onnx", seed=3)
    status, body = curl("-F", "name=mlp2", "-F", f"file=@{model}", f"{base}/models/register")
    assert status == 201 and body == {"id": "mlp2", "name": "mlp2", "version": "1",
                                      "state": "READY"}
    assert (Path(server.settings.model_repository) / "mlp2" / "1" / "mlp2.onnx").is_file()
    status, body = curl(f"{base}/models")
    assert status == 200
    assert {m["id"] for m in body["models"]} == {"add", "double", "mlp", "mlp2"}
    x = np.random.default_rng(4).standard_normal((2, 64)).astype(np.float32)
    status, body = curl("-H", "Content-Type: application/json", "-d",
                        json.dumps({"inputs": {"input": x.tolist()}}),
                        f"{base}/models/mlp2/inference")
    assert status == 200 and body["model_id"] == "mlp2"
    np.testing.assert_allclose(np.array(body["outputs"]["output"]), mlp_reference(x, seed=3),
                               rtol=1e-4, atol=1e-5)
    status, body = curl(f"{base}/models/mlp2")
    assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    status, body = curl("-X", "DELETE", f"{base}/models/mlp2")
    assert status == 200
    assert not (Path(server.settings.model_repository) / "mlp2").exists()
    status, body = curl(f"{base}/models/mlp2")
    assert status == 404


def test_register_from_path_and_new_version(server_factory: object, tmp_path: Path) -> None:
    src = make_double(tmp_path / "src" / "model.onnx")
    server = server_factory(import_roots=[tmp_path / "src"])  # type: ignore[operator]
    base = f"http://{server.url}"
    r = requests.post(f"{base}/models/register", json={"name": "twice", "path": str(src)},
                      timeout=10)
    assert r.status_code == 201 and r.json()["version"] == "1"
    r = requests.post(f"{base}/models/register",
                      json={"name": "twice", "path": str(src.parent)}, timeout=10)
    assert r.status_code == 201 and r.json()["version"] == "2"
    r = requests.post(f"{base}/models/twice/inference", json={"inputs": {"x": [1.0, 2.5]}},
                      timeout=10)
    body = r.json()
    assert body.pop("inference_time_us") >= 0
    assert body == {"status": "success", "model_id": "twice", "version": "2", "output_size": 8,
                    "outputs": {"y": [2.0, 5.0]}}
    # The KServe view sees the same registry.
    assert requests.get(f"{base}/v2/models/twice", timeout=5).json()["versions"] == ["2"]


@pytest.mark.parametrize(
    ("path", "payload", "status"),
    [
        ("/models/register", {"name": "x", "path": "/nonexistent/model.onnx"}, 400),
        ("/models/register", {"name": "../etc", "path": "/tmp"}, 400),
        ("/models/register", {"path": "/tmp"}, 400),
        ("/models/register", [], 400),
        ("/models/mlp/inference", {"inputs": {"input": [[1, 2]]}}, 400),
        ("/models/mlp/inference", {"inputs": {"nope": [1]}}, 400),
        ("/models/mlp/inference", {"inputs": [1]}, 400),
        ("/models/ghost/inference", {"inputs": {"x": [1]}}, 404),
    ],
)
def test_bad_requests(server: MLOSServer, path: str, payload: object, status: int) -> None:
    r = requests.post(f"http://{server.url}{path}", json=payload, timeout=10)
    assert r.status_code == status, r.text
    assert r.json()["error"]


def test_corrupt_upload_is_rejected_and_leaves_nothing(server: MLOSServer) -> None:
    base = f"http://{server.url}"
    r = requests.post(f"{base}/models/register", data={"name": "junk"},
                      files={"file": ("model.onnx", b"\x08\x01garbage")}, timeout=10)
    assert r.status_code == 422 and "cannot load" in r.json()["error"]
    assert not (Path(server.settings.model_repository) / "junk").exists()
    assert requests.get(f"{base}/models/junk", timeout=5).status_code == 404
