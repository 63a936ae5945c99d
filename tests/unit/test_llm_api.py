# SPDX-License-Identifier: Apache-2.0
"""The OpenAI-compatible API of a real MLOS Core server, driven by the real openai client,
over tiny GGUF models written with the `gguf` package (with and without a chat template)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from llm_support import CHATML_TEMPLATE, add_model, start_server, write_tiny_gguf

pytestmark = pytest.mark.llm

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is the `llm` extra: scripts/setup.sh installs it"
)
CTX = 256
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gguf")
    return {
        "chat": write_tiny_gguf(d / "chat.gguf", chat_template=CHATML_TEMPLATE),
        "plain": write_tiny_gguf(d / "plain.gguf", seed=1),
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path]) -> Iterator[Any]:
    repo = tmp_path_factory.mktemp("llm") / "models"
    common = {"context_size": CTX}
    add_model(repo, "tiny-chat", files["chat"], {**common, "embeddings": True})
    add_model(repo, "tiny", files["plain"], common)
    add_model(repo, "tiny-gemma", files["plain"], {**common, "chat_format": "gemma"})
    add_model(repo, "tiny-busy", files["plain"], {**common, "queue_size": 0})
    srv = start_server(repo)
    yield srv
    srv.stop_background()


@pytest.fixture(scope="module")
def client(server: Any) -> openai.OpenAI:
    # max_retries=0: the client would otherwise retry 503s and hide them.
    return openai.OpenAI(base_url=f"http://{server.url}/v1", api_key="unused", max_retries=0)


def in_process(path: Path, prompt: str, **kwargs: Any) -> dict[str, Any]:
    llm = llama_cpp.Llama(str(path), n_ctx=CTX, n_threads=2, n_batch=512, verbose=False)
    try:
        return llm.create_completion(prompt, **kwargs)  # type: ignore[no-any-return]
    finally:
        llm.close()


def test_models_lists_every_llm(client: openai.OpenAI) -> None:
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["tiny", "tiny-busy", "tiny-chat", "tiny-gemma"]
    assert client.models.retrieve("tiny").owned_by == "mlos"


def test_completion_equals_in_process_llama_cpp(
    client: openai.OpenAI, files: dict[str, Path]
) -> None:
    prompt = "the cat sat on the mat"
    got = client.completions.create(model="tiny", prompt=prompt, max_tokens=40, temperature=0)
    want = in_process(files["plain"], prompt, max_tokens=40, temperature=0)
    assert got.choices[0].text == want["choices"][0]["text"]
    assert got.choices[0].text.strip()
    assert got.choices[0].finish_reason == "length"
    assert got.usage is not None
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (
        want["usage"]["prompt_tokens"], 40,
    )


def test_streamed_completion_equals_the_plain_one_and_reports_usage(
    client: openai.OpenAI,
) -> None:
    args: dict[str, Any] = dict(model="tiny", prompt="hello world", max_tokens=30, temperature=0)
    whole = client.completions.create(**args).choices[0].text
    chunks = list(
        client.completions.create(**args, stream=True, stream_options={"include_usage": True})
    )
    assert len(chunks) > 3  # streamed token by token, not in one piece
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 30


def test_sse_framing_ends_with_done(server: Any) -> None:
    body = {"model": "tiny", "prompt": "the", "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"http://{server.url}/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_stop_sequence_cuts_the_text(client: openai.OpenAI) -> None:
    args: dict[str, Any] = dict(model="tiny", prompt="the sky", max_tokens=40, temperature=0)
    full = client.completions.create(**args).choices[0].text
    words = full.split()
    stop = words[len(words) // 2]
    cut = client.completions.create(**args, stop=[stop]).choices[0]
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"
    streamed = "".join(
        c.choices[0].text for c in client.completions.create(**args, stop=stop, stream=True)
    )
    assert streamed == cut.text  # a partial stop string is never streamed out


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    args: dict[str, Any] = dict(model="tiny", prompt="a", max_tokens=20, temperature=1.0)
    a = client.completions.create(**args, seed=7, top_p=0.9).choices[0].text
    b = client.completions.create(**args, seed=7, top_p=0.9).choices[0].text
    others = {client.completions.create(**args, seed=s).choices[0].text for s in (1, 2, 3)}
    assert a == b
    assert len(others) > 1


def test_chat_uses_the_gguf_template(client: openai.OpenAI, files: dict[str, Path]) -> None:
    got = client.chat.completions.create(
        model="tiny-chat", messages=CHAT, max_tokens=12, temperature=0  # type: ignore[arg-type]
    )
    prompt = (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nthe cat<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    want = in_process(files["chat"], prompt, max_tokens=12, temperature=0)
    assert got.choices[0].message.role == "assistant"
    assert got.choices[0].message.content == want["choices"][0]["text"]
    assert got.usage is not None and got.usage.prompt_tokens == want["usage"]["prompt_tokens"]


def test_chat_stream_with_a_configured_chat_format(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="tiny-gemma", messages=CHAT, max_tokens=10, temperature=0,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    whole = client.chat.completions.create(
        model="tiny-gemma", messages=CHAT, max_tokens=10, temperature=0  # type: ignore[arg-type]
    )
    assert text == whole.choices[0].message.content and text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10


def test_chat_without_template_names_the_setting(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="tiny", messages=CHAT)  # type: ignore[arg-type]
    assert err.value.status_code == 400
    assert "chat_format" in err.value.message and "chat_template" in err.value.message


@pytest.mark.parametrize(
    "call, status, param",
    [
        (lambda c: c.completions.create(model="nope", prompt="x"), 404, None),
        (lambda c: c.chat.completions.create(
            model="tiny-chat", messages=[{"role": "robot", "content": "x"}]), 400, None),
        (lambda c: c.completions.create(model="tiny", prompt="x", max_tokens=-1), 400,
         "max_tokens"),
        (lambda c: c.chat.completions.create(
            model="tiny-chat", messages=CHAT, max_tokens=-5), 400, "max_tokens"),
        (lambda c: c.completions.create(model="tiny", prompt="the cat " * 200), 400, "prompt"),
        (lambda c: c.completions.create(model="tiny", prompt="x", max_tokens=CTX * 2), 400,
         "max_tokens"),
        (lambda c: c.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "the cat " * 200}]), 400,
         "messages"),
        (lambda c: c.completions.create(model="tiny", prompt="x", temperature=5), 400,
         "temperature"),
        (lambda c: c.embeddings.create(model="tiny", input="x"), 400, None),
    ],
)
def test_bad_requests_get_openai_errors(
    client: openai.OpenAI, call: Any, status: int, param: str | None
) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        call(client)
    assert err.value.status_code == status
    body = err.value.body
    assert isinstance(body, dict) and body["message"] and body["type"]
    assert body.get("param") == param


def test_oversized_prompt_is_context_length_exceeded(server: Any) -> None:
    r = httpx.post(
        f"http://{server.url}/v1/completions",
        json={"model": "tiny", "prompt": "the cat " * 200},
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    bad = httpx.post(f"http://{server.url}/v1/completions", content=b"{not json")
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]["message"]


def test_embeddings(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="tiny-chat", input=["hello world", "the cat"])
    assert [d.index for d in result.data] == [0, 1]
    vectors = np.array([d.embedding for d in result.data])
    assert vectors.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-4)
    assert not np.allclose(vectors[0], vectors[1])
    floats = client.embeddings.create(
        model="tiny-chat", input="hello world", encoding_format="float"
    )
    np.testing.assert_allclose(floats.data[0].embedding, vectors[0], rtol=1e-5)
    assert result.usage.prompt_tokens > 0


def test_full_queue_answers_503(client: openai.OpenAI, server: Any) -> None:
    backend = server.plane.backend("tiny-busy")
    hold = backend._queue.admit()  # the context is taken, and queue_size is 0
    assert backend._queue.acquire(hold)
    try:
        with pytest.raises(openai.APIStatusError) as err:
            client.completions.create(model="tiny-busy", prompt="x", max_tokens=2)
        assert err.value.status_code == 503
        assert "busy" in err.value.message
    finally:
        backend._queue.release(hold)
    assert client.completions.create(model="tiny-busy", prompt="x", max_tokens=2).choices


def test_requests_queue_fairly_and_all_finish(client: openai.OpenAI) -> None:
    results: list[str] = []

    def ask(i: int) -> None:
        r = client.completions.create(model="tiny", prompt=f"the {i}", max_tokens=20,
                                      temperature=0)
        results.append(r.choices[0].text)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 6 and all(results)


def test_mlos_inference_route_with_a_prompt(client: openai.OpenAI, server: Any) -> None:
    r = httpx.post(
        f"http://{server.url}/models/tiny/inference",
        json={"prompt": "the cat sat", "max_tokens": 15},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    openai_text = client.completions.create(
        model="tiny", prompt="the cat sat", max_tokens=15, temperature=0
    ).choices[0].text
    assert body["text"] == openai_text
    assert body["usage"]["completion_tokens"] == 15 and body["finish_reason"] == "length"
    bad = httpx.post(f"http://{server.url}/models/tiny/inference",
                     json={"prompt": "x", "max_tokens": -1})
    assert bad.status_code == 400


def test_kserve_tensor_view(server: Any) -> None:
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(server.url)
    assert c.get_model_metadata("tiny")["platform"] == "llama_cpp"
    inp = httpclient.InferInput("text_input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"the cat sat"], dtype=object))
    out = c.infer("tiny", [inp]).as_numpy("text_output")
    assert out.shape == (1,) and out[0].decode().strip()


def test_metrics_count_tokens_and_ttft(client: openai.OpenAI, server: Any) -> None:
    client.completions.create(model="tiny-chat", prompt="the", max_tokens=7)
    text = httpx.get(f"http://{server.url}/metrics").text
    lines = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1])
             for ln in text.splitlines() if ln.startswith("mlos_llm_")}
    assert lines['mlos_llm_generated_tokens_total{model="tiny-chat"}'] >= 7
    assert lines['mlos_llm_prompt_tokens_total{model="tiny-chat"}'] >= 2
    assert lines['mlos_llm_time_to_first_token_seconds_count{model="tiny-chat"}'] >= 1
    assert 'mlos_inference_requests_total' in text  # the core metrics are still there


def test_client_disconnect_frees_the_context(server: Any) -> None:
    # The tiny model is too fast to catch mid-stream, so hold the stream open by reading
    # slowly: the server notices the disconnect and cancels generation.
    backend = server.plane.backend("tiny")
    body = {"model": "tiny", "prompt": "the", "max_tokens": CTX - 10, "stream": True}
    with httpx.Client() as http, http.stream(
        "POST", f"http://{server.url}/v1/completions", json=body
    ) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 5
    while backend._queue.depth and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend._queue.depth == 0


def test_api_key_applies_to_the_openai_routes(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    repo = tmp_path / "models"
    add_model(repo, "tiny", files["plain"], {"context_size": CTX})
    srv = start_server(repo, api_key="s3cret")
    try:
        url = f"http://{srv.url}/v1"
        good = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        assert good.completions.create(model="tiny", prompt="x", max_tokens=3).choices
        bad = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(model="tiny", prompt="x", max_tokens=3)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    finally:
        srv.stop_background()


@pytest.mark.parametrize("prompt, message", [
    ([10**6], "not in this model's vocabulary"),
    ([-1], "not in this model's vocabulary"),
    ([], "the prompt is empty"),
])
def test_prompt_token_ids_outside_the_vocabulary_are_400(
        server: Any, prompt: list[int], message: str) -> None:
    r = httpx.post(f"http://{server.url}/v1/completions",
                   json={"model": "tiny", "prompt": prompt, "max_tokens": 2}, timeout=30)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]["message"]
    # The model still answers.
    ok = httpx.post(f"http://{server.url}/v1/completions",
                    json={"model": "tiny", "prompt": [1, 2], "max_tokens": 2}, timeout=30)
    assert ok.status_code == 200, ok.text
