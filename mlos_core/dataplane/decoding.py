# SPDX-License-Identifier: Apache-2.0
"""Request decoding under bounds: the one place that limits what a small request may grow
into, and that keeps CPU-heavy decoding off the event loop.

- Content-Encoding gzip/deflate is inflated in steps, stopping (413) as soon as the output
  passes max_request_bytes: memory grows only as far as the limit, never to the bomb's size.
- A JSON document may hold at most max_json_values values (an upper bound counted on the
  raw bytes before parsing, at C speed), so 60 KB of gzip cannot become gigabytes of Python
  lists; nesting deeper than the interpreter's recursion guard (about 1,000) is a 400.
- Each tensor may hold at most max_tensor_elements elements, and the BYTES tensors of one
  request at most max_bytes_elements elements together (each element is a Python object).
- Inflating, parsing and converting a body larger than OFFLOAD_BYTES (and encoding a
  response that large) runs on the decode threads, so /v2/health/live and every other
  request keep being answered meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import InvalidInputError, PayloadTooLargeError
from ..settings import Settings

T = TypeVar("T")

#: Bodies up to this size decode on the event loop: the thread hand-off (tens of
#: microseconds) would cost more than the work. Larger ones, and every compressed one, go
#: to the decode threads.
OFFLOAD_BYTES = 64 * 1024
#: How much lower than the event loop the decode threads run (nice increment).
DECODE_NICE = 10
#: Inflate output per step: the limits are checked between steps, and the event loop's
#: thread gets the GIL back between them.
_INFLATE_STEP = 256 * 1024


@dataclass(frozen=True)
class Limits:
    max_decoded_bytes: int
    max_json_values: int
    max_tensor_elements: int
    max_bytes_elements: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.max_request_bytes, settings.max_json_values,
                   settings.max_tensor_elements, settings.max_bytes_elements)


@dataclass
class TensorBudget:
    """What one request's tensors have used of the limits so far."""

    limits: Limits
    bytes_elements: int = field(default=0)

    def check(self, name: str, datatype: str, shape: tuple[int, ...]) -> None:
        """Before a tensor is decoded: its element count against the limits."""
        count = 1
        for dim in shape:
            count *= dim
        if count > self.limits.max_tensor_elements:
            raise PayloadTooLargeError(
                f"input {name!r}: shape {list(shape)} has {count} elements, over the "
                f"max_tensor_elements limit of {self.limits.max_tensor_elements}"
            )
        if datatype == "BYTES":
            self.bytes_elements += count
            if self.bytes_elements > self.limits.max_bytes_elements:
                raise PayloadTooLargeError(
                    f"input {name!r}: {self.bytes_elements} BYTES elements in this request, "
                    f"over the max_bytes_elements limit of {self.limits.max_bytes_elements}"
                )


def inflate(body: bytes, encoding: str | None, limit: int, max_values: int | None = None
            ) -> bytes | bytearray:
    """A request body compressed by the client (tritonclient's request_compression_algorithm:
    gzip or deflate), inflated no further than `limit` bytes; a body that is all JSON
    (`max_values` given) stops as soon as it holds too many values to parse."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise InvalidInputError(f"unsupported Content-Encoding {encoding!r} (gzip, deflate)")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    out = bytearray()
    pending = body
    commas = 0
    try:
        while not inflater.eof:
            step = inflater.decompress(pending, _INFLATE_STEP)
            pending = inflater.unconsumed_tail
            out += step
            if max_values is not None:
                commas += step.count(b",")
                if commas >= max_values:
                    raise _too_many_values(commas + 1, max_values)
            if len(out) > limit:
                raise PayloadTooLargeError(
                    f"the {encoding} body inflates past the {limit}-byte limit "
                    "(max_request_bytes)"
                )
            if not step and not pending:
                break  # truncated stream: all input used, no more output
    except zlib.error as exc:
        raise InvalidInputError(f"corrupt {encoding} body: {exc}") from None
    if not inflater.eof:
        raise InvalidInputError(f"truncated {encoding} body")
    return out  # no copy: json.loads and memoryview take a bytearray


def parse_json(data: bytes | bytearray | memoryview | str, max_values: int) -> Any:
    """json.loads under the value bound; every malformed or too deep document is a 400."""
    if not data:
        return {}
    raw = data.encode() if isinstance(data, str) else (
        data if isinstance(data, (bytes, bytearray)) else bytes(data))  # noqa: UP038
    # Values in a JSON text are separated by commas (arrays, objects): commas + 1 bounds
    # them (commas inside strings only make the bound safer).
    values = raw.count(b",") + 1
    if values > max_values:
        raise _too_many_values(values, max_values)
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidInputError("the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"the request body is not valid JSON: {exc}") from None


def _lower_priority() -> None:
    """Decode threads yield the CPU to the event loop's thread (nice +10, this thread
    only): a flood of heavy bodies slows their own decoding, not health checks and the
    other requests. Any user may lower a thread's priority; failing that, it stays."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODE_NICE)


def _too_many_values(values: int, max_values: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"the JSON body holds {values} values or more, over the max_json_values limit of "
        f"{max_values}; send large tensors in binary (binary_data, raw contents)"
    )


class Decoder:
    """Runs decoding work; large or compressed bodies on its own threads."""

    def __init__(self, settings: Settings) -> None:
        self.limits = Limits.from_settings(settings)
        # Few threads: decoding is bounded CPU work, and the number of bodies decoding at
        # once bounds the memory they take (docs/security.md).
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, min(4, settings.threads)), thread_name_prefix="mlos-decode",
            initializer=_lower_priority,
        )

    def budget(self) -> TensorBudget:
        return TensorBudget(self.limits)

    async def run(self, size: int, compressed: bool, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the loop for a small plain body, else on a decode thread."""
        if size <= OFFLOAD_BYTES and not compressed:
            return fn(*args)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args))

    def inflate(self, body: bytes, encoding: str | None) -> bytes | bytearray:
        return inflate(body, encoding, self.limits.max_decoded_bytes)

    def parse_json(self, data: bytes | bytearray | memoryview | str) -> Any:
        return parse_json(data, self.limits.max_json_values)

    def inflate_json(self, body: bytes, encoding: str | None) -> bytes | bytearray:
        return inflate(body, encoding, self.limits.max_decoded_bytes,
                       self.limits.max_json_values)

    def decode_json(self, body: bytes, encoding: str | None) -> Any:
        return self.parse_json(self.inflate_json(body, encoding))

    async def json(self, body: bytes, encoding: str | None = None) -> Any:
        """A JSON request body, inflated and parsed under the limits."""
        return await self.run(len(body), compressed(encoding), self.decode_json, body, encoding)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def compressed(encoding: str | None) -> bool:
    return encoding is not None and encoding.strip().lower() != "identity"
