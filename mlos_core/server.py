# SPDX-License-Identifier: Apache-2.0
"""Runs the REST (uvicorn) and gRPC (grpc.aio) servers on one event loop over one data
plane.

SIGTERM/SIGINT: the service reports not ready (/v2/health/ready 503, gRPC ServerReady
false), refuses new requests of every kind with 503/UNAVAILABLE, waits for in-flight
requests, then stops both servers; all of it within drain_timeout_s (plus a second for
the last connections to close), so a stalled client cannot hold the process past the
unit's TimeoutStopSec.

Connections are guarded in the HTTP protocol itself (GuardedHttp): at most
max_connections open (more are answered 503 and closed at once, so descriptors never run
out), header_timeout_s to send a request's headers and body_timeout_s to send its body
(slowloris clients are cut off), keep_alive_timeout_s idle between requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import uvicorn

from .app import create_app
from .dataplane import DataPlane
from .settings import Settings

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """uvicorn, minus its own signal handling: MLOSServer drains first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


_408 = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
_503 = (b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\n"
        b"content-type: application/json\r\ncontent-length: 52\r\n\r\n"
        b'{"error": "too many connections (max_connections)"}\n')


def guarded_protocol(settings: Settings) -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol with a connection cap and header and body deadlines
    (uvicorn itself has only the keep-alive timeout). Without httptools: uvicorn's
    default, which lacks the deadlines (logged)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        log.warning("httptools is not installed: no header/body timeouts nor connection cap")
        return "auto"

    header_s, body_s = settings.header_timeout_s, settings.body_timeout_s
    cap = settings.max_connections

    class GuardedHttp(HttpToolsProtocol):  # type: ignore[misc]
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float, expired: Any) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, expired)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if len(self.connections) > cap:
                transport.write(_503)
                transport.close()
                return
            self._arm(header_s, self._timed_out)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:
                self._arm(header_s, self._timed_out)

        def on_headers_complete(self) -> None:
            self._arm(body_s, self._timed_out)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def cut_if_receiving(self) -> None:
            """At shutdown: a request whose headers or body are still arriving will not
            be served (admission refuses it now); answer 408 and close at once rather
            than wait for its deadline."""
            cycle = self.cycle
            if self._deadline is not None and (cycle is None or cycle.more_body):
                self._deadline.cancel()
                self._timed_out()

        def _timed_out(self) -> None:
            """Headers or body not in by their deadline: 408 (when no response started)
            and close; the app sees a disconnect."""
            self._deadline = None
            if self.transport.is_closing():
                return
            cycle = self.cycle
            if cycle is None or cycle.response_complete or not cycle.response_started:
                self.transport.write(_408)
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
            self.transport.close()

    return GuardedHttp


class MLOSServer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.plane = DataPlane(settings)
        self.app = create_app(settings, self.plane)
        self.grpc_server: Any = None
        self.grpc_port: int | None = None
        self._uvicorn: _Uvicorn | None = None
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def rest_port(self) -> int:
        assert self._socket is not None
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"{self.settings.host}:{self.rest_port}"

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.rest_port,
            log_level=self.settings.log_level,
            access_log=False,
            http=guarded_protocol(self.settings),
            timeout_keep_alive=self.settings.keep_alive_timeout_s,  # type: ignore[arg-type]
            # Set again when the shutdown begins: what is left of drain_timeout_s.
            timeout_graceful_shutdown=max(1, int(self.settings.drain_timeout_s)),
            server_header=False,
        )
        self._uvicorn = _Uvicorn(config)
        # Bound here (not by uvicorn) so the port is known when rest_port is 0.
        self._socket = config.bind_socket()
        if self.settings.grpc_enabled:
            from .protocols.grpc.server import start_grpc_server

            # grpc.aio on this loop: gRPC calls take the same async data-plane path as
            # REST's, on the same (registered) thread, with no hand-off between pools.
            self.grpc_server, self.grpc_port = await start_grpc_server(
                self.plane, self.settings.host, self.settings.grpc_port
            )
            log.info("gRPC listening on %s:%s", self.settings.host, self.grpc_port)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self.begin_shutdown)
        try:
            await self._uvicorn.serve(sockets=[self._socket])
        finally:
            if self.grpc_server is not None:
                await self.grpc_server.stop(0)

    def begin_shutdown(self) -> None:
        """Stop taking work, drain, then stop (idempotent; call from the event loop)."""
        if self._stopping:
            return
        self._stopping = True
        self.plane.draining = True
        log.info("shutting down: draining %d in-flight requests", self.plane.in_flight)
        assert self._loop is not None
        self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        """Everything within drain_timeout_s: in-flight requests first, then the gRPC
        server, then uvicorn's own graceful shutdown with whatever time is left (it cancels
        the request tasks still running after it)."""
        deadline = time.monotonic() + self.settings.drain_timeout_s
        drained = await asyncio.to_thread(self.plane.wait_idle, self.settings.drain_timeout_s)
        if not drained:
            log.warning("drain timeout: %d requests still in flight", self.plane.in_flight)
        if self.grpc_server is not None:
            grace = max(0.1, min(1.0, deadline - time.monotonic()))
            await self.grpc_server.stop(grace)
        if self._uvicorn is not None:
            for connection in list(self._uvicorn.server_state.connections):
                cut = getattr(connection, "cut_if_receiving", None)
                if cut is not None:
                    cut()
            self._uvicorn.config.timeout_graceful_shutdown = max(
                1, math.ceil(deadline - time.monotonic()))
            self._uvicorn.should_exit = True

    # ---- background mode (tests, benchmarks) ---------------------------------------------
    def start_background(self, timeout: float = 30.0) -> MLOSServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            async def main() -> None:
                task = asyncio.create_task(self.serve())
                while not (self._uvicorn and self._uvicorn.started) and not task.done():
                    await asyncio.sleep(0.01)
                if not task.done():
                    ready.set()
                await task

            try:
                run_loop(main())
            except BaseException as exc:  # surfaced to the caller of start_background
                errors.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="mlos-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or errors:
            raise RuntimeError(f"server did not start: {errors}")
        return self

    def stop_background(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self.begin_shutdown)
            self._thread.join(timeout)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when installed (uvicorn[standard] brings it): lower per-request
    overhead than the default loop, and it sets TCP_NODELAY on accepted connections."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    if sys.version_info >= (3, 11):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
    else:
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(main)
        finally:
            loop.close()


def run(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_loop(MLOSServer(settings).serve())
