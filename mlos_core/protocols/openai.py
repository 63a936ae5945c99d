# SPDX-License-Identifier: Apache-2.0
"""The OpenAI-compatible API: /v1/models, /v1/completions, /v1/chat/completions (JSON or
SSE streaming ending with `data: [DONE]`), /v1/embeddings.

A transport only: parse the body (openai_schemas), call the data plane
(`DataPlane.generate`, `DataPlane.embed`), frame what it yields. Admission, the request
timeout, cancellation and metrics are the data plane's, the same as for tensors. A client
that disconnects cancels its generation, which frees the model's context after the token
being decoded.

Errors use OpenAI's body: {"error": {"message", "type", "param", "code"}}, with the status
from the service's one HTTP error table (protocols/http.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..dataplane import DataPlane, EmbedRequest, Generation, TextRequest
from ..errors import MLOSError, ModelNotFoundError
from .http import cancel_on_disconnect, code_for, read_json, status_for
from .openai_schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, parse


def error_body(exc: MLOSError) -> tuple[int, dict[str, Any]]:
    status = status_for(exc)
    kind = "invalid_request_error" if status < 500 else "server_error"
    param = getattr(exc, "param", None)
    return status, {"error": {"message": str(exc), "type": kind, "param": param,
                              "code": code_for(exc)}}


def error_response(exc: MLOSError) -> JSONResponse:
    status, body = error_body(exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def usage(generation: Generation) -> dict[str, int]:
    r = generation.result
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
    }


@contextlib.asynccontextmanager
async def watching(request: Request, generation: Generation) -> AsyncIterator[None]:
    """While the block runs, a client that goes away cancels the generation."""
    watcher = asyncio.ensure_future(cancel_on_disconnect(request, generation.cancel))
    try:
        yield
    finally:
        watcher.cancel()


async def complete(request: Request, generation: Generation) -> str:
    """The whole text of a generation (non-streaming responses)."""
    async with watching(request, generation):
        return await generation.text()


def stream_events(
    request: Request, generation: Generation, frames: Callable[[str], bytes],
    first: bytes | None, last: Callable[[], list[bytes]],
) -> StreamingResponse:
    """SSE: `first`, one frame per chunk, `last()`, then [DONE]. A timeout mid-stream (the
    status is sent already) ends the stream with an OpenAI error event."""

    async def events() -> AsyncIterator[bytes]:
        async with watching(request, generation):
            if first is not None:
                yield first
            try:
                async with contextlib.aclosing(generation.chunks()) as chunks:
                    async for text in chunks:
                        yield frames(text)
            except MLOSError as exc:
                yield _sse(error_body(exc)[1])
            else:
                for frame in last():
                    yield frame
            yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def make_openai_router(plane: DataPlane) -> APIRouter:
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

    def card(name: str, created: int) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "mlos"}

    @router.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        """Served text models, OpenAI's list shape."""
        return {"object": "list", "data": [card(*c) for c in plane.text_models()]}

    @router.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        for name, created in plane.text_models():
            if name == model_id:
                return JSONResponse(card(name, created))
        return error_response(ModelNotFoundError(f"The model '{model_id}' does not exist"))

    async def completions(request: Request) -> Response:
        """OpenAI text completions (JSON or SSE)."""
        body: CompletionRequest = parse(CompletionRequest, await read_json(request))
        generation = await plane.generate(TextRequest(
            body.model, body.params(body.max_tokens), body.single_prompt(),
            endpoint="completions"))
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
            def last() -> list[bytes]:
                frames = [_sse(chunk("", generation.result.finish_reason))]
                if body.include_usage:
                    frames.append(_sse({**chunk("", None), "choices": [],
                                        "usage": usage(generation)}))
                return frames

            return stream_events(request, generation, lambda t: _sse(chunk(t, None)), None,
                                 last)
        text = await complete(request, generation)
        payload = chunk(text, generation.result.finish_reason)
        payload["usage"] = usage(generation)
        return JSONResponse(payload)

    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completions (JSON or SSE); the prompt comes from the model's chat
        template or configured chat format."""
        body: ChatCompletionRequest = parse(ChatCompletionRequest, await read_json(request))
        generation = await plane.generate(TextRequest(
            body.model, body.params(body.completion_limit),
            messages=[m.model_dump() for m in body.messages], endpoint="chat",
            prompt_param="messages"))
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
            def last() -> list[bytes]:
                frames = [_sse(chunk({}, generation.result.finish_reason))]
                if body.include_usage:
                    frames.append(_sse({**chunk({}, None), "choices": [],
                                        "usage": usage(generation)}))
                return frames

            return stream_events(
                request, generation, lambda t: _sse(chunk({"content": t}, None)),
                _sse(chunk({"role": "assistant", "content": ""}, None)), last)
        text = await complete(request, generation)
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "system_fingerprint": None,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": generation.result.finish_reason,
            }],
            "usage": usage(generation),
        })

    async def embeddings(request: Request) -> Response:
        """OpenAI embeddings, for models loaded with `embeddings: true`."""
        body: EmbeddingRequest = parse(EmbeddingRequest, await read_json(request))
        result = await plane.embed(EmbedRequest(body.model, body.texts()))
        data = []
        for i, vector in enumerate(result.vectors):
            if body.dimensions is not None:
                vector = vector[: body.dimensions]
            value: Any = vector
            if body.encoding_format == "base64":
                value = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return JSONResponse({
            "object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
        })

    router.add_api_route("/v1/completions", guard(completions), methods=["POST"])
    router.add_api_route("/v1/chat/completions", guard(chat_completions), methods=["POST"])
    router.add_api_route("/v1/embeddings", guard(embeddings), methods=["POST"])
    return router


def create_router(plane: DataPlane) -> APIRouter:
    """The app factory's hook (mlos_core.app.PROTOCOL_ROUTERS)."""
    return make_openai_router(plane)
