# SPDX-License-Identifier: Apache-2.0
"""Request bodies with binary tensor data (Triton's binary extension), read from the
request stream straight into a pooled buffer.

The JSON header (the first Inference-Header-Content-Length bytes) goes to a small bytes
object; the binary part goes to a pool buffer (page aligned, so the first tensor is too)
and the input tensors are numpy views of it that ONNX Runtime reads in place. With a
Content-Length the buffer is taken once, in the right size class; a chunked body grows
through the size classes (each outgrown buffer goes straight back to the pool). When the
pool cannot give a buffer (full, or a body larger than the pool) the body is read into a
per-request allocation instead, counted as a fallback.

The buffer returns to the pool when the last view of it dies: when the response is done,
or when the request failed (over the size limit mid-stream, client gone, a malformed or
lying header length) and its exception was handled. No reference cycle holds a view on
these paths (tests/unit/test_core_bodies.py checks each with the garbage collector off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from ..errors import InvalidInputError
from ..kernel.pools import REQUEST, BufferPool, PoolUnavailableError

HEADER_LENGTH = "inference-header-content-length"


@dataclass(slots=True)
class BinaryBody:
    """A request body split at Inference-Header-Content-Length."""

    header: bytes
    binary: memoryview
    pooled: bool


def header_length(value: str) -> int:
    try:
        split = int(value)
    except ValueError:
        raise InvalidInputError("Inference-Header-Content-Length is not an integer") from None
    if split < 0:
        raise InvalidInputError("Inference-Header-Content-Length is negative")
    return split


class _Sink:
    """The growing binary part: a pool buffer when the pool has one, else plain memory."""

    def __init__(self, pool: BufferPool, expected: int | None, on_fallback: Any) -> None:
        self.pool = pool
        self.expected = expected
        self.on_fallback = on_fallback
        self.buffer: np.ndarray | None = None
        self.filled = 0
        self.pooled = True

    def _take(self, nbytes: int) -> np.ndarray:
        if self.pooled:
            try:
                return self.pool.acquire(nbytes, REQUEST)
            except PoolUnavailableError:
                self.pooled = False
                self.on_fallback()
        return np.empty(nbytes, np.uint8)

    def write(self, data: memoryview) -> None:
        end = self.filled + len(data)
        if self.buffer is None or end > len(self.buffer):
            if self.expected is not None:
                if end > self.expected:  # the server enforces Content-Length; belt and braces
                    raise InvalidInputError("request body longer than its Content-Length")
                grown = self._take(self.expected)
            else:  # chunked: the next size class that holds what arrived
                grown = self._take(BufferPool.size_class(max(end, 2 * self.filled)))
            if self.filled:
                assert self.buffer is not None
                grown[: self.filled] = self.buffer[: self.filled]
            self.buffer = grown  # the outgrown buffer goes back to the pool here
        self.buffer[self.filled : end] = np.frombuffer(data, np.uint8)
        self.filled = end

    def view(self) -> memoryview:
        if self.buffer is None:
            return memoryview(b"")
        return memoryview(self.buffer)[: self.filled]  # type: ignore[arg-type]


async def read_binary_body(request: Request, pool: BufferPool, split: int,
                           on_fallback: Any) -> BinaryBody:
    """Streams the body: the first `split` bytes are the JSON header, the rest goes to a
    pool buffer. Raises InvalidInputError for a header length the body does not hold,
    starlette's ClientDisconnect when the client goes away, PayloadTooLargeError (from the
    guard's receive) over max_request_bytes; none of them leaves a buffer out."""
    length = request.headers.get("content-length")
    total = int(length) if length is not None and length.isdigit() else None
    if total is not None and split > total:
        raise InvalidInputError("Inference-Header-Content-Length exceeds the body")
    sink = _Sink(pool, None if total is None else total - split, on_fallback)
    header = bytearray()
    async for chunk in request.stream():
        view = memoryview(chunk)
        if len(header) < split:
            take = split - len(header)
            header += view[:take]
            view = view[take:]
        if view:
            sink.write(view)
    if len(header) < split:
        raise InvalidInputError("Inference-Header-Content-Length exceeds the body")
    if sink.expected is not None and sink.filled != sink.expected:
        raise InvalidInputError("request body shorter than its Content-Length")
    return BinaryBody(bytes(header), sink.view(), sink.pooled)

