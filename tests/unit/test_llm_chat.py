# SPDX-License-Identifier: Apache-2.0
"""Chat prompt building, the fair context queue, request parsing and LLM metrics: the
parts of the LLM stack that need no model."""

from __future__ import annotations

import threading
import time

import pytest
from llm_support import CHATML_TEMPLATE, STRICT_TEMPLATE

from mlos_core.backends.capabilities import ContextQueue
from mlos_core.backends.llama_cpp import LlamaSettings
from mlos_core.backends.llama_cpp_chat import CHAT_FORMATS, ChatRenderer
from mlos_core.dataplane.llm_metrics import LLMMetrics
from mlos_core.errors import (
    InvalidInputError,
    ModelLoadError,
    ModelNotReadyError,
    ServerBusyError,
    UnsupportedError,
)
from mlos_core.protocols.openai import error_body
from mlos_core.protocols.openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    InvalidParamError,
    parse,
)

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {
        "role": "user",
        "content": [{"type": "text", "text": "Capital of "}, {"type": "text", "text": "France?"}],
    },
]


def renderer(config: dict | None = None, template: str | None = None) -> ChatRenderer:
    metadata = {"tokenizer.chat_template": template} if template else {}
    return ChatRenderer(config or {}, metadata, bos_token="<bos>", eos_token="<eos>")


def test_gguf_template_renders_every_turn_and_the_generation_prompt() -> None:
    prompt = renderer(template=CHATML_TEMPLATE).render(CHAT)
    assert prompt.text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
        "<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert not prompt.has_bos


def test_gemma_format_folds_the_system_message_into_the_first_user_turn() -> None:
    prompt = renderer({"chat_format": "gemma"}).render(CHAT)
    assert prompt.text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nCapital of France?<end_of_turn>\n<start_of_turn>model\n"
    )
    assert prompt.has_bos
    assert prompt.stop == ("<end_of_turn>",)


def test_config_chat_format_wins_over_the_gguf_template() -> None:
    r = renderer({"chat_format": "chatml"}, template="{{ raise_exception('unused') }}")
    assert r.source == "chat_format chatml"
    assert r.render([{"role": "user", "content": "x"}]).text.endswith("<|im_start|>assistant\n")


def test_no_template_is_a_clear_error_naming_the_setting() -> None:
    with pytest.raises(UnsupportedError, match="chat_format") as err:
        renderer().render(CHAT)
    assert "tokenizer.chat_template" in str(err.value)
    assert error_body(err.value)[0] == 400


def test_unknown_chat_format_fails_the_load() -> None:
    with pytest.raises(ModelLoadError, match="known: chatml, gemma, llama-3"):
        renderer({"chat_format": "vicuna-7"})


@pytest.mark.parametrize(
    "messages, message",
    [
        ([{"role": "wizard", "content": "x"}], "messages\\[0\\].role is 'wizard'"),
        ([{"role": "system", "content": "x"}], "at least one message with role 'user'"),
        ([], "at least one message"),
        ([{"role": "user", "content": [{"type": "image_url"}]}], "only text parts"),
    ],
)
def test_wrong_roles_and_content_are_rejected(messages: list, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        renderer(template=CHATML_TEMPLATE).render(messages)


def test_template_raise_exception_becomes_a_bad_request() -> None:
    with pytest.raises(InvalidInputError, match="System role not supported"):
        renderer(template=STRICT_TEMPLATE).render(CHAT)


def test_broken_gguf_template_refuses_chat_only() -> None:
    r = renderer(template="{% for %}")
    assert not r.available
    with pytest.raises(UnsupportedError, match="does not compile"):
        r.render(CHAT)


def test_every_builtin_format_renders() -> None:
    for name in CHAT_FORMATS:
        text = renderer({"chat_format": name}).render(CHAT).text
        assert "Capital of France?" in text and "Be brief." in text


def test_queue_is_fifo_bounded_and_cancellable() -> None:
    queue = ContextQueue(max_waiting=2)
    first = queue.admit()
    assert queue.acquire(first)
    second, third = queue.admit(), queue.admit()
    with pytest.raises(ServerBusyError, match="queue_size 2"):
        queue.admit()
    order: list[str] = []

    def wait(ticket, name: str) -> None:
        if queue.acquire(ticket):
            order.append(name)
            queue.release(ticket)

    threads = [
        threading.Thread(target=wait, args=(t, n))
        for t, n in ((third, "third"), (second, "second"))
    ]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert order == []  # the context is still held by the first request
    queue.release(first)
    for t in threads:
        t.join(5)
    assert order == ["second", "third"]  # admission order, not thread start order

    holder, waiter = queue.admit(), queue.admit()
    assert queue.acquire(holder)
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(queue.acquire(waiter)))
    t.start()
    waiter.cancelled.set()
    queue.wake()
    t.join(5)
    assert got == [False] and queue.depth == 1
    queue.release(holder)
    assert queue.depth == 0


def test_llama_settings_take_model_config_over_service_defaults() -> None:
    s = LlamaSettings.from_config(
        {"context_size": 1024, "embeddings": "true"}, {"context_size": 4096, "threads": 1}
    )
    assert (s.context_size, s.threads, s.embeddings) == (1024, 1, True)
    # Thread counts are bounded by the machine's CPUs (backends.base.thread_count).
    with pytest.raises(ModelLoadError, match="threads: 300 is not an integer from 0 to"):
        LlamaSettings.from_config({"threads": 300})
    with pytest.raises(ModelLoadError, match="context_size must be >= 0"):
        LlamaSettings.from_config({"context_size": -1})
    with pytest.raises(ModelLoadError, match="bad llama.cpp setting"):
        LlamaSettings.from_config({"threads": "many"})


def test_request_parsing_names_the_bad_field() -> None:
    with pytest.raises(InvalidParamError) as err:
        parse(CompletionRequest, {"model": "m", "prompt": "x", "max_tokens": -1})
    assert err.value.param == "max_tokens"
    assert error_body(err.value) == (
        400,
        {
            "error": {
                "message": "'max_tokens': max_tokens must be >= 0",
                "type": "invalid_request_error",
                "param": "max_tokens",
                "code": None,
            }
        },
    )
    with pytest.raises(InvalidParamError, match="temperature"):
        parse(
            ChatCompletionRequest,
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
        )
    with pytest.raises(InvalidInputError, match="JSON object"):
        parse(CompletionRequest, ["not", "an", "object"])
    req = parse(
        CompletionRequest,
        {
            "model": "m",
            "prompt": ["one"],
            "stop": "\n",
            "seed": 3,
            "stream_options": {"include_usage": True},
            "foo": 1,
        },
    )
    assert req.single_prompt() == "one" and req.include_usage
    assert req.params(16, ("<end>",)).stop == ("\n", "<end>")
    chat = parse(
        ChatCompletionRequest,
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "max_completion_tokens": 5,
            "max_tokens": 9,
        },
    )
    assert chat.completion_limit == 5
    with pytest.raises(InvalidInputError, match="token id arrays"):
        parse(EmbeddingRequest, {"model": "m", "input": [1, 2]}).texts()


def test_metrics_render_counters_and_a_ttft_histogram() -> None:
    m = LLMMetrics()
    m.record("gemma", "chat", "stop", 10, 5, 0.02)
    m.record("gemma", "completions", "length", 3, 16, 0.3)
    text = m.render()
    assert 'mlos_llm_prompt_tokens_total{model="gemma"} 13' in text
    assert 'mlos_llm_generated_tokens_total{model="gemma"} 21' in text
    assert 'mlos_llm_time_to_first_token_seconds_bucket{model="gemma",le="0.025"} 1' in text
    assert 'mlos_llm_time_to_first_token_seconds_bucket{model="gemma",le="+Inf"} 2' in text
    assert 'mlos_llm_requests_total{model="gemma",endpoint="chat",outcome="stop"} 1' in text


def test_close_empties_the_queue_before_unload() -> None:
    queue = ContextQueue(max_waiting=4)
    running, waiting = queue.admit(), queue.admit()
    assert queue.acquire(running)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(queue.acquire(waiting)))
    waiter.start()

    def finish_running() -> None:  # the generation loop sees the cancel and releases
        while not running.cancelled.is_set():
            time.sleep(0.01)
        queue.release(running)

    worker = threading.Thread(target=finish_running)
    worker.start()
    assert queue.close(timeout=5)
    waiter.join(5)
    worker.join(5)
    assert got == [False] and queue.depth == 0
    assert queue.close(timeout=0)  # nothing left: returns at once
    with pytest.raises(ModelNotReadyError, match="unloaded"):
        queue.admit()
