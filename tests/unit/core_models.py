# SPDX-License-Identifier: Apache-2.0
"""Real tiny ONNX models for the MLOS Core tests and benchmarks (made with onnx.helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 13)]


def _save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def mlp_weights(seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((64, 256), dtype=np.float32) * 0.1
    b1 = rng.standard_normal(256, dtype=np.float32) * 0.1
    w2 = rng.standard_normal((256, 10), dtype=np.float32) * 0.1
    b2 = rng.standard_normal(10, dtype=np.float32) * 0.1
    return w1, b1, w2, b2


def mlp_reference(x: np.ndarray, seed: int = 0) -> np.ndarray:
    w1, b1, w2, b2 = mlp_weights(seed)
    result: np.ndarray = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    return result


def make_mlp(path: Path, seed: int = 0) -> Path:
    """64 -> 256 (ReLU) -> 10; input "input" FP32 [-1, 64], output "output" FP32 [-1, 10]."""
    w1, b1, w2, b2 = mlp_weights(seed)
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("Gemm", ["input", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def make_wide_mlp(path: Path, width: int = 1024, seed: int = 0) -> Path:
    """64 -> width -> width (ReLU each) -> 10, "input" FP32 [-1, 64] -> "output" [-1, 10]:
    a model whose compute, not the transport, dominates a request (benchmarks)."""
    rng = np.random.default_rng(seed)
    sizes = [(64, width), (width, width), (width, 10)]
    inits, nodes, last = [], [], "input"
    for i, (rows, cols) in enumerate(sizes):
        w = rng.standard_normal((rows, cols), dtype=np.float32) * 0.05
        b = rng.standard_normal(cols, dtype=np.float32) * 0.05
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "output" if i == len(sizes) - 1 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [last, f"w{i}", f"b{i}"], [out]))
        if out != "output":
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            last = f"r{i}"
    graph = helper.make_graph(
        nodes, "wide_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def make_double(path: Path) -> Path:
    """y = 2x on a 1-D FP32 tensor of any length ("x" -> "y")."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])], "double",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
        [two],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def make_add_int(path: Path) -> Path:
    """Two INT64 inputs a, b [2] -> sum "s" INT64 [2]: multi-input and integer types."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"])], "add",
        [helper.make_tensor_value_info("a", TensorProto.INT64, [2]),
         helper.make_tensor_value_info("b", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def make_repository(root: Path) -> Path:
    make_mlp(root / "mlp" / "1" / "model.onnx")
    make_double(root / "double" / "1" / "model.onnx")
    make_add_int(root / "add" / "1" / "model.onnx")
    return root


def make_identity(path: Path, elem_type: int, name: str = "identity") -> Path:
    """Identity on a 1-D tensor of `elem_type` (TensorProto.STRING, INT32, UINT8...): input
    "x" -> output "y", any length; shows exactly what the service hands the model."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], name,
        [helper.make_tensor_value_info("x", elem_type, ["n"])],
        [helper.make_tensor_value_info("y", elem_type, ["n"])],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def make_simple(path: Path) -> Path:
    """Triton's example `simple`: INT32 INPUT0, INPUT1 [-1, 16] -> OUTPUT0 = INPUT0 + INPUT1,
    OUTPUT1 = INPUT0 - INPUT1 (what Triton's example client programs run against)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])], "simple",
        [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16])
         for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16])
         for n in ("OUTPUT0", "OUTPUT1")],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def make_scale(path: Path, inner: list[int | str], factor: float = 2.0) -> Path:
    """y = factor * x on FP32 ["batch", *inner] ("x" -> "y"): a batchable model whose
    non-batch dimensions are fixed (ints) or free (names)."""
    k = numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")
    shape: list[int | str] = ["batch", *inner]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])], "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [k],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def make_token_model(path: Path) -> Path:
    """A token-id model shaped like an exported transformer: INT64 input_ids and
    attention_mask [batch, sequence] -> FP32 logits [batch, sequence] = ids * mask."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
         helper.make_node("Cast", ["masked"], ["logits"], to=TensorProto.FLOAT)], "tokens",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
         for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence"])],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)


def make_lookup(path: Path, size: int = 10) -> Path:
    """y = table[x] (Gather) on INT64 x ["batch", 1] -> FP32 y ["batch", 1], table[i] =
    10 i: an index outside [-size, size) is a value ONNX Runtime itself rejects."""
    table = numpy_helper.from_array(np.arange(size, dtype=np.float32) * 10, "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "x"], ["y"], axis=0)], "lookup",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [table],
    )
    return _save(helper.make_model(graph, opset_imports=OPSET), path)
