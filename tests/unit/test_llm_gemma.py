# SPDX-License-Identifier: Apache-2.0
"""gemma3-270m (the packaged real LLM) through a real MLOS Core server: completion text at
temperature 0 equals in-process llama-cpp-python's; chat through the configured gemma
format; a client that disconnects mid-stream frees the context at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from llm_support import add_model, gemma_path, start_server

pytestmark = pytest.mark.llm

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is the `llm` extra: scripts/setup.sh installs it"
)
SETTINGS = {"context_size": 1024, "threads": 2, "batch_size": 512}
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    repo = tmp_path_factory.mktemp("gemma") / "models"
    add_model(repo, "gemma3-270m", gemma_path(), {**SETTINGS, "chat_format": "gemma"})
    srv = start_server(repo)
    yield srv
    srv.stop_background()


@pytest.fixture(scope="module")
def client(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    llm = llama_cpp.Llama(
        str(gemma_path()), n_ctx=SETTINGS["context_size"], n_threads=2, n_threads_batch=2,
        n_batch=SETTINGS["batch_size"], verbose=False,
    )
    yield llm
    llm.close()


@pytest.mark.parametrize("prompt", [PROMPT, "def fibonacci(n):", "Once upon a time"])
def test_greedy_completion_equals_in_process(
    client: openai.OpenAI, reference: Any, prompt: str
) -> None:
    reference.reset()  # a fresh evaluation, as MLOS does without prompt_cache
    want = reference.create_completion(prompt, max_tokens=48, temperature=0)
    got = client.completions.create(model="gemma3-270m", prompt=prompt, max_tokens=48,
                                    temperature=0)
    assert got.choices[0].text == want["choices"][0]["text"]
    assert got.usage is not None
    assert got.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    assert got.usage.completion_tokens == want["usage"]["completion_tokens"]
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="gemma3-270m", prompt=prompt, max_tokens=48,
                                           temperature=0, stream=True)
    )
    assert streamed == want["choices"][0]["text"]


def test_real_model_writes_sense(client: openai.OpenAI) -> None:
    text = client.completions.create(model="gemma3-270m", prompt=PROMPT, max_tokens=16,
                                     temperature=0).choices[0].text
    assert "France" in text  # " the capital of the country of France. ..."


def test_chat_with_the_gemma_format(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="gemma3-270m",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0,
    )
    assert reply.choices[0].message.content  # not the empty answer of a wrong chat format
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_disconnect_mid_stream_frees_the_context(server: Any, client: openai.OpenAI) -> None:
    backend = server.plane.backend("gemma3-270m")
    metrics_url = f"http://{server.url}/metrics"

    def cancelled() -> float:
        for line in httpx.get(metrics_url).text.splitlines():
            if line.startswith("mlos_llm_requests_total") and 'outcome="cancelled"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = cancelled()
    body = {"model": "gemma3-270m", "prompt": "Write a long story.", "max_tokens": 900,
            "stream": True}
    with httpx.Client() as http, http.stream(
        "POST", f"http://{server.url}/v1/completions", json=body
    ) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        assert backend._queue.depth == 1  # generating (900 tokens take many seconds)
    t0 = time.monotonic()
    while backend._queue.depth and time.monotonic() - t0 < 5:
        time.sleep(0.005)
    freed_after = time.monotonic() - t0
    assert backend._queue.depth == 0
    assert freed_after < 1.0
    assert cancelled() == before + 1
    # The context is free: a new request starts at once.
    t0 = time.monotonic()
    client.completions.create(model="gemma3-270m", prompt=PROMPT, max_tokens=1)
    assert time.monotonic() - t0 < 2.0


def test_waiting_requests_are_served_in_arrival_order(client: openai.OpenAI) -> None:
    finished: list[int] = []

    def ask(i: int) -> None:
        client.completions.create(model="gemma3-270m", prompt=PROMPT, max_tokens=8,
                                  temperature=0)
        finished.append(i)

    threads = []
    for i in range(4):
        t = threading.Thread(target=ask, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(0.05)  # arrival order 0, 1, 2, 3
    for t in threads:
        t.join(120)
    assert finished == [0, 1, 2, 3]


def test_unload_mid_stream_ends_the_stream_cleanly(server: Any) -> None:
    # Last in this module: it unloads the model. Freeing a llama.cpp model under a running
    # generation would crash the server; the backend cancels and waits first.
    body = {"model": "gemma3-270m", "prompt": "Write a long story.", "max_tokens": 900,
            "stream": True}
    with httpx.Client(timeout=60) as http, http.stream(
        "POST", f"http://{server.url}/v1/completions", json=body
    ) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
        t0 = time.monotonic()
        unloaded = http.post(f"http://{server.url}/v2/repository/models/gemma3-270m/unload")
        assert unloaded.status_code == 200
        assert time.monotonic() - t0 < 5
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert httpx.get(f"http://{server.url}/health").json()["status"] == "ok"
    gone = httpx.post(f"http://{server.url}/v1/completions",
                      json={"model": "gemma3-270m", "prompt": "x"})
    assert gone.status_code == 503 and gone.json()["error"]["code"] == "model_not_ready"
