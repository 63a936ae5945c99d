# SPDX-License-Identifier: Apache-2.0
"""The heavy-compute model the suite registers: same bytes each time, compute-bound."""

from __future__ import annotations

import numpy as np
import pytest

from mlos_build.report import heavy

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402


def test_the_model_is_deterministic_and_its_flops_come_from_its_graph() -> None:
    data = heavy.model_bytes()
    assert data == heavy.model_bytes()
    model = onnx.load_from_string(data)
    weights = {w.name: numpy_helper.to_array(w) for w in model.graph.initializer}
    side = heavy.INPUT_SHAPE[2] * heavy.INPUT_SHAPE[3]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    # 3x3, stride 1, padded: every output pixel costs one multiply-add per weight.
    macs = sum(side * weights[n.input[1]].size for n in convs)
    assert heavy.flops() == 2 * macs
    # Compute dominates: thousands of FLOPs per byte a request carries.
    request_bytes = int(np.prod(heavy.INPUT_SHAPE)) * 4
    assert heavy.flops() / request_bytes > 1000


def test_one_request_runs_on_one_core() -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(heavy.model_bytes(), options,
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(heavy.INPUT_SHAPE).astype(np.float32)
    (y,) = session.run(None, {"input": x})
    assert y.shape == (1, heavy.CHANNELS) and np.isfinite(y).all() and y.std() > 0
    # How long it takes is measured in the guest (builder/report/heavy.py), not here.
