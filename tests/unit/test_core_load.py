# SPDX-License-Identifier: Apache-2.0
"""Load: 10,240 requests at concurrency 32 through the real tritonclient (REST JSON, REST
binary, gRPC), each with its own data; zero errors and zero mismatched responses."""

from __future__ import annotations

import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from core_fixtures import *  # noqa: F403  (the fixtures)

from mlos_core.server import MLOSServer

CONCURRENCY = 32
PER_WORKER = 320  # 32 x 320 = 10,240 requests


def test_load_concurrency_32(server: MLOSServer) -> None:
    errors: list[str] = []
    mismatches: list[str] = []
    done = [0] * CONCURRENCY
    start = threading.Barrier(CONCURRENCY)

    def worker(index: int) -> None:
        use_grpc = index % 2 == 1
        mod = grpcclient if use_grpc else httpclient
        url = f"127.0.0.1:{server.grpc_port}" if use_grpc else server.url
        client = mod.InferenceServerClient(url)
        binary = index % 4 != 0
        start.wait()
        for i in range(PER_WORKER):
            x = np.arange(8, dtype=np.float32) + np.float32(index * 100000 + i)
            inp = mod.InferInput("x", [8], "FP32")
            if use_grpc:
                inp.set_data_from_numpy(x)
                outputs = [grpcclient.InferRequestedOutput("y")]
            else:
                inp.set_data_from_numpy(x, binary_data=binary)
                outputs = [httpclient.InferRequestedOutput("y", binary_data=binary)]
            request_id = f"{index}-{i}"
            try:
                result = client.infer("double", [inp], outputs=outputs, request_id=request_id)
            except Exception as exc:  # any failure is counted, never hidden
                errors.append(f"{request_id}: {exc}")
                continue
            response = result.get_response()
            got_id = response.id if use_grpc else response.get("id")
            if got_id != request_id or not np.array_equal(result.as_numpy("y"), 2 * x):
                mismatches.append(request_id)
            done[index] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CONCURRENCY)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    total = sum(done)
    print(f"load: {total} requests in {elapsed:.1f}s ({total / elapsed:.0f}/s)")
    assert errors == []
    assert mismatches == []
    assert total == CONCURRENCY * PER_WORKER
