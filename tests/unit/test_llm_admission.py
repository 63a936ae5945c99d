# SPDX-License-Identifier: Apache-2.0
"""Text generation under the one data plane's rules, as tensors are: the concurrency limit
(generation and tensor requests share it), the request timeout (504, and the llama.cpp
context is free at once), client disconnects, drain on shutdown, and `max_tokens: 0`
refused. The packaged gemma3-270m, the real openai client, httpx and raw sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from core_models import make_double
from llm_support import add_model, gemma_path, start_server, wait_until

pytestmark = pytest.mark.llm

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is the `llm` extra: scripts/setup.sh installs it"
)
MODEL = "gemma3-270m"
# max_tokens 900 for the tensor view: far more than the timeout lets it generate.
# One thread: on a shared, loaded CI machine two spinning llama.cpp threads can take
# seconds per token; one keeps the timings meaningful.
CONFIG = {"context_size": 1024, "threads": 1, "max_tokens": 900, "chat_format": "gemma"}
LONG = "Write a long story about a dragon."
TIMEOUT_S = 3.0


def _repo(tmp: Path) -> Path:
    repo = tmp / "models"
    add_model(repo, MODEL, gemma_path(), CONFIG)
    make_double(repo / "double" / "1" / "model.onnx")
    return repo


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    srv = start_server(_repo(tmp_path_factory.mktemp("admit")), max_concurrency=2,
                       request_timeout_s=TIMEOUT_S)
    yield srv
    srv.stop_background()


@pytest.fixture(scope="module")
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{server.url}/v1", api_key="unused",
                         max_retries=0, timeout=60)


def _wait(condition: Any, timeout: float = 10.0) -> None:
    wait_until(condition, timeout)


def _one_token_is_quick(client: openai.OpenAI) -> float:
    t0 = time.monotonic()
    got = client.completions.create(model=MODEL, prompt="Hello", max_tokens=1)
    assert got.usage is not None and got.usage.completion_tokens <= 1
    return time.monotonic() - t0


def test_timeout_is_504_and_frees_the_context_on_every_route(
    server: Any, client: openai.OpenAI
) -> None:
    backend = server.plane.backend(MODEL)
    base = f"http://{server.url}"
    attempts = {
        "openai": lambda: client.completions.create(model=MODEL, prompt=LONG, max_tokens=900),
        "mlos": lambda: httpx.post(f"{base}/models/{MODEL}/inference", timeout=60,
                                   json={"prompt": LONG, "max_tokens": 900}),
        "kserve": lambda: httpx.post(f"{base}/v2/models/{MODEL}/infer", timeout=60, json={
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1],
                        "data": [LONG]}]}),
    }
    for route, attempt in attempts.items():
        t0 = time.monotonic()
        try:
            answer = attempt()
            status = answer.status_code
        except openai.APIStatusError as exc:
            status = exc.status_code
        took = time.monotonic() - t0
        assert status == 504, route
        assert took < TIMEOUT_S + 2, (route, took)
        assert server.plane.in_flight == 0, route  # the slot is back at the deadline
        _wait(lambda: backend._queue.depth == 0, 2.0)  # the context within a token
        assert _one_token_is_quick(client) < 2.0, route


def test_generation_and_tensors_share_the_concurrency_limit(
    server: Any, client: openai.OpenAI
) -> None:
    base = f"http://{server.url}"
    streams = [client.completions.create(model=MODEL, prompt=LONG, max_tokens=900,
                                         stream=True) for _ in range(2)]
    try:
        # Both admitted (the response started): one generating, one queued for the
        # context. Everything below happens well within their 3 s timeout.
        assert server.plane.in_flight == 2
        with pytest.raises(openai.APIStatusError) as refused:
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
        assert refused.value.status_code == 503
        tensor = httpx.post(f"{base}/v2/models/double/infer", timeout=10, json={
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})
        assert tensor.status_code == 503 and tensor.headers["retry-after"]
        mlos = httpx.post(f"{base}/models/{MODEL}/inference", timeout=10,
                          json={"prompt": "Hi", "max_tokens": 1})
        assert mlos.status_code == 503
    finally:
        for s in streams:
            s.close()
    _wait(lambda: server.plane.in_flight == 0)
    assert _one_token_is_quick(client) < 2.0


def test_max_tokens_zero_is_refused(server: Any, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=0)
    assert "max_tokens" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, max_tokens=0,
                                       messages=[{"role": "user", "content": "Hi"}])
    assert "max_tokens" in str(err.value)
    answer = httpx.post(f"http://{server.url}/models/{MODEL}/inference",
                        json={"prompt": "Hi", "max_tokens": 0})
    assert answer.status_code == 400 and "max_tokens" in answer.json()["error"]


def test_disconnect_cancels_a_non_streaming_generation(
    server: Any, client: openai.OpenAI
) -> None:
    backend = server.plane.backend(MODEL)
    host, port = server.url.split(":")
    for path, body in ((f"/models/{MODEL}/inference", {"prompt": LONG, "max_tokens": 900}),
                       ("/v1/completions", {"model": MODEL, "prompt": LONG,
                                            "max_tokens": 900})):
        data = json.dumps(body).encode()
        sock = socket.create_connection((host, int(port)))
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
        _wait(lambda: backend._queue.depth == 1)
        time.sleep(0.3)  # generating
        sock.close()
        _wait(lambda: backend._queue.depth == 0, 2.0)
        # The decode thread frees the model's slot; the request's worker thread gives the
        # admission slot back as it sees the end, a moment later.
        _wait(lambda: server.plane.in_flight == 0, 2.0)
        assert _one_token_is_quick(client) < 2.0, path


def test_drain_waits_for_generation_and_refuses_new_work(tmp_path: Path) -> None:
    # Long enough to outlast the checks below on a fast machine (counting never meets
    # end-of-sequence), short enough for the drain bound on a slow one.
    srv = start_server(_repo(tmp_path), request_timeout_s=90, drain_timeout_s=90)
    base = f"http://{srv.url}"
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)
    texts: list[str] = []
    stream = client.completions.create(model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=200,
                                       stream=True, temperature=0)
    first = next(iter(stream))
    stopper = threading.Thread(target=srv.stop_background, args=(120,))
    stopper.start()
    try:
        _wait(lambda: srv.plane.draining)
        assert httpx.get(f"{base}/v2/health/ready").status_code == 503
        with pytest.raises(openai.APIStatusError) as refused:
            client.completions.create(model=MODEL, prompt="Hi", max_tokens=1)
        assert refused.value.status_code == 503
        tensor = httpx.post(f"{base}/v2/models/double/infer", json={
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]})
        assert tensor.status_code == 503
        # The generation admitted before the drain runs to its end.
        texts = [first.choices[0].text] + [c.choices[0].text for c in stream]
    finally:
        stopper.join(120)
    assert len("".join(texts).split(",")) > 20  # it ran to its end, not cut by the drain
    assert not stopper.is_alive()
