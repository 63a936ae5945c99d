# SPDX-License-Identifier: Apache-2.0
"""HTTP plumbing shared by every REST router: the one mapping from domain errors to HTTP
status + JSON body, and the ASGI guard for API keys and body limits (pure ASGI, so the hot
path pays no per-request middleware objects)."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ..errors import (
    InvalidInputError,
    MLOSError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServerBusyError,
    UnauthorizedError,
    UnsupportedError,
)

log = logging.getLogger(__name__)

HTTP_STATUS: dict[type[MLOSError], int] = {
    ModelNotFoundError: 404,
    ModelNotReadyError: 409,
    InvalidInputError: 400,
    ModelLoadError: 422,
    PayloadTooLargeError: 413,
    ServerBusyError: 503,
    RequestTimeoutError: 504,
    UnauthorizedError: 401,
    UnsupportedError: 400,
}

#: Paths that never need the API key (probes must work without secrets).
AUTH_EXEMPT = ("/health", "/v2/health/live", "/v2/health/ready")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def status_for(exc: MLOSError) -> int:
    for cls in type(exc).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 400


def error_response(status: int, message: str) -> Response:
    headers = {"Retry-After": "1"} if status == 503 else None
    return Response(
        json.dumps({"error": message}), status, headers, media_type="application/json"
    )


def install_error_handlers(app: FastAPI) -> None:
    async def domain(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MLOSError)
        return error_response(status_for(exc), str(exc))

    async def validation(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"error": "invalid request", "detail": _jsonable(exc.errors())}, 422)

    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.exception("unexpected error: %s", exc)
        return error_response(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(MLOSError, domain)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(Exception, unexpected)


def _jsonable(errors: Any) -> Any:
    return json.loads(json.dumps(errors, default=str))


class GuardMiddleware:
    """API key (Authorization: Bearer) and request-body limit, before any routing."""

    def __init__(self, app: Callable[..., Awaitable[None]], api_key: str | None, max_bytes: int):
        self.app = app
        self.token = f"Bearer {api_key}".encode() if api_key else None
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.token is not None and scope["path"] not in AUTH_EXEMPT:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.token):
                await _send_error(send, 401, "missing or wrong API key (Authorization: Bearer)",
                                  {b"www-authenticate": b"Bearer"})
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_large = int(length) > self.max_bytes
            except ValueError:
                await _send_error(send, 400, "invalid Content-Length")
                return
            if too_large:
                await _send_error(
                    send, 413, f"request body over the {self.max_bytes}-byte limit"
                )
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): count while reading.
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # A domain error, so the app's handler answers 413 (not a 500).
                    raise PayloadTooLargeError(
                        f"request body over the {self.max_bytes}-byte limit"
                    )
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except PayloadTooLargeError:
            if not started:
                await _send_error(send, 413, f"request body over the {self.max_bytes}-byte limit")


async def _send_error(
    send: Send, status: int, message: str, extra: dict[bytes, bytes] | None = None
) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += list((extra or {}).items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
