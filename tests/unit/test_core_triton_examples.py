# SPDX-License-Identifier: Apache-2.0
"""What Triton's own example client programs (triton-inference-server/client,
src/python/examples) do, with the real tritonclient against Triton's `simple` INT32 model:
HTTP and gRPC, sync and asyncio, custom headers and query arguments, reused InferInput
objects, keepalive options, explicit int contents over raw gRPC, system and CUDA shared
memory, statistics, logging and trace settings, configuration override on load, and
errors every client can decode."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
import tritonclient.utils.shared_memory as shm
from core_fixtures import *  # noqa: F403  (the fixtures)
from core_models import make_simple
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.http._utils import _raise_if_error
from tritonclient.utils import InferenceServerException

from mlos_core.dataplane import EXTENSIONS
from mlos_core.server import MLOSServer

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.ones((1, 16), dtype=np.int32)


@pytest.fixture
def simple(repo: Path, server_factory: Any) -> MLOSServer:
    make_simple(repo / "simple" / "1" / "model.onnx")
    return server_factory()  # type: ignore[no-any-return]


def grpc_url(server: MLOSServer) -> str:
    return f"127.0.0.1:{server.grpc_port}"


def inputs(mod: Any, binary: bool = True) -> list[Any]:
    made = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
    for tensor, data in zip(made, (A, B), strict=True):
        if mod is httpclient or mod is httpaio:
            tensor.set_data_from_numpy(data, binary_data=binary)
        else:
            tensor.set_data_from_numpy(data)
    return made


def check_sum_diff(result: Any) -> None:
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), A + B)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), A - B)


def check_stats(stats: dict[str, Any], requests_done: int, failures: int = 0) -> None:
    """Triton's statistics JSON, as the example programs print it at the end."""
    (entry,) = [s for s in stats["model_stats"] if s["name"] == "simple"]
    assert entry["version"] == "1"
    assert int(entry["inference_count"]) == requests_done
    assert int(entry["execution_count"]) == requests_done
    assert int(entry["last_inference"]) > 1_600_000_000_000  # ms since the epoch
    infer = entry["inference_stats"]
    for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert int(infer[phase]["count"]) == requests_done, phase
    assert int(infer["success"]["ns"]) >= int(infer["compute_infer"]["ns"]) > 0
    assert int(infer.get("fail", {}).get("count", 0)) == failures
    (batch,) = entry["batch_stats"]
    assert int(batch["batch_size"]) == 1
    assert int(batch["compute_infer"]["count"]) == requests_done


def test_http_sync_headers_args_reuse_and_statistics(simple: MLOSServer) -> None:
    client = httpclient.InferenceServerClient(simple.url)
    assert client.is_server_live() and client.is_model_ready("simple")
    assert client.get_inference_statistics("simple")["model_stats"][0]["inference_count"] == 0
    reused = inputs(httpclient)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=True),
               httpclient.InferRequestedOutput("OUTPUT1", binary_data=False)]
    # simple_http_infer_client: custom headers and query arguments; the same InferInput
    # objects sent again (simple_http_sequence / reuse examples).
    for _ in range(2):
        check_sum_diff(client.infer("simple", reused, outputs=outputs, request_id="1",
                                    headers={"test-header": "x"},
                                    query_params={"test_1": 1, "test_2": 2}))
    check_sum_diff(client.infer("simple", inputs(httpclient, binary=False)))
    bad = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    bad.set_data_from_numpy(A.astype(np.float32))
    with pytest.raises(InferenceServerException, match="datatype FP32"):
        client.infer("simple", [bad, reused[1]])
    check_stats(client.get_inference_statistics("simple"), 3, failures=1)
    check_stats(client.get_inference_statistics("simple", "1"), 3, failures=1)
    everything = client.get_inference_statistics()
    assert {s["name"] for s in everything["model_stats"]} == {"add", "double", "mlp", "simple"}
    with pytest.raises(InferenceServerException, match="unknown model 'ghost'"):
        client.get_inference_statistics("ghost")
    with pytest.raises(InferenceServerException, match="no loaded version '7'"):
        client.get_inference_statistics("simple", "7")


def test_grpc_sync_keepalive_and_statistics(simple: MLOSServer) -> None:
    keepalive = grpcclient.KeepAliveOptions(
        keepalive_time_ms=2**31 - 1, keepalive_timeout_ms=20000,
        keepalive_permit_without_calls=False, http2_max_pings_without_data=2)
    client = grpcclient.InferenceServerClient(grpc_url(simple), keepalive_options=keepalive)
    reused = inputs(grpcclient)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"),
               grpcclient.InferRequestedOutput("OUTPUT1")]
    for _ in range(3):
        check_sum_diff(client.infer("simple", reused, outputs=outputs,
                                    headers={"test-header": "x"}))
    check_stats(client.get_inference_statistics("simple", as_json=True), 3)
    message = client.get_inference_statistics("simple")
    assert message.model_stats[0].inference_stats.success.count == 3
    assert message.model_stats[0].execution_count == 3
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_inference_statistics("ghost")


def test_asyncio_clients(simple: MLOSServer) -> None:
    async def run() -> None:
        async with grpcaio.InferenceServerClient(grpc_url(simple)) as client:
            results = await asyncio.gather(*(client.infer("simple", inputs(grpcaio))
                                             for _ in range(4)))
            for result in results:
                check_sum_diff(result)
            check_stats(await client.get_inference_statistics("simple", as_json=True), 4)
        http = httpaio.InferenceServerClient(simple.url)
        try:
            results = await asyncio.gather(*(http.infer("simple", inputs(httpaio))
                                             for _ in range(2)))
            for result in results:
                check_sum_diff(result)
            check_stats(await http.get_inference_statistics("simple"), 6)
            assert await http.get_cuda_shared_memory_status() == []
        finally:
            await http.close()

    asyncio.run(run())


def test_explicit_int_contents_over_raw_grpc(simple: MLOSServer) -> None:
    """grpc_explicit_int_content_client: the service stub itself, int_contents in."""
    with grpc.insecure_channel(grpc_url(simple)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="simple")
        for name, data in (("INPUT0", A), ("INPUT1", B)):
            tensor = request.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            tensor.contents.int_contents[:] = data.ravel().tolist()
        response = stub.ModelInfer(request)
        got = {o.name: np.frombuffer(raw, np.int32).reshape(o.shape)
               for o, raw in zip(response.outputs, response.raw_output_contents, strict=True)}
        np.testing.assert_array_equal(got["OUTPUT0"], A + B)
        np.testing.assert_array_equal(got["OUTPUT1"], A - B)
        stats = stub.ModelStatistics(service_pb2.ModelStatisticsRequest(name="simple"))
        assert stats.model_stats[0].inference_count == 1


@pytest.fixture
def regions() -> Iterator[tuple[Any, Any, str, str]]:
    tag = f"{os.getpid()}_{os.urandom(3).hex()}"
    in_key, out_key = f"/simple_in_{tag}", f"/simple_out_{tag}"
    h_in = shm.create_shared_memory_region("input_data", in_key, 128)
    h_out = shm.create_shared_memory_region("output_data", out_key, 128)
    yield h_in, h_out, in_key, out_key
    shm.destroy_shared_memory_region(h_in)
    shm.destroy_shared_memory_region(h_out)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_shared_memory_example(simple: MLOSServer, regions: Any, protocol: str) -> None:
    """simple_*_shm_client, which first cleans up CUDA and system shared memory."""
    h_in, h_out, in_key, out_key = regions
    mod: Any = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(simple.url if protocol == "http" else grpc_url(simple))
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory()
    cuda = client.get_cuda_shared_memory_status()
    assert not (cuda if protocol == "http" else cuda.regions)
    handle = "aGFuZGxl" if protocol == "http" else b"aGFuZGxl"  # base64, as cudashm gives
    with pytest.raises(InferenceServerException, match="no CUDA device|without CUDA"):
        client.register_cuda_shared_memory("cuda_in", handle, 0, 128)
    shm.set_shared_memory_region(h_in, [A, B])
    client.register_system_shared_memory("input_data", in_key, 128)
    client.register_system_shared_memory("output_data", out_key, 128)
    made = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
    made[0].set_shared_memory("input_data", 64)
    made[1].set_shared_memory("input_data", 64, offset=64)
    outs = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
    outs[0].set_shared_memory("output_data", 64)
    outs[1].set_shared_memory("output_data", 64, offset=64)
    client.infer("simple", made, outputs=outs)
    np.testing.assert_array_equal(shm.get_contents_as_numpy(h_out, np.int32, [1, 16]), A + B)
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(h_out, np.int32, [1, 16], offset=64), A - B)
    client.unregister_system_shared_memory()
    client.unregister_cuda_shared_memory("cuda_in")
    stats = client.get_inference_statistics("simple", **({} if protocol == "http"
                                                          else {"as_json": True}))
    check_stats(stats, 1)


@pytest.fixture
def service_log_level() -> Iterator[None]:
    logger = logging.getLogger("mlos_core")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_log_and_trace_settings(simple: MLOSServer, protocol: str,
                                service_log_level: None) -> None:
    mod: Any = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(simple.url if protocol == "http" else grpc_url(simple))
    extra = {} if protocol == "http" else {"as_json": True}
    settings = client.get_log_settings(**extra)
    settings = settings.get("settings", settings)
    assert "log_verbose_level" in settings and "log_info" in settings
    updated = client.update_log_settings({"log_verbose_level": 1}, **extra)
    assert logging.getLogger("mlos_core").getEffectiveLevel() == logging.DEBUG
    updated = updated.get("settings", updated)
    assert updated["log_verbose_level"] in (1, {"uint32_param": 1})
    client.update_log_settings({"log_verbose_level": 0, "log_info": False})
    assert logging.getLogger("mlos_core").getEffectiveLevel() == logging.WARNING
    with pytest.raises(InferenceServerException, match="stderr"):
        client.update_log_settings({"log_file": "/tmp/triton.log"})
    trace = client.get_trace_settings(**extra)
    trace = trace.get("settings", trace)
    assert trace["trace_level"] in (["OFF"], {"value": ["OFF"]})
    client.get_trace_settings(model_name="simple")
    client.update_trace_settings(settings={"trace_level": ["OFF"]})
    with pytest.raises(InferenceServerException, match="does not trace"):
        client.update_trace_settings(model_name="simple", settings={"trace_level": ["TIMESTAMPS"]})
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_trace_settings(model_name="ghost")
    check_sum_diff(client.infer("simple", inputs(mod)))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_configuration_override_on_load(simple: MLOSServer, protocol: str) -> None:
    mod: Any = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(simple.url if protocol == "http" else grpc_url(simple))
    override = {
        "name": "simple", "platform": "onnxruntime_onnx", "max_batch_size": 1,
        "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]},
                  {"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [16]}],
        "output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16]}],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "parameters": {"intra_op_thread_count": {"string_value": "1"}},
    }
    client.load_model("simple", config=json.dumps(override))
    config = client.get_model_config("simple", **({} if protocol == "http"
                                                  else {"as_json": True}))
    config = config.get("config", config)  # gRPC's JSON wraps it
    assert int(config["max_batch_size"]) == 1
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] \
        == [("INPUT0", "TYPE_INT32", [16]), ("INPUT1", "TYPE_INT32", [16])]
    check_sum_diff(client.infer("simple", inputs(mod)))
    two = [mod.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for tensor in two:
        tensor.set_data_from_numpy(np.zeros((2, 16), dtype=np.int32))
    with pytest.raises(InferenceServerException, match="max_batch_size 1"):
        client.infer("simple", two)
    bad_overrides = [
        ("{not json", "not valid JSON"),
        (json.dumps({"name": "other"}), "not the model being loaded"),
        (json.dumps({"input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [16]}]}),
         "is FP32 but the model.s is INT32"),
        (json.dumps({"input": [{"name": "NOPE", "data_type": "TYPE_INT32", "dims": [16]}]}),
         "has no input 'NOPE'"),
        (json.dumps({"max_batch_size": 1,
                     "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [8]}]}),
         "do not fit"),
        (json.dumps({"max_batch_size": -1}), "max_batch_size"),
        (json.dumps({"sequence_batching": {}}), "unsupported fields"),
        (json.dumps({"instance_group": [{"count": 1, "gpus": "0"}]}), "gpus"),
        (json.dumps({"max_batch_size": 1 << 40}), "max_batch_size"),
        ("[" * 100_000, "not valid JSON"),
        (json.dumps({"parameters": {"intra_op_thread_count": {"string_value": "999"}}}),
         "intra_op_threads"),
    ]
    for text, message in bad_overrides:
        with pytest.raises(InferenceServerException, match=message) as caught:
            client.load_model("simple", config=text)
        status = caught.value.status()
        assert status in ("400", "StatusCode.INVALID_ARGUMENT"), (text, status)
        # The model loaded before keeps serving, with the override it was loaded with.
        assert client.is_model_ready("simple")
        check_sum_diff(client.infer("simple", inputs(mod)))
    client.load_model("simple")  # without a config: the repository's again
    client.infer("simple", two)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_override_narrows_input_dims(simple: MLOSServer, protocol: str) -> None:
    """`double` takes x of any length; an override declaring dims [4] makes 4 the only
    length it serves, its metadata says so, and a load without the override undoes it."""
    mod: Any = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(simple.url if protocol == "http" else grpc_url(simple))

    def double(n: int) -> Any:
        x = mod.InferInput("x", [n], "FP32")
        x.set_data_from_numpy(np.arange(n, dtype=np.float32))
        return client.infer("double", [x])

    client.load_model("double", config=json.dumps(
        {"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]}))
    meta = httpclient.InferenceServerClient(simple.url).get_model_metadata("double")
    assert meta["inputs"][0]["shape"] == [4]
    np.testing.assert_array_equal(double(4).as_numpy("y"), [0, 2, 4, 6])
    with pytest.raises(InferenceServerException, match=r"does not match the model's \[4\]"):
        double(3)
    client.load_model("double")
    np.testing.assert_array_equal(double(3).as_numpy("y"), [0, 2, 4])


def test_errors_are_error_bodies_tritonclient_decodes(simple: MLOSServer) -> None:
    base = f"http://{simple.url}"
    client = httpclient.InferenceServerClient(simple.url)
    for path in ("v2/no/such/route", "v2/cudasharedmemory/nope", "v3"):
        response = client._get(path, None, None)
        with pytest.raises(InferenceServerException, match="no route GET") as caught:
            _raise_if_error(response)
        assert caught.value.status() == "404"
    response = client._post("v2/health/live", "", None, None)
    with pytest.raises(InferenceServerException, match="method POST is not allowed"):
        _raise_if_error(response)
    for method, path in (("GET", "/v2/repository/index"), ("PUT", "/v2/models/simple/infer"),
                         ("DELETE", "/v2/logging"), ("GET", "/nope")):
        r = requests.request(method, base + path, timeout=5)
        assert r.status_code in (404, 405), (method, path)
        assert isinstance(r.json()["error"], str) and r.json()["error"], (method, path)
        if r.status_code == 405:
            assert r.headers["allow"]
    with pytest.raises(InferenceServerException, match="log setting 'log_info' must be"):
        client.update_log_settings({"log_info": "yes"})
    check_sum_diff(client.infer("simple", inputs(httpclient)))


#: Per listed extension: a REST route and a gRPC method that must answer (not 404, not
#: UNIMPLEMENTED) on a server with the `simple` model.
EXTENSION_PROBES: dict[str, tuple[tuple[str, str], str]] = {
    "binary_tensor_data": (("POST", "/v2/models/simple/infer"), "ModelInfer"),
    "model_repository": (("POST", "/v2/repository/index"), "RepositoryIndex"),
    "model_configuration": (("GET", "/v2/models/simple/config"), "ModelConfig"),
    "statistics": (("GET", "/v2/models/stats"), "ModelStatistics"),
    "system_shared_memory": (("GET", "/v2/systemsharedmemory/status"),
                             "SystemSharedMemoryStatus"),
    "logging": (("GET", "/v2/logging"), "LogSettings"),
}
_GRPC_REQUESTS = {
    "ModelInfer": service_pb2.ModelInferRequest(model_name="simple"),
    "RepositoryIndex": service_pb2.RepositoryIndexRequest(),
    "ModelConfig": service_pb2.ModelConfigRequest(name="simple"),
    "ModelStatistics": service_pb2.ModelStatisticsRequest(),
    "SystemSharedMemoryStatus": service_pb2.SystemSharedMemoryStatusRequest(),
    "LogSettings": service_pb2.LogSettingsRequest(),
}


def test_every_listed_extension_has_routes(simple: MLOSServer) -> None:
    client = httpclient.InferenceServerClient(simple.url)
    listed = client.get_server_metadata()["extensions"]
    assert listed == EXTENSIONS
    assert set(listed) == set(EXTENSION_PROBES), "each listed extension needs a probe here"
    assert "cuda_shared_memory" not in listed and "trace" not in listed  # docs/core.md
    with grpc.insecure_channel(grpc_url(simple)) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for extension in listed:
            (method, path), rpc = EXTENSION_PROBES[extension]
            r = requests.request(method, f"http://{simple.url}{path}", json={}, timeout=5)
            assert "no route" not in r.text and r.status_code != 405, (extension, r.text)
            try:
                getattr(stub, rpc)(_GRPC_REQUESTS[rpc])
            except grpc.RpcError as exc:
                assert exc.code() != grpc.StatusCode.UNIMPLEMENTED, extension


def test_validation_errors_are_error_bodies() -> None:
    """A route with FastAPI-validated parameters answers a bad one in the same shape,
    naming the parameter (the MLOS routes parse their bodies themselves; a router that
    declares typed parameters gets this)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mlos_core.protocols.http import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/typed")
    async def typed(count: int) -> dict[str, int]:
        return {"count": count}

    client = TestClient(app)
    r = client.get("/typed", params={"count": "many"})
    assert r.status_code == 422
    assert "query.count" in r.json()["error"] and "integer" in r.json()["error"]
    r = client.post("/typed")
    assert r.status_code == 405 and r.json()["error"].startswith("method POST")
