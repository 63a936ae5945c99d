# SPDX-License-Identifier: Apache-2.0
"""Upstream MLOS's own E2E harness (mlOS-foundation/system-test: scripts/test-single-model.sh
posts with curl, scripts/validate-inference.py reads the answers), replayed with curl: ids
`namespace/name@version` registered as given and sent URL-encoded, flat `name -> list`
bodies for an MLP and a token-id model, warm-ups then the timed run, `include_outputs`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from core_fixtures import *  # noqa: F403  (the fixtures)
from core_models import make_mlp, make_token_model, mlp_reference

from mlos_core.server import MLOSServer

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")

MLP_ID = "hf/mlp@latest"
TOKENS_ID = "hf/tiny-bert@latest"
WARMUPS = 2  # the harness's WARMUP_INFERENCES


def url_encode(text: str) -> str:
    """As the harness encodes ids: unreserved characters kept, every other one %XX."""
    keep = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.~_-")
    return "".join(c if c in keep else f"%{ord(c):02X}" for c in text)


def curl(*args: str) -> tuple[int, Any]:
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body) if body else None


def post(url: str, body_file: Path) -> tuple[int, Any]:
    return curl("-X", "POST", url, "-H", "Content-Type: application/json",
                "-d", f"@{body_file}")


def shape_of(data: Any) -> list[int]:
    shape = []
    while isinstance(data, list):
        shape.append(len(data))
        data = data[0] if data else None
    return shape


def validate(response: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """The validator's reading: a Core response is one with any of status, model_id,
    inference_time_us, output_size; with `outputs` (a dict) its tensors are checked
    (output_shape), without it status must be success and output_size above 0."""
    core_keys = {"status", "model_id", "inference_time_us", "output_size"}
    assert core_keys & set(response), response
    if isinstance(response.get("outputs"), dict):
        tensors = response["outputs"]
        assert expected["output_name"] in tensors, sorted(tensors)
        assert shape_of(tensors[expected["output_name"]]) == expected["expected_shape"]
        return tensors  # type: ignore[no-any-return]
    assert response["status"] == "success", response
    assert response["output_size"] > 0
    assert response["inference_time_us"] >= 0
    return {}


@pytest.fixture
def upstream(server_factory: Any, tmp_path: Path) -> tuple[MLOSServer, str]:
    models = tmp_path / "axon-cache"
    make_mlp(models / "hf" / "mlp" / "latest" / "model.onnx", seed=5)
    make_token_model(models / "hf" / "tiny-bert" / "latest" / "model.onnx")
    server = server_factory(import_roots=[models])
    base = f"http://{server.url}"
    for model_id, folder in ((MLP_ID, "hf/mlp/latest"), (TOKENS_ID, "hf/tiny-bert/latest")):
        status, body = curl("-X", "POST", f"{base}/models/register",
                            "-H", "Content-Type: application/json", "-d", json.dumps(
                                {"model_id": model_id, "framework": "ONNX",
                                 "path": str(models / folder / "model.onnx")}))
        assert status == 201 and body["id"] == model_id and body["state"] == "READY", body
    return server, base


def run_inference(base: str, model_id: str, body: dict[str, Any], tmp_path: Path,
                  include_outputs: bool) -> tuple[int, Any]:
    """run_inference in test-single-model.sh: input written to a file, warm-ups, then the
    timed request, answer kept as a file and read back by the validator."""
    request_file = tmp_path / "input.json"
    request_file.write_text(json.dumps(body))
    url = f"{base}/models/{url_encode(model_id)}/inference"
    if include_outputs:
        url += "?include_outputs=true"
    for _ in range(WARMUPS):
        post(url, request_file)
    return post(url, request_file)


def test_the_harness_requests_and_its_validator(upstream: tuple[MLOSServer, str],
                                                tmp_path: Path) -> None:
    server, base = upstream
    status, listed = curl(f"{base}/models")
    assert status == 200
    assert {MLP_ID, TOKENS_ID} <= {m["id"] for m in listed["models"]}
    status, one = curl(f"{base}/models/{url_encode(MLP_ID)}")
    assert status == 200 and one["id"] == MLP_ID
    assert one["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]

    x = np.linspace(-1, 1, 64, dtype=np.float32)
    status, answer = run_inference(base, MLP_ID, {"input": x.tolist()}, tmp_path, False)
    assert status == 200, answer
    assert answer["model_id"] == MLP_ID and "outputs" not in answer
    assert answer["output_size"] == 10 * 4
    validate(answer, {"output_name": "output", "expected_shape": [1, 10]})
    status, answer = run_inference(base, MLP_ID, {"input": x.tolist()}, tmp_path, True)
    assert status == 200, answer
    tensors = validate(answer, {"output_name": "output", "expected_shape": [1, 10]})
    np.testing.assert_allclose(np.array(tensors["output"]), mlp_reference(x[None], seed=5),
                               rtol=1e-4, atol=1e-5)

    # The harness's BERT-style body: input_ids, attention_mask as flat token lists.
    ids = [101] + [7592] * 14 + [102]
    mask = [1] * 12 + [0] * 4
    body = {"input_ids": ids, "attention_mask": mask}
    status, answer = run_inference(base, TOKENS_ID, body, tmp_path, True)
    assert status == 200, answer
    tensors = validate(answer, {"output_name": "logits", "expected_shape": [1, 16]})
    assert tensors["logits"] == [[float(i * m) for i, m in zip(ids, mask, strict=True)]]
    # Today's {"inputs": ...} shape still works beside the flat one, plain ids too.
    status, answer = curl("-X", "POST", f"{base}/models/{TOKENS_ID}/inference", "-d",
                          json.dumps({"inputs": {"input_ids": [ids], "attention_mask": [mask]}}))
    assert status == 200 and shape_of(answer["outputs"]["logits"]) == [1, 16]
    # The KServe view serves the same model under its repository name.
    status, meta = curl(f"{base}/v2/models/hf_mlp_latest")
    assert status == 200 and meta["inputs"][0]["shape"] == [-1, 64]


def test_bad_upstream_requests_are_4xx_and_the_server_keeps_serving(
        upstream: tuple[MLOSServer, str], tmp_path: Path) -> None:
    server, base = upstream
    encoded = url_encode(TOKENS_ID)
    good = {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1]}
    cases: list[tuple[str, Any, int, str]] = [
        (f"/models/{url_encode('hf/ghost@latest')}/inference", good, 404, "unknown model"),
        (f"/models/{encoded}/inference", {"input_ids": [1, 2]}, 400, "missing inputs"),
        (f"/models/{encoded}/inference", {**good, "nope": [1]}, 400, "no input 'nope'"),
        (f"/models/{encoded}/inference", {"input_ids": [1, 2, 3], "attention_mask": [1, 1]}, 400,
         "broadcast|shape|Incompatible"),
        (f"/models/{encoded}/inference", {"input_ids": "1 2 3", "attention_mask": [1]}, 400,
         "must be a list"),
        (f"/models/{encoded}/inference", {"input_ids": [[[1]]], "attention_mask": [1]}, 400,
         "does not fit"),
        (f"/models/{encoded}/inference", {}, 400, "body must be"),
        (f"/models/{encoded}/inference?include_outputs=maybe", good, 400, "include_outputs"),
        (f"/models/{url_encode('hf/../x@1')}/inference", good, 400, "invalid model name"),
    ]
    for path, body, status, message in cases:
        got, answer = curl("-X", "POST", base + path, "-H", "Content-Type: application/json",
                           "-d", json.dumps(body))
        assert got == status, (path, body, answer)
        assert isinstance(answer["error"], str), answer
        assert re.search(message, answer["error"]), (message, answer)
        ok, answer = run_inference(base, TOKENS_ID, good, tmp_path, True)
        assert ok == 200 and answer["outputs"]["logits"] == [[1.0, 2.0, 3.0]]
    # An id that would be stored under a name another id holds is refused.
    source = Path(server.settings.import_roots[0]) / "hf" / "mlp" / "latest" / "model.onnx"
    status, answer = curl("-X", "POST", f"{base}/models/register", "-d", json.dumps(
        {"model_id": "hf/mlp_latest", "path": str(source)}))
    assert status == 400 and "holds 'hf/mlp@latest'" in answer["error"], answer
    # Deleting by encoded id removes it; its id is gone with it.
    status, answer = curl("-X", "DELETE", f"{base}/models/{url_encode(MLP_ID)}")
    assert status == 200 and answer == {"id": MLP_ID, "deleted": True}
    status, answer = curl(f"{base}/models/{url_encode(MLP_ID)}")
    assert status == 404


def test_ids_survive_a_restart(upstream: tuple[MLOSServer, str], server_factory: Any,
                               tmp_path: Path) -> None:
    server, _ = upstream
    # A second server started on the same repository reads the ids from it.
    again = server_factory(import_roots=server.settings.import_roots)
    base = f"http://{again.url}"
    status, listed = curl(f"{base}/models")
    assert {MLP_ID, TOKENS_ID} <= {m["id"] for m in listed["models"]}
    status, answer = run_inference(base, TOKENS_ID, {"input_ids": [4], "attention_mask": [1]},
                                   tmp_path, True)
    assert status == 200 and answer["outputs"]["logits"] == [[4.0]]
