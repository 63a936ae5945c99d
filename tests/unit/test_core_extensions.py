# SPDX-License-Identifier: Apache-2.0
"""Triton extensions through the real clients: system shared memory (tritonclient.utils.
shared_memory, HTTP and gRPC), model repository over HTTP, and /metrics."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from core_fixtures import *  # noqa: F403  (the fixtures)
from tritonclient.utils import InferenceServerException

from mlos_core.server import MLOSServer

N = 1024


@pytest.fixture
def regions() -> Iterator[tuple[object, object, str, str]]:
    tag = f"{os.getpid()}_{os.urandom(3).hex()}"
    in_key, out_key = f"/mlos_in_{tag}", f"/mlos_out_{tag}"
    h_in = shm.create_shared_memory_region("input_region", in_key, N * 4)
    h_out = shm.create_shared_memory_region("output_region", out_key, N * 4)
    yield h_in, h_out, in_key, out_key
    shm.destroy_shared_memory_region(h_in)
    shm.destroy_shared_memory_region(h_out)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_system_shared_memory(server: MLOSServer, regions, protocol: str) -> None:  # type: ignore[no-untyped-def]
    h_in, h_out, in_key, out_key = regions
    mod = httpclient if protocol == "http" else grpcclient
    url = server.url if protocol == "http" else f"127.0.0.1:{server.grpc_port}"
    client = mod.InferenceServerClient(url)
    x = np.arange(N, dtype=np.float32)
    shm.set_shared_memory_region(h_in, [x])
    client.register_system_shared_memory("input_region", in_key, N * 4)
    client.register_system_shared_memory("output_region", out_key, N * 4)
    status = client.get_system_shared_memory_status()
    names = ({r["name"] for r in status} if protocol == "http" else set(status.regions))
    assert names == {"input_region", "output_region"}
    inp = mod.InferInput("x", [N], "FP32")
    inp.set_shared_memory("input_region", N * 4)
    out = mod.InferRequestedOutput("y")
    out.set_shared_memory("output_region", N * 4)
    result = client.infer("double", [inp], outputs=[out])
    output = result.get_output("y")
    params = output["parameters"] if protocol == "http" else output.parameters
    region = params["shared_memory_region"]
    assert (region if protocol == "http" else region.string_param) == "output_region"
    got = shm.get_contents_as_numpy(h_out, np.float32, [N])
    np.testing.assert_array_equal(got, 2 * x)
    # A wrong byte size is the client's error, not the server's.
    bad = mod.InferInput("x", [N], "FP32")
    bad.set_shared_memory("input_region", N * 4 - 4)
    with pytest.raises(InferenceServerException, match="byte_size"):
        client.infer("double", [bad])
    with pytest.raises(InferenceServerException):
        client.register_system_shared_memory("nope", "/does_not_exist_mlos", 16)
    client.unregister_system_shared_memory()
    status = client.get_system_shared_memory_status()
    assert not (status if protocol == "http" else status.regions)


def test_repository_extension_http(server: MLOSServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    index = client.get_model_repository_index()
    assert {m["name"] for m in index} == {"add", "double", "mlp"}
    client.unload_model("mlp")
    assert not client.is_model_ready("mlp")
    with pytest.raises(InferenceServerException, match="not loaded"):
        x = httpclient.InferInput("input", [1, 64], "FP32")
        x.set_data_from_numpy(np.zeros((1, 64), dtype=np.float32))
        client.infer("mlp", [x])
    client.load_model("mlp")
    assert client.is_model_ready("mlp")
    with pytest.raises(InferenceServerException, match="not in the repository"):
        client.load_model("ghost")


def test_metrics(server: MLOSServer) -> None:
    client = httpclient.InferenceServerClient(server.url)
    x = httpclient.InferInput("x", [2], "FP32")
    x.set_data_from_numpy(np.ones(2, dtype=np.float32))
    for _ in range(3):
        client.infer("double", [x])
    bad = httpclient.InferInput("x", [2], "INT32")
    bad.set_data_from_numpy(np.ones(2, dtype=np.int32))
    with pytest.raises(InferenceServerException):
        client.infer("double", [bad])
    text = requests.get(f"http://{server.url}/metrics", timeout=5).text
    assert 'mlos_inference_requests_total{model="double",protocol="rest"} 4' in text
    assert 'mlos_inference_failures_total{model="double",reason="InvalidInputError"} 1' in text
    assert 'mlos_compute_duration_seconds_count{model="double"} 3' in text
    assert 'mlos_queue_duration_seconds_bucket{model="double",le="+Inf"} 3' in text
