# SPDX-License-Identifier: Apache-2.0
"""KServe v2 REST with the real tritonclient.http, JSON and binary tensors."""

from __future__ import annotations

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from core_fixtures import *  # noqa: F403  (the fixtures)
from core_models import mlp_reference
from tritonclient.utils import InferenceServerException

from mlos_core.server import MLOSServer


@pytest.fixture
def client(server: MLOSServer) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url)


def test_health_and_metadata(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "mlos-core"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("mlp")
    model = client.get_model_metadata("mlp")
    assert model["platform"] == "onnxruntime"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert model["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_metadata("mlp", "1")["versions"] == ["1"]


@pytest.mark.parametrize("binary", [False, True])
def test_infer_mlp(client: httpclient.InferenceServerClient, binary: bool) -> None:
    x = np.random.default_rng(1).standard_normal((3, 64), dtype=np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("output", binary_data=binary)
    result = client.infer("mlp", [inp], outputs=[out], request_id="r1")
    got = result.as_numpy("output")
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got, mlp_reference(x), rtol=1e-4, atol=1e-5)
    assert result.get_response()["id"] == "r1"


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_request(client: httpclient.InferenceServerClient, algorithm: str) -> None:
    x = np.arange(64, dtype=np.float32).reshape(1, 64)
    inp = httpclient.InferInput("input", [1, 64], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], request_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("output"), mlp_reference(x), rtol=1e-4, atol=1e-5)


def test_infer_int_multi_input_default_outputs(client: httpclient.InferenceServerClient) -> None:
    a = httpclient.InferInput("a", [2], "INT64")
    a.set_data_from_numpy(np.array([1, 2], dtype=np.int64))
    b = httpclient.InferInput("b", [2], "INT64")
    b.set_data_from_numpy(np.array([10, 20], dtype=np.int64), binary_data=False)
    result = client.infer("add", [a, b])
    assert result.as_numpy("s").tolist() == [11, 22]


def test_client_errors(client: httpclient.InferenceServerClient) -> None:
    x = httpclient.InferInput("x", [4], "FP32")
    x.set_data_from_numpy(np.ones(4, dtype=np.float32))
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("nope", [x])
    wrong_name = httpclient.InferInput("input_", [4], "FP32")
    wrong_name.set_data_from_numpy(np.ones(4, dtype=np.float32))
    with pytest.raises(InferenceServerException, match="no input 'input_'"):
        client.infer("double", [wrong_name])
    wrong_type = httpclient.InferInput("x", [4], "FP64")
    wrong_type.set_data_from_numpy(np.ones(4, dtype=np.float64))
    with pytest.raises(InferenceServerException, match="expects FP32"):
        client.infer("double", [wrong_type])
    wrong_shape = httpclient.InferInput("input", [1, 63], "FP32")
    wrong_shape.set_data_from_numpy(np.ones((1, 63), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="does not match"):
        client.infer("mlp", [wrong_shape])


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {}, 400),
        (b"not gzip", {"Content-Encoding": "gzip"}, 400),
        (b"{}", {"Content-Encoding": "br"}, 400),
        (b"[]", {}, 400),
        (b'{"inputs": []}', {}, 400),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]}', {}, 400),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", 1]}]}',
         {}, 400),
        (b'{"inputs": [{"name": "x", "datatype": "FP99", "shape": [1], "data": [1]}]}', {}, 400),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-3], "data": [1]}]}', {}, 400),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}]}',
         {}, 400),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],'
         b' "parameters": {"binary_data_size": 8}}]}', {"Inference-Header-Content-Length": "x"},
         400),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],'
         b' "parameters": {"binary_data_size": 8}}]}1234',
         {"Inference-Header-Content-Length": "79"},
         400),
    ],
)
def test_malformed_requests_get_4xx(
    server: MLOSServer, body: bytes, headers: dict[str, str], status: int
) -> None:
    response = requests.post(f"http://{server.url}/v2/models/double/infer", data=body,
                             headers=headers, timeout=10)
    assert response.status_code == status, response.text
    assert response.json()["error"]


def test_unknown_model_routes(server: MLOSServer) -> None:
    base = f"http://{server.url}"
    assert requests.get(f"{base}/v2/models/nope", timeout=5).status_code == 404
    assert requests.get(f"{base}/v2/models/nope/ready", timeout=5).status_code == 404
    assert requests.get(f"{base}/v2/models/mlp/versions/7", timeout=5).status_code == 404
