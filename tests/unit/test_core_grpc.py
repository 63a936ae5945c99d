# SPDX-License-Identifier: Apache-2.0
"""KServe v2 gRPC with the real, unmodified tritonclient.grpc; the .proto's wire
compatibility and the generated modules' freshness."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as triton_config_pb2
import tritonclient.grpc.service_pb2 as triton_pb2
from core_fixtures import *  # noqa: F403  (the fixtures)
from core_models import mlp_reference
from proto_support import proto_fields
from tritonclient.utils import InferenceServerException

from mlos_core.protocols.grpc import generate
from mlos_core.protocols.grpc.generated import inference_pb2
from mlos_core.server import MLOSServer


@pytest.fixture
def client(server: MLOSServer) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")


def test_health_metadata_infer(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.get_server_metadata().name == "mlos-core"
    meta = client.get_model_metadata("mlp", as_json=True)
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}
    x = np.random.default_rng(2).standard_normal((5, 64), dtype=np.float32)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("mlp", [inp], outputs=[grpcclient.InferRequestedOutput("output")],
                          request_id="g1")
    np.testing.assert_allclose(result.as_numpy("output"), mlp_reference(x), rtol=1e-4, atol=1e-5)
    assert result.get_response().id == "g1"
    a = grpcclient.InferInput("a", [2], "INT64")
    a.set_data_from_numpy(np.array([3, 4], dtype=np.int64))
    b = grpcclient.InferInput("b", [2], "INT64")
    b.set_data_from_numpy(np.array([5, 6], dtype=np.int64))
    assert client.infer("add", [a, b]).as_numpy("s").tolist() == [8, 10]


def test_errors_map_to_status_codes(client: grpcclient.InferenceServerClient) -> None:
    x = grpcclient.InferInput("x", [3], "FP32")
    x.set_data_from_numpy(np.ones(3, dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("nope", [x])
    assert info.value.status() == "StatusCode.NOT_FOUND"
    bad = grpcclient.InferInput("x", [3], "INT32")
    bad.set_data_from_numpy(np.ones(3, dtype=np.int32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("double", [bad])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "expects FP32" in info.value.message()


def test_repository_extension(client: grpcclient.InferenceServerClient) -> None:
    names = {m.name: m.state for m in client.get_model_repository_index().models}
    assert names == {"add": "READY", "double": "READY", "mlp": "READY"}
    client.unload_model("double")
    assert not client.is_model_ready("double")
    client.load_model("double")
    assert client.is_model_ready("double")


def test_proto_is_wire_compatible_with_published_protocol() -> None:
    """Every message and RPC we define matches the published definitions that tritonclient
    ships (field numbers, wire types, nested types)."""
    ours = inference_pb2.DESCRIPTOR
    published = {**triton_config_pb2.DESCRIPTOR.message_types_by_name,
                 **triton_pb2.DESCRIPTOR.message_types_by_name}
    for name, message in ours.message_types_by_name.items():
        theirs = published[name]
        mine = proto_fields(message)
        assert mine == {k: v for k, v in proto_fields(theirs).items() if k in mine}, name
    our_service = ours.services_by_name["GRPCInferenceService"]
    their_service = triton_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert our_service.full_name == "inference.GRPCInferenceService"
    for method in our_service.methods:
        theirs = their_service.methods_by_name[method.name]
        assert method.input_type.name == theirs.input_type.name
        assert method.output_type.name == theirs.output_type.name
    for name, enum in ours.enum_types_by_name.items():
        theirs = triton_config_pb2.DESCRIPTOR.enum_types_by_name[name]
        assert [(v.name, v.number) for v in enum.values] == \
            [(v.name, v.number) for v in theirs.values], name


def _normalised(text: str) -> str:
    """Generated code minus the generator's own version stamps (they vary with the
    installed grpcio-tools, the content does not)."""
    keep = [line for line in text.splitlines()
            if not re.search(r"Version|VERSION|^\s+\d+,$", line)]
    return "\n".join(keep)


def test_generated_modules_are_current(tmp_path: Path) -> None:
    committed_in = {proto.stem: where for proto, (where, _) in generate.PROTOS.items()}
    assert Path(inference_pb2.__file__).parent == committed_in["inference"]
    for fresh in generate.generate(tmp_path):
        committed = committed_in[fresh.name.split("_pb2")[0]] / fresh.name
        assert _normalised(committed.read_text()) == _normalised(fresh.read_text()), (
            f"{committed} is stale: run python -m mlos_core.protocols.grpc.generate"
        )


def test_framed_response_is_the_message_protobuf_would_write() -> None:
    # ModelInfer's answers are serialised from the output arrays' buffers (no copies):
    # the bytes must parse as the message protobuf itself builds, outputs in order,
    # including a shared-memory output's empty placeholder, BYTES and a large tensor.
    from mlos_core.dataplane import InferResponse, OutputTensor, ShmRef
    from mlos_core.protocols.grpc.server import encode_response, serialize_infer_response
    from mlos_core.tensors import to_bytes

    big = np.arange(300_000, dtype=np.float32).reshape(600, 500)[:, ::2]  # not contiguous
    words = np.array([b"ab", b"", b"\xff" * 200], dtype=object)
    shm_out = OutputTensor("s", "FP32", (2,), None)
    shm_out.shm = ShmRef("region", 0, 8)
    outputs = [OutputTensor("big", "FP32", big.shape, big), shm_out,
               OutputTensor("words", "BYTES", words.shape, words),
               OutputTensor("one", "INT32", (1,), np.array([7], dtype=np.int32))]
    wire = serialize_infer_response(encode_response(InferResponse("m", "1", outputs, "id9")))
    parsed = triton_pb2.ModelInferResponse.FromString(wire)
    expected = triton_pb2.ModelInferResponse(model_name="m", model_version="1", id="id9")
    for out in outputs:
        tensor = expected.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        if out.shm is not None:
            tensor.parameters["shared_memory_region"].string_param = "region"
            tensor.parameters["shared_memory_byte_size"].int64_param = 8
            expected.raw_output_contents.append(b"")
        else:
            expected.raw_output_contents.append(bytes(to_bytes(out.data)))
    assert parsed == expected
    assert np.array_equal(np.frombuffer(parsed.raw_output_contents[0], np.float32)
                          .reshape(big.shape), big)
    # A plain message (the other methods) is serialised as protobuf does.
    assert serialize_infer_response(expected) == expected.SerializeToString()
