# SPDX-License-Identifier: Apache-2.0
"""Tensor values arrive at the model exactly as the client sent them, or the request is
refused with a 4xx: BYTES round trips over REST JSON, REST binary and gRPC; integers out
of their datatype's range, impossible shapes and malformed typed contents are
INVALID_ARGUMENT / 400, never a silent wraparound or an UNKNOWN / 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from core_fixtures import make_settings
from core_models import make_identity
from onnx import TensorProto
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from mlos_core.server import MLOSServer

TEXT = [b"abc", "caf\u00e9 \u2603".encode(), b"", b"with\x00nul", b"b'quoted'"]


@pytest.fixture(scope="module")
def typed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLOSServer]:
    """One server for the module: identity models for each datatype under test."""
    repo = tmp_path_factory.mktemp("typed") / "models"
    for name, elem in (("strings", TensorProto.STRING), ("int32", TensorProto.INT32),
                       ("uint8", TensorProto.UINT8), ("int8", TensorProto.INT8),
                       ("fp16", TensorProto.FLOAT16)):
        make_identity(repo / name / "1" / "model.onnx", elem)
    server = MLOSServer(make_settings(repo)).start_background()
    yield server
    server.stop_background()


@pytest.mark.parametrize("protocol, binary", [("http", False), ("http", True), ("grpc", True)])
def test_bytes_round_trip_exactly(typed: MLOSServer, protocol: str, binary: bool) -> None:
    mod = httpclient if protocol == "http" else grpcclient
    url = typed.url if protocol == "http" else f"127.0.0.1:{typed.grpc_port}"
    client = mod.InferenceServerClient(url)
    data = np.array(TEXT, dtype=np.object_)
    x = mod.InferInput("x", [len(TEXT)], "BYTES")
    out = mod.InferRequestedOutput("y")
    if protocol == "http":
        x.set_data_from_numpy(data, binary_data=binary)
        out = mod.InferRequestedOutput("y", binary_data=binary)
    else:
        x.set_data_from_numpy(data)
    got = client.infer("strings", [x], outputs=[out]).as_numpy("y")
    as_bytes = [v if isinstance(v, bytes) else str(v).encode() for v in got.ravel()]
    assert as_bytes == TEXT


def test_bytes_that_are_not_utf8_are_refused_clearly(typed: MLOSServer) -> None:
    client = httpclient.InferenceServerClient(typed.url)
    x = httpclient.InferInput("x", [1], "BYTES")
    x.set_data_from_numpy(np.array([b"\xff\xfe"], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match="not UTF-8") as err:
        client.infer("strings", [x])
    assert err.value.status() == "400"


@pytest.mark.parametrize("model, data, message", [
    ("int32", [2**40], "out of range; INT32 holds -2147483648..2147483647"),
    ("int32", [-(2**31) - 1], "out of range"),
    ("uint8", [-1], "out of range; UINT8 holds 0..255"),
    ("uint8", [256], "out of range"),
    ("int8", [1, 128], "value 128 is out of range"),
    ("int32", [2**70], "beyond 64 bits"),
    ("fp16", [1e5], "out of range; FP16"),
])
def test_json_values_out_of_range_are_400(typed: MLOSServer, model: str, data: list[Any],
                                         message: str) -> None:
    datatype = {"int32": "INT32", "uint8": "UINT8", "int8": "INT8", "fp16": "FP16"}[model]
    r = requests.post(f"http://{typed.url}/v2/models/{model}/infer", json={"inputs": [
        {"name": "x", "datatype": datatype, "shape": [len(data)], "data": data}]}, timeout=10)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_json_values_at_the_edges_of_the_range_pass(typed: MLOSServer) -> None:
    for model, datatype, data in (("int32", "INT32", [-(2**31), 2**31 - 1]),
                                  ("uint8", "UINT8", [0, 255]), ("int8", "INT8", [-128, 127])):
        r = requests.post(f"http://{typed.url}/v2/models/{model}/infer", json={"inputs": [
            {"name": "x", "datatype": datatype, "shape": [2], "data": data}]}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == data


def _grpc_infer(server: MLOSServer, model: str, datatype: str, shape: list[int],
                **contents: Any) -> service_pb2.ModelInferResponse:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="x", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    try:
        return stub.ModelInfer(request, timeout=10)
    finally:
        channel.close()


@pytest.mark.parametrize("model, datatype, shape, contents, message", [
    ("uint8", "UINT8", [1], {"uint_contents": [1000]}, "out of range; UINT8"),
    ("int8", "INT8", [2], {"int_contents": [5, -129]}, "value -129 is out of range"),
    ("int32", "INT32", [2**32, 2**32], {"int_contents": []}, "more than 2^40"),
    ("int32", "INT32", [2**32, 2**32], {"int_contents": [1]}, "more than 2^40"),
    ("int32", "INT32", [3], {"int_contents": [1]}, "do not fill shape"),
    ("fp16", "FP16", [1], {}, "needs raw_input_contents"),
])
def test_grpc_typed_contents_are_checked(typed: MLOSServer, model: str, datatype: str,
                                         shape: list[int], contents: dict[str, Any],
                                         message: str) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _grpc_infer(typed, model, datatype, shape, **contents)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details()


def test_grpc_typed_contents_in_range_pass(typed: MLOSServer) -> None:
    reply = _grpc_infer(typed, "uint8", "UINT8", [2], uint_contents=[0, 255])
    assert np.frombuffer(reply.raw_output_contents[0], dtype=np.uint8).tolist() == [0, 255]
    reply = _grpc_infer(typed, "int8", "INT8", [2], int_contents=[-128, 127])
    assert np.frombuffer(reply.raw_output_contents[0], dtype=np.int8).tolist() == [-128, 127]
