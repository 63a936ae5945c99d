# SPDX-License-Identifier: Apache-2.0
"""The app factory: `create_app(settings)` builds the FastAPI application, its data plane
and routers. State lives on the app (app.state.dataplane); there are no module globals."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from . import __version__
from .backends.base import CAP_INFER, CAP_TEXT_GENERATION
from .dataplane import DataPlane
from .protocols import rest_kserve
from .protocols.http import GuardMiddleware, install_error_handlers
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProtocolRouter:
    """A REST router mounted when an installed backend has `capability`.

    `target` is "module:function"; the function takes the DataPlane and returns an
    APIRouter. A router whose module cannot be imported is skipped with a warning.
    """

    capability: str
    target: str


#: Routers for backend capabilities. Adding a protocol is one line here.
PROTOCOL_ROUTERS: tuple[ProtocolRouter, ...] = (
    ProtocolRouter(CAP_INFER, "mlos_core.protocols.rest_kserve:create_router"),
    ProtocolRouter(CAP_INFER, "mlos_core.protocols.rest_mlos:create_router"),
    ProtocolRouter(CAP_TEXT_GENERATION, "mlos_core.protocols.openai:create_router"),
)


def _mount(app: FastAPI, plane: DataPlane) -> None:
    capabilities = plane.plugins.capabilities() | {CAP_INFER}
    for spec in PROTOCOL_ROUTERS:
        if spec.capability not in capabilities:
            continue
        module_name, _, func = spec.target.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), func)
        except (ImportError, AttributeError) as exc:
            log.warning("protocol router %s unavailable: %s", spec.target, exc)
            continue
        app.include_router(factory(plane))


def create_app(settings: Settings, plane: DataPlane | None = None) -> FastAPI:
    plane = plane or DataPlane(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The event loop's thread serves HTTP: throughput class under the mlos_ml scheduler
        # (inference threads register themselves as latency-critical when they start), and
        # so are the asyncio helper threads (model loads and unloads, embeddings).
        plane.kernel.register_thread(latency=False)
        if plane.kernel.threads is not None:
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(
                thread_name_prefix="mlos-aux", initializer=plane.kernel.service_thread_started))
        yield
        plane.close()

    app = FastAPI(
        title="MLOS Core",
        version=__version__,
        description="Inference service: KServe v2 (REST, gRPC), upstream MLOS REST.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.dataplane = plane
    plane.start()
    install_error_handlers(app)
    _mount(app, plane)
    # The inference routes go first: every request to them skips the other matches.
    app.router.routes[0:0] = rest_kserve.infer_routes(plane)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    async def metrics() -> PlainTextResponse:
        text = plane.metrics.render({"mlos_inference_in_flight": plane.in_flight})
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    app.add_middleware(
        GuardMiddleware, api_key=settings.api_key, max_bytes=settings.max_request_bytes
    )
    return app
