# SPDX-License-Identifier: Apache-2.0
"""`mlos-core serve` with part of a request's work replaced by its first answer, so that
benchmarks/core_bench.py --grpc, running it beside the real service, can split the gap
between gRPC and its floor:

    core_grpc_transport.py --cache=answer serve ...   ModelInfer answers every call with
        its first response: the gRPC transport alone (grpc.aio on the event loop, the
        protobuf messages), without the key check, decoding, the data plane or the model
    core_grpc_transport.py --cache=model serve ...    the ONNX Runtime backend returns its
        first outputs again: everything but the ONNX Runtime call (which releases the GIL)
"""

from __future__ import annotations

import sys
from typing import Any

from mlos_core.backends import onnx_runtime
from mlos_core.cli import main
from mlos_core.protocols.grpc import server


def _answer_once() -> None:
    real = server.InferenceServicer.ModelInfer
    first: list[Any] = []

    async def cached(self: Any, request: Any, context: Any) -> Any:
        if not first:
            first.append(await real(self, request, context))
        return first[0]

    server.InferenceServicer.ModelInfer = cached  # type: ignore[method-assign]


def _model_once() -> None:
    real = onnx_runtime.OnnxRuntimeBackend.infer
    first: dict[int, Any] = {}

    def cached(self: Any, inputs: Any, output_names: Any = None) -> Any:
        if id(self) not in first:
            first[id(self)] = real(self, inputs, output_names)
        return first[id(self)]

    onnx_runtime.OnnxRuntimeBackend.infer = cached  # type: ignore[method-assign]


CACHES = {"answer": _answer_once, "model": _model_once}

if __name__ == "__main__":
    what = sys.argv.pop(1).removeprefix("--cache=") if sys.argv[1:2] and \
        sys.argv[1].startswith("--cache=") else "answer"
    CACHES[what]()
    sys.exit(main())
