"""`create_app`: the local Nexus-compatible server as a FastAPI application.

Run it with lifespan events (uvicorn does; so does `TestClient` used as a context
manager): the database opens at startup and closes at shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from typing_extensions import Unpack

from nexus_bedrock_tasks.local.nexus.api import ApiError, KeyCheck, NexusApi, api_error_response
from nexus_bedrock_tasks.local.nexus.config import DEV_KEY, KEY_PREFIX, PlanLimitOptions, PlanLimits
from nexus_bedrock_tasks.local.nexus.faults import (
    FaultInjector,
    FaultMiddleware,
    build_faults_router,
)
from nexus_bedrock_tasks.local.nexus.store import NexusStore
from nexus_bedrock_tasks.local.nexus.validation import BodyError
from nexus_bedrock_tasks.local.nexus.web import build_web_router


def create_app(
    db_path: Path | None = None,
    api_key: str = DEV_KEY,
    *,
    faults: bool = False,
    **plan_limits: Unpack[PlanLimitOptions],
) -> FastAPI:
    """Build the server: the Nexus REST API, OTLP ingest, the web page at `/`, `/health`.

    Args:
        db_path: SQLite file (created if missing); `None` keeps data in memory.
        api_key: the one key accepted (`nxs_...`); only its SHA-256 hash is kept.
        faults: enable fault injection (`app.state.faults`, `/_faults`); see `faults`.
        **plan_limits: `max_agents`, `monthly_trace_limit` (both unlimited by default).

    Returns:
        The app; `app.state.store` is its `NexusStore`, `app.state.faults` its
        `FaultInjector` or `None`.

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
    app = FastAPI(
        title="Local Nexus", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.store = store
    app.state.faults = None
    app.add_exception_handler(ApiError, api_error_response)
    app.add_exception_handler(BodyError, api_error_response)
    app.router.routes.extend(NexusApi(store, keys).routes())
    app.include_router(build_web_router(store))
    if faults:
        injector = FaultInjector()
        app.state.faults = injector
        app.include_router(build_faults_router(injector, keys))
        app.add_middleware(FaultMiddleware, faults=injector)
    return app
