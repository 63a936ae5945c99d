# SPDX-License-Identifier: Apache-2.0
"""A Triton model repository (model/config.pbtxt + model/1/model.onnx) served unchanged:
the model-config .proto against the published definitions, version policies, reshape,
max_batch_size, the fields MLOS does not apply (reported once), malformed configs (that
model unavailable, the others served) and config.yaml over config.pbtxt."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.model_config_pb2 as triton_config_pb2
import tritonclient.http as httpclient
from core_fixtures import make_settings
from core_models import make_double, make_mlp, make_scale, mlp_reference
from proto_support import proto_fields
from tritonclient.utils import InferenceServerException

from mlos_core.repository import pbtxt
from mlos_core.repository.generated import model_config_pb2
from mlos_core.server import MLOSServer

MLP_PBTXT = """
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 64 ]
  }
]
output [
  {
    name: "output"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
instance_group [ { count: 1, kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""

RESHAPED_PBTXT = """
backend: "onnxruntime"
max_batch_size: 4
input [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ], reshape: { shape: [ 4, 4 ] } } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 16 ], reshape: { shape: [ 4, 4 ] } } ]
"""

UNAPPLIED_PBTXT = """
platform: "onnxruntime_onnx"
max_batch_size: 2
input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] allow_ragged_batch: true } ]
optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }
model_warmup [ { name: "warm", batch_size: 1, inputs { key: "x" value: { zero_data: true } } } ]
instance_group [ { count: 1, kind: KIND_GPU, gpus: [ 0 ] } ]
parameters { key: "enable_mem_arena" value: { string_value: "0" } }
"""


def test_model_config_proto_matches_the_published_definitions() -> None:
    """Every message, field and enum value we define has Triton's name, number and type
    (tritonclient ships the published model_config.proto, compiled)."""
    ours, theirs = model_config_pb2.DESCRIPTOR, triton_config_pb2.DESCRIPTOR
    for name, message in ours.message_types_by_name.items():
        published = proto_fields(theirs.message_types_by_name[name])
        mine = proto_fields(message)
        assert mine == {k: v for k, v in published.items() if k in mine}, name
    assert proto_fields(ours.message_types_by_name["ModelConfig"]).keys() == \
        proto_fields(theirs.message_types_by_name["ModelConfig"]).keys()
    for name, enum in ours.enum_types_by_name.items():
        assert [(v.name, v.number) for v in enum.values] == \
            [(v.name, v.number) for v in theirs.enum_types_by_name[name].values]


def _triton_repository(root: Path) -> Path:
    make_mlp(root / "mlp" / "1" / "model.onnx")
    (root / "mlp" / "config.pbtxt").write_text(MLP_PBTXT)
    for version in (1, 2, 3):
        make_scale(root / "specific" / str(version) / "model.onnx", [3], factor=version)
        make_scale(root / "latest2" / str(version) / "model.onnx", [3], factor=version)
    (root / "specific" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 4\n'
        "version_policy: { specific: { versions: [ 1, 3 ] } }\n")
    (root / "latest2" / "config.pbtxt").write_text(
        'backend: "onnxruntime"\nmax_batch_size: 4\n'
        "version_policy: { latest: { num_versions: 2 } }\n")
    make_scale(root / "reshaped" / "1" / "model.onnx", [4, 4])
    (root / "reshaped" / "config.pbtxt").write_text(RESHAPED_PBTXT)
    make_double(root / "double" / "1" / "model.onnx")
    (root / "double" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    return root


@pytest.fixture
def triton_server(tmp_path: Path) -> Iterator[MLOSServer]:
    repo = _triton_repository(tmp_path / "models")
    server = MLOSServer(make_settings(repo)).start_background()
    yield server
    server.stop_background()


def test_a_triton_repository_serves_unchanged(triton_server: MLOSServer) -> None:
    http = httpclient.InferenceServerClient(triton_server.url)
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{triton_server.grpc_port}")
    index = {m["name"]: m for m in http.get_model_repository_index()}
    assert {n: m["state"] for n, m in index.items()} == dict.fromkeys(
        ["double", "latest2", "mlp", "reshaped", "specific"], "READY")
    assert index["mlp"]["reason"] == ""  # everything in its config applied
    meta = http.get_model_metadata("mlp")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    config = http.get_model_config("mlp")  # Triton's form: dims without the batch
    assert (config["platform"], config["max_batch_size"]) == ("onnxruntime_onnx", 8)
    assert config["input"] == [{"name": "input", "data_type": "TYPE_FP32", "dims": [64]}]
    assert config["instance_group"] == [{"count": 1, "kind": "KIND_CPU"}]

    x = np.random.default_rng(1).standard_normal((3, 64), dtype=np.float32)
    for client, mod in ((http, httpclient), (grpc, grpcclient)):
        inp = mod.InferInput("input", [3, 64], "FP32")
        inp.set_data_from_numpy(x)
        y = client.infer("mlp", [inp]).as_numpy("output")
        np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-5)
    # max_batch_size 8: a batch of 9 is refused, as Triton refuses it.
    big = httpclient.InferInput("input", [9, 64], "FP32")
    big.set_data_from_numpy(np.zeros((9, 64), np.float32))
    with pytest.raises(InferenceServerException, match="max_batch_size 8"):
        http.infer("mlp", [big])

    # Version policies: specific [1, 3]; latest with num_versions 2.
    ones = np.ones((1, 3), np.float32)
    for model, loaded, missing in (("specific", ("1", "3"), "2"), ("latest2", ("2", "3"), "1")):
        assert sorted(http.get_model_metadata(model)["versions"]) == list(loaded)
        assert not http.is_model_ready(model, missing)
        for version in loaded:
            inp = grpcclient.InferInput("x", [1, 3], "FP32")
            inp.set_data_from_numpy(ones)
            y = grpc.infer(model, [inp], model_version=version).as_numpy("y")
            np.testing.assert_array_equal(y, ones * int(version))

    # Reshape: clients send and get [batch, 16]; the model computes on [batch, 4, 4].
    meta = grpc.get_model_metadata("reshaped", as_json=True)
    assert meta["inputs"][0]["shape"] == ["-1", "16"]
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    inp = httpclient.InferInput("x", [2, 16], "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = http.infer("reshaped", [inp])
    np.testing.assert_array_equal(result.as_numpy("y"), 2 * x)
    assert result.get_output("y")["shape"] == [2, 16]

    # No max_batch_size: the model's own shapes.
    assert http.get_model_metadata("double")["inputs"][0]["shape"] == [-1]


def test_fields_mlos_does_not_apply_are_reported_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    repo = tmp_path / "models"
    make_scale(repo / "extras" / "1" / "model.onnx", [3])
    (repo / "extras" / "config.pbtxt").write_text(UNAPPLIED_PBTXT)
    caplog.set_level(logging.WARNING, logger="mlos_core")
    server = MLOSServer(make_settings(repo)).start_background()
    try:
        url = f"http://{server.url}/v2/repository/index"
        for _ in range(2):  # the index is read twice; the warning was said once, at load
            out = subprocess.run(["curl", "-sf", "-X", "POST", url, "-d", "{}"],
                                 check=True, capture_output=True, text=True).stdout
            [entry] = json.loads(out)
        assert entry["state"] == "READY"
        for field in ("optimization", "model_warmup", "input[0].allow_ragged_batch",
                      "instance_group[0].gpus", "instance_group[0].kind KIND_GPU",
                      "parameters.enable_mem_arena"):
            assert field in entry["reason"], field
        said = [r for r in caplog.records if "extras" in r.getMessage()
                and "not applied" in r.getMessage()]
        assert len(said) == 1
        x = np.ones((2, 3), np.float32)
        inp = httpclient.InferInput("x", [2, 3], "FP32")
        inp.set_data_from_numpy(x)
        y = httpclient.InferenceServerClient(server.url).infer("extras", [inp]).as_numpy("y")
        np.testing.assert_array_equal(y, 2 * x)
    finally:
        server.stop_background()


MALFORMED = {
    "syntax": ("max_batch_size: 8\ninput [ { name: \"x\" ", "malformed model configuration"),
    "typo": ("max_batch_sizes: 8\n", "max_batch_sizes: no such field"),
    "badtype": ("max_batch_size: \"eight\"\n", "Couldn't parse integer"),
    "renamed": ("name: \"other\"\n", "does not match the model directory"),
    "wrongdims": ('max_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 5 ] } ]\n',
                  "gives the model shape [-1, 5] but the model's is [-1, 3]"),
    "wrongtype": ('input [ { name: "x" data_type: TYPE_INT32 dims: [ -1, 3 ] } ]\n',
                  "is INT32 but the model's is FP32"),
    "unknownplatform": ('platform: "tensorrt_plan"\n', "asks for backend 'tensorrt_plan'"),
}


def test_a_malformed_config_makes_only_that_model_unavailable(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    make_double(repo / "good" / "1" / "model.onnx")
    (repo / "good" / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    for name, (text, _) in MALFORMED.items():
        make_scale(repo / name / "1" / "model.onnx", [3])
        (repo / name / "config.pbtxt").write_text(text)
    server = MLOSServer(make_settings(repo)).start_background()
    try:
        client = httpclient.InferenceServerClient(server.url)
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["good"]["state"] == "READY"
        for name, (_, reason) in MALFORMED.items():
            assert index[name]["state"] == "UNAVAILABLE", name
            assert reason in index[name]["reason"], (name, index[name]["reason"])
            with pytest.raises(InferenceServerException, match="not loaded|unavailable|"
                               "malformed|config|backend"):
                client.load_model(name)
        x = np.arange(4, dtype=np.float32)
        inp = httpclient.InferInput("x", [4], "FP32")
        inp.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("good", [inp]).as_numpy("y"), 2 * x)
    finally:
        server.stop_background()


def test_config_yaml_wins_over_config_pbtxt_key_by_key(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    for version in (1, 2):
        make_scale(repo / "both" / str(version) / "model.onnx", [3], factor=version)
    (repo / "both" / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nmax_batch_size: 2\n'
        "version_policy: { latest: { num_versions: 1 } }\n")
    (repo / "both" / "config.yaml").write_text("version_policy: all\n")
    config = pbtxt.read(repo / "both" / "config.pbtxt")
    assert config["max_batch_size"] == 2
    server = MLOSServer(make_settings(repo)).start_background()
    try:
        client = httpclient.InferenceServerClient(server.url)
        assert client.get_model_metadata("both")["versions"] == ["1", "2"]  # the yaml's
        inp = httpclient.InferInput("x", [3, 3], "FP32")
        inp.set_data_from_numpy(np.ones((3, 3), np.float32))
        with pytest.raises(InferenceServerException, match="max_batch_size 2"):  # the pbtxt's
            client.infer("both", [inp])
    finally:
        server.stop_background()


def test_a_load_override_is_layered_over_config_pbtxt(triton_server: MLOSServer) -> None:
    """An override is one more config source: its keys replace config.pbtxt's for that
    load, the rest (max_batch_size here) still applies, and it is checked by the same
    rules, with the same words, as the file (a 400 instead of an unavailable model)."""
    http = httpclient.InferenceServerClient(triton_server.url)
    http.load_model("specific", config=json.dumps({"version_policy": {"all": {}}}))
    assert sorted(http.get_model_metadata("specific")["versions"]) == ["1", "2", "3"]
    config = http.get_model_config("specific")
    assert (config["max_batch_size"], config["version_policy"]) == (4, {"all": {}})
    big = httpclient.InferInput("x", [5, 3], "FP32")
    big.set_data_from_numpy(np.zeros((5, 3), np.float32))
    with pytest.raises(InferenceServerException, match="max_batch_size 4"):
        http.infer("specific", [big])
    wrong = {"input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [5]}]}
    with pytest.raises(InferenceServerException,
                       match=r"gives the model shape \[-1, 5\] but the model's is \[-1, 3\]"):
        http.load_model("specific", config=json.dumps(wrong))
    assert sorted(http.get_model_metadata("specific")["versions"]) == ["1", "2", "3"]
    http.load_model("specific")  # the repository's config alone again
    assert sorted(http.get_model_metadata("specific")["versions"]) == ["1", "3"]
