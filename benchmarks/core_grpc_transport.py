# SPDX-License-Identifier: Apache-2.0
"""`mlos-core serve` whose ModelInfer answers every call with the response of its first
one: the gRPC transport alone (grpc.aio on the event loop, the API key check, the
protobuf messages), without decoding, the data plane or the model. benchmarks/core_bench.py
--grpc runs it beside the real service, so the gap between gRPC and its floor can be
split into what the transport costs and what the per-request work costs."""

from __future__ import annotations

import sys
from typing import Any

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


if __name__ == "__main__":
    _answer_once()
    sys.exit(main())
