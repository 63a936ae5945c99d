# SPDX-License-Identifier: Apache-2.0
"""Runs the REST (uvicorn) and gRPC servers together over one data plane.

SIGTERM/SIGINT: the service reports not ready (/v2/health/ready 503, gRPC ServerReady
false), refuses new inferences with 503/UNAVAILABLE, waits for in-flight requests (up to
drain_timeout_s), then stops both servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import threading
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
            timeout_graceful_shutdown=int(self.settings.drain_timeout_s) or None,
            server_header=False,
        )
        self._uvicorn = _Uvicorn(config)
        # Bound here (not by uvicorn) so the port is known when rest_port is 0.
        self._socket = config.bind_socket()
        if self.settings.grpc_enabled:
            from .protocols.grpc.server import start_grpc_server

            self.grpc_server, self.grpc_port = start_grpc_server(
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
                self.grpc_server.stop(0)

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
        timeout = self.settings.drain_timeout_s
        drained = await asyncio.to_thread(self.plane.wait_idle, timeout)
        if not drained:
            log.warning("drain timeout: %d requests still in flight", self.plane.in_flight)
        if self.grpc_server is not None:
            await asyncio.to_thread(lambda: self.grpc_server.stop(1.0).wait())
        if self._uvicorn is not None:
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
