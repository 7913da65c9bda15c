"""`create_app`: the local Nexus-compatible server as a FastAPI application.

Run it with lifespan events (uvicorn does; so does `TestClient` used as a context
manager): the database opens at startup and closes at shutdown. Requests enter through
`NexusApp.entry`: the write routes are answered there (`fast_path.FastWrites`), the rest
by FastAPI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from typing_extensions import Unpack

from nexus_bedrock_tasks.local.nexus.api import ApiError, KeyCheck, NexusApi, api_error_response
from nexus_bedrock_tasks.local.nexus.config import DEV_KEY, KEY_PREFIX, PlanLimitOptions, PlanLimits
from nexus_bedrock_tasks.local.nexus.fast_path import FastWrites
from nexus_bedrock_tasks.local.nexus.faults import (
    FaultInjector,
    FaultMiddleware,
    build_faults_router,
)
from nexus_bedrock_tasks.local.nexus.store import NexusStore
from nexus_bedrock_tasks.local.nexus.validation import BodyError
from nexus_bedrock_tasks.local.nexus.web import build_web_router


class NexusApp(FastAPI):
    """A FastAPI app whose requests enter through `entry`.

    `create_app` sets `entry` to `FastWrites` in front of `framework` (FastAPI's own
    middleware, routing and handlers), with `FaultMiddleware` in front of both when fault
    injection is on.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.entry: ASGIApp = self.framework

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.entry(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The FastAPI app itself, without what `entry` puts in front of it."""
        await super().__call__(scope, receive, send)


def create_app(
    db_path: Path | None = None,
    api_key: str = DEV_KEY,
    *,
    faults: bool = False,
    **plan_limits: Unpack[PlanLimitOptions],
) -> NexusApp:
    """Build the server: the Nexus REST API, OTLP ingest, the web page at `/`, `/health`.

    Args:
        db_path: SQLite file (created if missing); `None` keeps data in memory.
        api_key: the one key accepted (`nxs_...`); only its SHA-256 hash is kept.
        faults: enable fault injection (`app.state.faults`, `/_faults`); see `faults`.
        **plan_limits: `max_agents`, `monthly_trace_limit` (both unlimited by default).

    Returns:
        The app (a FastAPI app); `app.state.store` is its `NexusStore`, `app.state.faults`
        its `FaultInjector` or `None`.

    Raises:
        ValueError: `api_key` does not look like a Nexus key.

    Example:
        >>> app = create_app(None, "nxs_test", max_agents=1, monthly_trace_limit=1000)
    """
    if not api_key.startswith(KEY_PREFIX) or len(api_key) == len(KEY_PREFIX):
        raise ValueError(f"API key must look like '{KEY_PREFIX}<key>'")
    store = NexusStore(db_path, PlanLimits(**plan_limits))
    keys = KeyCheck(api_key)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        store.open()
        try:
            yield
        finally:
            store.close()

    # No /docs: Swagger UI loads from a CDN, and this server must work offline.
    app = NexusApp(
        title="Local Nexus", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.store = store
    app.state.faults = None
    app.add_exception_handler(ApiError, api_error_response)
    app.add_exception_handler(BodyError, api_error_response)
    api = NexusApi(store, keys)
    app.router.routes.extend(api.routes())
    app.include_router(build_web_router(store))
    app.entry = FastWrites(api, app.framework)
    if faults:
        injector = FaultInjector()
        app.state.faults = injector
        app.include_router(build_faults_router(injector, keys))
        # Outermost, so that faults reach the write routes that FastWrites answers.
        app.entry = FaultMiddleware(app.entry, faults=injector)
    return app
