"""The web page routes: `/` (trace list), `/traces/{id}` (one trace) and `/health`.

No API key is asked for: this is a local development tool, bound to 127.0.0.1 unless
started with another `--host`. Pages carry a Content-Security-Policy that allows no
script and no external resource, a second guard behind the escaping in `pages`.
"""

from __future__ import annotations

from typing import Final

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse

from nexus_bedrock_tasks.local.nexus.pages import render_not_found, render_trace, render_trace_list
from nexus_bedrock_tasks.local.nexus.store import CursorNotFound, NexusStore, TraceFilter
from nexus_bedrock_tasks.local.nexus.validation import TRACE_STATUSES

PAGE_SIZE: Final = 100
HEALTH_PATH: Final = "/health"
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}


def _html(content: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(content, status_code=status_code, headers=_PAGE_HEADERS)


def build_web_router(store: NexusStore) -> APIRouter:
    """Routes of the human-facing page, reading `store` directly (names are not in the API)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def trace_list(
        status: str | None = None, agent: str | None = None, after: str | None = None
    ) -> HTMLResponse:
        status = status if status in TRACE_STATUSES else None
        agent = agent or None
        page_filter = TraceFilter(
            agent_name=agent,
            statuses=(status,) if status else None,
            after=after or None,
            limit=PAGE_SIZE,
        )
        try:
            rows, total = store.list_traces(page_filter)
        except CursorNotFound:
            rows, total = [], 0
        summaries = store.summary_outputs([row.id for row in rows])
        older = rows[-1].id if total > len(rows) else None
        return _html(
            render_trace_list(
                rows,
                summaries,
                store.agent_names(),
                status=status,
                agent=agent,
                total=total,
                older_after=older,
            )
        )

    @router.get("/traces/{trace_id}")
    async def trace_page(trace_id: str) -> HTMLResponse:
        found = store.get_trace(trace_id)
        if found is None:
            return _html(render_not_found(trace_id), status_code=404)
        row, spans = found
        return _html(render_trace(row, spans, store.summary_outputs([trace_id]).get(trace_id)))

    @router.get(HEALTH_PATH)
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return router
