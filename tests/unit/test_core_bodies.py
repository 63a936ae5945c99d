# SPDX-License-Identifier: Apache-2.0
"""Binary REST request bodies read straight into pooled buffers (userspace pool here; the
mlos-ml pool in tests/kernel/test_modes_guest.py): inputs are views of a pool buffer, and
the buffer returns to the pool after success, 4xx errors, 413 mid-stream and a client
that goes away mid-body, without waiting for a garbage collection."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from core_fixtures import *  # noqa: F403
from starlette.requests import Request
from tritonclient.utils import InferenceServerException

from mlos_core.kernel.pools import REQUEST, HostPool, PoolUnavailableError
from mlos_core.protocols.bodies import read_binary_body
from mlos_core.protocols.rest_kserve import parse_infer_request
from mlos_core.server import MLOSServer

MIB = 1 << 20


@pytest.fixture(autouse=True)
def no_gc() -> Iterator[None]:
    """Buffers must come back by reference counting alone: a garbage collection in the
    middle of a test would hide a reference cycle that holds one."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def pool_of(server: MLOSServer) -> HostPool:
    pool = server.plane.kernel.host_pool
    assert pool is not None and server.plane.kernel.request_pool is pool
    return pool


def body(n: int, *, name: str = "x", extra: int = 0,
         datatype: str = "FP32") -> tuple[bytes, dict[str, str], np.ndarray]:
    """A binary-extension request for the double model: header JSON + n FP32 values."""
    x = np.arange(n, dtype=np.float32)
    header = json.dumps({"inputs": [{"name": name, "shape": [n], "datatype": datatype,
                                     "parameters": {"binary_data_size": x.nbytes + extra}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
    raw = header.encode()
    return raw + x.tobytes(), {"Inference-Header-Content-Length": str(len(raw)),
                               "Content-Type": "application/octet-stream"}, x


def post(server: MLOSServer, data: Any, headers: dict[str, str]) -> requests.Response:
    return requests.post(f"http://{server.url}/v2/models/double/infer", data=data,
                         headers=headers, timeout=30)


def decode(resp: requests.Response) -> np.ndarray:
    split = int(resp.headers["Inference-Header-Content-Length"])
    return np.frombuffer(resp.content[split:], np.float32)


def test_tritonclient_binary_request_reuses_one_pool_buffer(server: MLOSServer) -> None:
    pool = pool_of(server)
    client = httpclient.InferenceServerClient(server.url)
    for _ in range(3):
        x = np.random.default_rng(1).random(MIB, dtype=np.float32)  # 4 MiB
        inp = httpclient.InferInput("x", [MIB], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = httpclient.InferRequestedOutput("y", binary_data=True)
        y = client.infer("double", [inp], outputs=[out]).as_numpy("y")
        assert np.array_equal(y, 2 * x)
        assert pool.in_use_bytes == 0  # back as soon as the response was sent
    figures = pool.purpose_stats(REQUEST)
    assert figures["acquired"] == 3 and figures["allocated"] == 1 and figures["reused"] == 2
    assert figures["bytes"] == 3 * 4 * MIB
    bad = httpclient.InferInput("x", [MIB], "INT32")  # the model takes FP32: a 400
    bad.set_data_from_numpy(np.zeros(MIB, np.int32), binary_data=True)
    with pytest.raises(InferenceServerException, match="expects FP32"):
        client.infer("double", [bad])
    assert pool.in_use_bytes == 0 and pool.purpose_stats(REQUEST)["reused"] == 3
    client.close()
    assert pool.idle_bytes == 4 * MIB  # one buffer of the 4 MiB class, waiting
    metrics = requests.get(f"http://{server.url}/metrics", timeout=5).text
    assert 'mlos_request_buffers_reused_total{pool="userspace"} 3' in metrics
    assert 'mlos_request_buffers_allocated_total{pool="userspace"} 1' in metrics
    assert f'mlos_request_buffers_held_bytes{{pool="userspace"}} {4 * MIB}' in metrics
    health = requests.get(f"http://{server.url}/health", timeout=5).json()
    pooled = health["features"]["memory_manager"]["request_buffers"]
    assert pooled["pooled"] and pooled["pool"] == "userspace" and pooled["reused"] == 3


def test_inputs_are_views_of_the_pool_buffer() -> None:
    pool = HostPool(64 * MIB)
    data, headers, x = body(256 << 10)
    split = int(headers["Inference-Header-Content-Length"])
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]

    async def read(content_length: bool) -> np.ndarray:
        messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
        messages.append({"type": "http.request", "body": b"", "more_body": False})

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        raw_headers = [(b"inference-header-content-length", str(split).encode())]
        if content_length:
            raw_headers.append((b"content-length", str(len(data)).encode()))
        request = Request({"type": "http", "method": "POST", "headers": raw_headers}, receive)
        read = await read_binary_body(request, pool, split, lambda: None)
        assert read.pooled and read.header == data[:split]
        parsed, _ = parse_infer_request(json.loads(read.header), read.binary, "double", None)
        array = parsed.inputs[0].data
        assert array is not None
        return array

    for content_length in (True, False):  # one buffer of the right class / grown chunked
        array = asyncio.run(read(content_length))
        assert np.array_equal(array, x) and not array.flags.owndata
        address = array.__array_interface__["data"][0]
        assert address % 4096 == 0  # the binary part starts a page-aligned pool buffer
        assert pool.in_use_bytes == 1 * MIB
        del array
        assert pool.in_use_bytes == 0
        again = pool.acquire(len(x) * 4, REQUEST)  # the very memory the tensor was in
        assert again.__array_interface__["data"][0] == address
        del again
    figures = pool.purpose_stats(REQUEST)
    # Chunked: grown 64 KiB -> 128 KiB -> ... -> 1 MiB, every outgrown buffer back at once.
    assert figures["allocated"] <= 6 and pool.in_use_bytes == 0
    pool.close()


@pytest.mark.parametrize("case", ["not-json", "bad-size", "unknown-input", "wrong-dtype",
                                  "no-model"])
def test_buffer_returns_after_4xx(server: MLOSServer, case: str) -> None:
    pool = pool_of(server)
    # wrong-dtype: rejected by the data plane on an inference thread
    data, headers, _ = body(MIB, extra=4 if case == "bad-size" else 0,
                            name="nope" if case == "unknown-input" else "x",
                            datatype="INT32" if case == "wrong-dtype" else "FP32")
    if case == "not-json":
        data = b"X" + data[1:]
    url = "nomodel" if case == "no-model" else "double"
    resp = requests.post(f"http://{server.url}/v2/models/{url}/infer", data=data,
                         headers=headers, timeout=30)
    assert resp.status_code == (404 if case == "no-model" else 400), resp.text[:300]
    assert pool.purpose_stats(REQUEST)["acquired"] == 1
    assert pool.in_use_bytes == 0, case
    resp = post(server, *body(MIB)[:2])  # and the next request reuses it
    assert resp.status_code == 200 and pool.purpose_stats(REQUEST)["reused"] == 1


def test_lying_header_lengths(server: MLOSServer) -> None:
    pool = pool_of(server)
    data, headers, _ = body(1024)
    for value, message in (("x", "not an integer"), ("-1", "negative"),
                           (str(len(data) + 1), "exceeds the body")):
        resp = post(server, data, {**headers, "Inference-Header-Content-Length": value})
        assert resp.status_code == 400 and message in resp.json()["error"], resp.text[:300]
        chunked = post(server, iter([data]),
                       {**headers, "Inference-Header-Content-Length": value})
        assert chunked.status_code == 400 and message in chunked.json()["error"]
    assert pool.in_use_bytes == 0
    # Fewer header bytes than claimed: the rest of the JSON is read as binary data.
    resp = post(server, data, {**headers, "Inference-Header-Content-Length": "10"})
    assert resp.status_code == 400 and pool.in_use_bytes == 0


def test_chunked_body_grows_in_the_pool(server: MLOSServer) -> None:
    pool = pool_of(server)
    data, headers, x = body(MIB)
    resp = post(server, (data[i:i + 300_000] for i in range(0, len(data), 300_000)), headers)
    assert resp.status_code == 200 and np.array_equal(decode(resp), 2 * x)
    assert pool.in_use_bytes == 0 and pool.purpose_stats(REQUEST)["acquired"] >= 2


def test_413_mid_stream(server_factory: Any) -> None:
    server = server_factory(max_request_bytes=2 * MIB)
    pool = pool_of(server)
    data, headers, _ = body(MIB)  # 4 MiB, chunked: the limit is met while reading
    resp = post(server, (data[i:i + MIB // 2] for i in range(0, len(data), MIB // 2)), headers)
    assert resp.status_code == 413 and "limit" in resp.json()["error"]
    assert pool.purpose_stats(REQUEST)["acquired"] >= 1 and pool.in_use_bytes == 0
    assert post(server, *body(1024)[:2]).status_code == 200


def test_client_gone_mid_body(server: MLOSServer) -> None:
    pool = pool_of(server)
    data, headers, _ = body(4 * MIB)  # 16 MiB announced, 1 MiB sent
    host, port = server.url.split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = (f"POST /v2/models/double/infer HTTP/1.1\r\nHost: {server.url}\r\n"
                f"Content-Length: {len(data)}\r\n"
                f"Inference-Header-Content-Length: "
                f"{headers['Inference-Header-Content-Length']}\r\n\r\n")
        sock.sendall(head.encode() + data[:MIB])
        deadline = time.monotonic() + 10
        while pool.in_use_bytes == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.in_use_bytes == 16 * MIB  # taken in the right class up front
    deadline = time.monotonic() + 10
    while pool.in_use_bytes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.in_use_bytes == 0
    assert post(server, *body(4 * MIB)[:2]).status_code == 200
    assert pool.purpose_stats(REQUEST)["reused"] == 1


def test_pool_too_small_falls_back_per_request(server_factory: Any) -> None:
    server = server_factory(tensor_pool_mb=1)
    data, headers, x = body(MIB)  # a 4 MiB binary part in a 1 MiB pool
    resp = post(server, data, headers)
    assert resp.status_code == 200 and np.array_equal(decode(resp), 2 * x)
    figures = server.plane.kernel.request_buffers()
    assert figures["fallbacks"] == 1 and figures["failures"] == 1
    assert post(server, *body(1024)[:2]).status_code == 200  # small ones still pooled
    assert server.plane.kernel.request_buffers()["acquired"] == 1


def test_no_pool_when_tensor_pool_mb_is_0(server_factory: Any) -> None:
    server = server_factory(tensor_pool_mb=0)
    data, headers, x = body(1024)
    resp = post(server, data, headers)
    assert resp.status_code == 200 and np.array_equal(decode(resp), 2 * x)
    health = requests.get(f"http://{server.url}/health", timeout=5).json()
    assert health["features"]["memory_manager"]["request_buffers"] == {
        "pooled": False, "reason": "tensor_pool_mb is 0"}


def test_slices_keep_their_buffer() -> None:
    """Views of views of a pool buffer keep it out of the free list (numpy collapses view
    chains, so a finalizer on the wrong array would free it under a live slice)."""
    pool = HostPool(MIB)
    part = pool.acquire(100_000)[10:20][2:]
    other = pool.acquire(100_000)
    assert pool.in_use_bytes == 2 * (128 << 10) and pool.reused == 0
    assert not np.shares_memory(part, other)
    del part, other
    assert pool.in_use_bytes == 0
    pool.close()


def test_host_pool_is_bounded_and_drops_idle_buffers() -> None:
    pool = HostPool(256 << 10, idle_s=3600)
    a, b = pool.acquire(100 << 10), pool.acquire(100 << 10)  # two 128 KiB buffers
    with pytest.raises(PoolUnavailableError, match="does not fit"):
        pool.acquire(1)
    assert pool.stats()["failures"] == 1
    del a
    c = pool.acquire(1 << 10)  # needs a 64 KiB class: the idle 128 KiB one is dropped
    assert pool.stats()["dropped"] == 1 and pool.in_use_bytes == 192 << 10
    del b, c
    assert pool.idle_bytes == 192 << 10
    pool.trim(time.monotonic() + 7200)  # idle for longer than idle_s
    assert pool.idle_bytes == 0 and pool.stats()["dropped"] == 3
    pool.close()
