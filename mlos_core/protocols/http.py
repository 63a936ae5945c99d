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
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

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

#: The one table from domain errors to HTTP: the status, and the machine-readable code the
#: OpenAI error body carries. Not ready and busy are both 503 (with Retry-After): the
#: client should retry, here or on another instance.
HTTP_ERRORS: dict[type[MLOSError], tuple[int, str | None]] = {
    ModelNotFoundError: (404, "model_not_found"),
    ModelNotReadyError: (503, "model_not_ready"),
    InvalidInputError: (400, None),
    ModelLoadError: (422, "model_load_failed"),
    PayloadTooLargeError: (413, "payload_too_large"),
    ServerBusyError: (503, "server_busy"),
    RequestTimeoutError: (504, "timeout"),
    UnauthorizedError: (401, "invalid_api_key"),
    UnsupportedError: (400, "unsupported"),
}

#: Paths that never need the API key (probes must work without secrets).
AUTH_EXEMPT = ("/health", "/v2/health/live", "/v2/health/ready")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def _entry(exc: MLOSError) -> tuple[int, str | None]:
    for cls in type(exc).__mro__:
        if cls in HTTP_ERRORS:
            return HTTP_ERRORS[cls]
    return 400, None


def status_for(exc: MLOSError) -> int:
    return _entry(exc)[0]


def code_for(exc: MLOSError) -> str | None:
    """The error's code: its own (e.g. context_length_exceeded), else the table's."""
    return getattr(exc, "code", None) or _entry(exc)[1]


async def read_json(request: Request) -> Any:
    """A JSON request body, inflated and parsed under the decoding limits (off the event
    loop when large); an empty body is {}."""
    plane = request.app.state.dataplane
    body = await request.body()
    return await plane.decoder.json(body, request.headers.get("content-encoding"))


async def cancel_on_disconnect(request: Request, cancel: Callable[[], None]) -> None:
    """Calls `cancel` when the client goes away (run as a task while a response is being
    computed; the body must have been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            cancel()
            return


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
        errors = _jsonable(exc.errors())
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in errors)
        return JSONResponse({"error": f"invalid request: {where}", "detail": errors}, 422)

    async def routing(request: Request, exc: Exception) -> Response:
        # Unknown routes (404) and wrong methods (405, with Allow) in the protocol's
        # {"error": ...} shape, which tritonclient decodes (FastAPI's {"detail": ...} not).
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        response = error_response(exc.status_code, message)
        response.headers.update(exc.headers or {})
        return response

    async def gone(_request: Request, _exc: Exception) -> Response:
        # The client went away or missed its body deadline (the server answered 408 and
        # closed): nobody reads this.
        return Response(status_code=499)

    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.exception("unexpected error: %s", exc)
        return error_response(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(MLOSError, domain)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, routing)
    app.add_exception_handler(ClientDisconnect, gone)
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
