# SPDX-License-Identifier: Apache-2.0
"""The OpenAI-compatible API: /v1/models, /v1/completions, /v1/chat/completions (JSON or
SSE streaming ending with `data: [DONE]`), /v1/embeddings.

The router is a function of a small interface (`LLMModels`: find a model by name, list
them), so it does not care how the registry stores models. Route handlers only translate:
parse the body, ask the model for a stream, frame its chunks. Generation runs in one
worker thread per admitted request; when the client disconnects the stream is cancelled,
which frees the model's context after the token being decoded.

Errors use OpenAI's body: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..backends.capabilities import Embedder, GenerationParams, TextGenerator, TextStream
from ..errors import (
    InvalidInputError,
    MLOSError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServerBusyError,
    UnauthorizedError,
    UnsupportedError,
)
from .openai_metrics import LLMMetrics
from .openai_schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    InvalidParamError,
    MLOSTextRequest,
    parse,
)


@dataclass(frozen=True)
class ModelCard:
    id: str
    created: int = 0
    owned_by: str = "mlos"


class LLMModels(Protocol):
    """What the OpenAI router needs from the service."""

    def text_models(self) -> list[ModelCard]:
        """Loaded models that generate text (or embed)."""
        ...

    def text_model(self, name: str) -> TextGenerator:
        """Raises ModelNotFoundError, ModelNotReadyError or UnsupportedError."""
        ...

    def embedding_model(self, name: str) -> Embedder:
        """Raises ModelNotFoundError, ModelNotReadyError or UnsupportedError."""
        ...


class StaticModels:
    """An LLMModels over a fixed name -> backend mapping (tools, benchmarks, tests)."""

    def __init__(self, models: dict[str, Any]) -> None:
        self.models = models
        self.created = int(time.time())

    def text_models(self) -> list[ModelCard]:
        return [ModelCard(name, self.created) for name in self.models]

    def _get(self, name: str) -> Any:
        if name not in self.models:
            raise ModelNotFoundError(
                f"The model '{name}' does not exist; GET /v1/models lists the served ones"
            )
        return self.models[name]

    def text_model(self, name: str) -> TextGenerator:
        model = self._get(name)
        if not isinstance(model, TextGenerator):
            raise UnsupportedError(f"model '{name}' does not generate text")
        return model

    def embedding_model(self, name: str) -> Embedder:
        model = self._get(name)
        if not isinstance(model, Embedder):
            raise UnsupportedError(f"model '{name}' does not compute embeddings")
        return model


# ---- errors -------------------------------------------------------------------------------
_STATUS: list[tuple[type[MLOSError], int, str, str | None]] = [
    (ModelNotFoundError, 404, "invalid_request_error", "model_not_found"),
    (InvalidInputError, 400, "invalid_request_error", None),
    (UnsupportedError, 400, "invalid_request_error", "unsupported"),
    (PayloadTooLargeError, 413, "invalid_request_error", None),
    (UnauthorizedError, 401, "invalid_request_error", "invalid_api_key"),
    (ServerBusyError, 503, "server_error", "server_busy"),
    (ModelNotReadyError, 503, "server_error", "model_not_ready"),
    (RequestTimeoutError, 504, "server_error", "timeout"),
]


def error_body(exc: MLOSError) -> tuple[int, dict[str, Any]]:
    status, kind, code = 500, "server_error", None
    for cls, s, k, c in _STATUS:
        if isinstance(exc, cls):
            status, kind, code = s, k, c
            break
    param = getattr(exc, "param", None)
    code = getattr(exc, "code", None) or code
    return status, {"error": {"message": str(exc), "type": kind, "param": param, "code": code}}


def error_response(exc: MLOSError) -> JSONResponse:
    status, body = error_body(exc)
    return JSONResponse(body, status_code=status)


# ---- streaming ----------------------------------------------------------------------------
_END = object()
#: Where a generation's worker thread runs: a context manager (the service's is
#: KernelModes.compute_thread, which registers it with the mlos_ml scheduler) that yields
#: a function to call once the first chunk is out.
ThreadScope = Callable[[], AbstractContextManager[Callable[[], Any] | None]]


def _no_scope() -> AbstractContextManager[Callable[[], Any] | None]:
    return contextlib.nullcontext(None)


class Pump:
    """Runs a TextStream in a worker thread from the moment of admission, so its queue slot
    is always given back, even if the response never starts; `chunks()` yields the text
    here. A client disconnect, or leaving `chunks()` early, cancels the stream, which frees
    the model's context after the token being decoded. `on_done` runs in the worker
    thread once the stream has ended (its result is final then)."""

    def __init__(
        self,
        stream: TextStream,
        request: Request | None = None,
        on_done: Callable[[], None] | None = None,
        thread_scope: ThreadScope | None = None,
    ) -> None:
        self.stream = stream
        loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(self._queue.put_nowait, item)

        def run() -> None:
            try:
                scope = thread_scope() if thread_scope is not None else _no_scope()
                with scope as first_step_done:
                    for chunk in stream:
                        if first_step_done is not None:
                            # The backend's native threads for this thread exist now.
                            first_step_done()
                            first_step_done = None
                        put(chunk)
            except BaseException as exc:  # handed to the event loop, raised there
                put(exc)
            finally:
                if on_done is not None:
                    on_done()
                put(_END)

        self._watcher = (
            asyncio.ensure_future(_cancel_on_disconnect(request, stream)) if request else None
        )
        threading.Thread(target=run, name="mlos-llm-generate", daemon=True).start()

    async def chunks(self) -> AsyncIterator[str]:
        try:
            while True:
                item = await self._queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.stream.cancel()
            if self._watcher is not None:
                self._watcher.cancel()


async def _cancel_on_disconnect(request: Request, stream: TextStream) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            stream.cancel()
            return


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _usage(stream: TextStream) -> dict[str, int]:
    r = stream.result
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
    }


# ---- the router ---------------------------------------------------------------------------
async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"the request body is not valid JSON: {exc}") from exc


def _check_context(
    gen: TextGenerator, tokens: list[int], max_tokens: int | None, prompt_param: str
) -> None:
    n_ctx = gen.context_length
    too_long = len(tokens) >= n_ctx
    if too_long or (max_tokens and len(tokens) + max_tokens > n_ctx):
        wanted = len(tokens) + (max_tokens or 0)
        raise InvalidParamError(
            f"This model's maximum context length is {n_ctx} tokens. However, you requested "
            f"{wanted} tokens ({len(tokens)} in the prompt, {max_tokens or 0} for the "
            "completion). Please reduce the prompt or max_tokens.",
            param=prompt_param if too_long else "max_tokens",
            code="context_length_exceeded",
        )


class _Call:
    """One generation request in flight: its stream, clock and metrics."""

    def __init__(
        self, metrics: LLMMetrics, model: str, endpoint: str, stream: TextStream, t0: float,
        compute_thread: Callable[[str], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.metrics, self.model, self.endpoint = metrics, model, endpoint
        self.stream, self.t0 = stream, t0
        self.thread_scope: ThreadScope | None = (
            None if compute_thread is None else lambda: compute_thread(model))

    def finish(self) -> None:
        r = self.stream.result
        ttft = r.first_token_at - self.t0 if r.first_token_at is not None else None
        self.metrics.record(
            self.model,
            self.endpoint,
            r.finish_reason or "error",
            r.prompt_tokens,
            r.completion_tokens,
            ttft,
        )


async def start_text(
    models: LLMModels,
    metrics: LLMMetrics,
    model: str,
    endpoint: str,
    prompt: str | list[int],
    params: GenerationParams,
    t0: float,
) -> _Call:
    """Shared by every text route (OpenAI and the upstream MLOS inference route): resolve the
    model, tokenize, check the context, admit to the queue."""
    gen = models.text_model(model)
    tokens = prompt if isinstance(prompt, list) else gen.tokenize(prompt)
    _check_context(gen, tokens, params.max_tokens, "messages" if endpoint == "chat" else "prompt")
    return _Call(metrics, model, endpoint, gen.start(tokens, params), t0,
                 getattr(models, "compute_thread", None))


async def complete_text(call: _Call, request: Request | None = None) -> str:
    """Run a call to the end and return its text."""
    pump = Pump(call.stream, request, call.finish, call.thread_scope)
    return "".join([chunk async for chunk in pump.chunks()])


def make_openai_router(models: LLMModels, metrics: LLMMetrics) -> APIRouter:
    router = APIRouter(tags=["openai"])

    def guard(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except MLOSError as exc:
                return error_response(exc)

        wrapped.__name__ = handler.__name__
        wrapped.__doc__ = handler.__doc__
        return wrapped

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """Served text models, OpenAI's list shape."""
        return {
            "object": "list",
            "data": [
                {"id": c.id, "object": "model", "created": c.created, "owned_by": c.owned_by}
                for c in models.text_models()
            ],
        }

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        for c in models.text_models():
            if c.id == model_id:
                return JSONResponse(
                    {"id": c.id, "object": "model", "created": c.created, "owned_by": c.owned_by}
                )
        return error_response(ModelNotFoundError(f"The model '{model_id}' does not exist"))

    async def completions(request: Request) -> Response:
        """OpenAI text completions (JSON or SSE)."""
        t0 = time.perf_counter()
        body: CompletionRequest = parse(CompletionRequest, await _json(request))
        call = await start_text(
            models, metrics, body.model, "completions", body.single_prompt(),
            body.params(body.max_tokens), t0,
        )
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            payload: dict[str, Any] = {
                "id": cid, "object": "text_completion", "created": created, "model": body.model,
                "choices": [
                    {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
                ],
            }
            if body.include_usage:
                payload["usage"] = None
            return payload

        if body.stream:
            pump = Pump(call.stream, request, call.finish, call.thread_scope)

            async def events() -> AsyncIterator[bytes]:
                async for text in pump.chunks():
                    yield _sse(chunk(text, None))
                yield _sse(chunk("", call.stream.result.finish_reason))
                if body.include_usage:
                    yield _sse({**chunk("", None), "choices": [], "usage": _usage(call.stream)})
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        text = await complete_text(call, request)
        payload = chunk(text, call.stream.result.finish_reason)
        payload["usage"] = _usage(call.stream)
        return JSONResponse(payload)

    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completions (JSON or SSE); the prompt comes from the model's chat
        template or configured chat format."""
        t0 = time.perf_counter()
        body: ChatCompletionRequest = parse(ChatCompletionRequest, await _json(request))
        gen = models.text_model(body.model)
        chat = gen.chat_prompt([m.model_dump() for m in body.messages])
        tokens = gen.tokenize(chat.text, add_bos=not chat.has_bos)
        call = await start_text(
            models, metrics, body.model, "chat", tokens,
            body.params(body.completion_limit, chat.stop), t0,
        )
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            payload: dict[str, Any] = {
                "id": cid, "object": "chat.completion.chunk", "created": created,
                "model": body.model, "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if body.include_usage:
                payload["usage"] = None
            return payload

        if body.stream:
            pump = Pump(call.stream, request, call.finish, call.thread_scope)

            async def events() -> AsyncIterator[bytes]:
                yield _sse(chunk({"role": "assistant", "content": ""}, None))
                async for text in pump.chunks():
                    yield _sse(chunk({"content": text}, None))
                yield _sse(chunk({}, call.stream.result.finish_reason))
                if body.include_usage:
                    yield _sse({**chunk({}, None), "choices": [], "usage": _usage(call.stream)})
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        text = await complete_text(call, request)
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "system_fingerprint": None,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": call.stream.result.finish_reason,
            }],
            "usage": _usage(call.stream),
        })

    async def embeddings(request: Request) -> Response:
        """OpenAI embeddings, for models loaded with `embeddings: true`."""
        body: EmbeddingRequest = parse(EmbeddingRequest, await _json(request))
        model = models.embedding_model(body.model)
        texts = body.texts()
        result = await asyncio.to_thread(model.embed, texts)
        data = []
        for i, vector in enumerate(result.vectors):
            if body.dimensions is not None:
                vector = vector[: body.dimensions]
            value: Any = vector
            if body.encoding_format == "base64":
                value = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        metrics.record(body.model, "embeddings", "ok", result.prompt_tokens)
        return JSONResponse({
            "object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        })

    router.add_api_route("/v1/completions", guard(completions), methods=["POST"])
    router.add_api_route("/v1/chat/completions", guard(chat_completions), methods=["POST"])
    router.add_api_route("/v1/embeddings", guard(embeddings), methods=["POST"])
    return router


# ---- the service: models from the data plane, metrics in /metrics -------------------------
class DataPlaneModels:
    """LLMModels over the service's data plane: every loaded model whose backend generates
    text, by name (its latest loaded version)."""

    def __init__(self, plane: Any) -> None:
        self.plane = plane
        # Generation threads run under the mlos_ml scheduler when it is in use.
        self.compute_thread = plane.kernel.compute_thread

    def text_models(self) -> list[ModelCard]:
        cards = []
        for name, state in sorted(self.plane.models.items()):
            backend = state.latest
            if backend is None or not backend.ready:
                continue
            if isinstance(backend, (TextGenerator, Embedder)):  # noqa: UP038
                cards.append(ModelCard(name, int(state.latest.source.path.stat().st_mtime)))
        return cards

    def text_model(self, name: str) -> TextGenerator:
        if self.plane.draining:
            raise ServerBusyError("the server is shutting down; retry on another instance")
        backend = self.plane.backend(name)
        if not isinstance(backend, TextGenerator):
            raise UnsupportedError(
                f"model '{name}' is served by the {backend.name} backend, which does not "
                "generate text"
            )
        return backend

    def embedding_model(self, name: str) -> Embedder:
        backend = self.plane.backend(name)
        if not isinstance(backend, Embedder) or not getattr(backend, "can_embed", True):
            raise UnsupportedError(
                f"model '{name}' does not compute embeddings"
                + (": set 'embeddings: true' in its config" if isinstance(backend, Embedder)
                   else "")
            )
        return backend


def llm_metrics(plane: Any) -> LLMMetrics:
    """The service's LLM metrics: one per data plane, rendered into its /metrics."""
    metrics = getattr(plane, "llm_metrics", None)
    if metrics is None:
        metrics = LLMMetrics()
        plane.llm_metrics = metrics
        plane.metrics.collectors.append(metrics.render)
    return metrics


def create_router(plane: Any) -> APIRouter:
    """The app factory's hook (mlos_core.app.PROTOCOL_ROUTERS)."""
    return make_openai_router(DataPlaneModels(plane), llm_metrics(plane))


async def mlos_text_inference(
    plane: Any, model_id: str, doc: dict[str, Any], request: Request | None = None
) -> dict[str, Any]:
    """The upstream MLOS route with a prompt: POST /models/{id}/inference
    {"prompt": "...", "max_tokens": 128, "temperature": 0, "top_p", "seed", "stop"}.
    Greedy (temperature 0) unless asked otherwise; the same queue as the OpenAI routes."""
    t0 = time.perf_counter()
    body: MLOSTextRequest = parse(MLOSTextRequest, {"model": model_id, **doc})
    backend = plane.backend(model_id, body.version)
    if not isinstance(backend, TextGenerator):
        raise UnsupportedError(f"model '{model_id}' does not generate text; send 'inputs'")
    call = await start_text(
        _OneModel(backend, plane.kernel.compute_thread), llm_metrics(plane), model_id, "mlos",
        body.prompt,
        body.params(body.max_tokens), t0,
    )
    text = await complete_text(call, request)
    result = call.stream.result
    return {
        "model_id": model_id,
        "version": backend.source.version,  # type: ignore[attr-defined]
        "text": text,
        "finish_reason": result.finish_reason,
        "usage": _usage(call.stream),
    }


class _OneModel(StaticModels):
    def __init__(self, backend: TextGenerator, compute_thread: Any = None) -> None:
        self.backend = backend
        self.compute_thread = compute_thread

    def text_model(self, name: str) -> TextGenerator:
        return self.backend
