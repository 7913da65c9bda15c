"""The REST routes of the local Nexus server: `/api/v1/traces*` and OTLP `/v1/traces`.

Each answer (status code, body, header) is the hosted service's, including its errors:
`401 {"error": "Invalid API key"}`, `400 {"error", "fields"}` for invalid fields,
`403`/`429` for plan limits (no `Retry-After`), `404 {"error": "Trace not found"}`.
Handlers are `async` and call SQLite directly: each statement takes microseconds, so a
thread hop per request would cost more than it saves.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime, timezone
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nexus_bedrock_tasks.local.nexus.config import UPGRADE_URL
from nexus_bedrock_tasks.local.nexus.otlp import parse_export_request
from nexus_bedrock_tasks.local.nexus.store import (
    AgentLimitReached,
    CursorNotFound,
    NexusStore,
    SpanRow,
    TraceFilter,
    TraceLimitReached,
    TraceRow,
    new_id,
)
from nexus_bedrock_tasks.local.nexus.validation import (
    INVALID_QUERY,
    LIST_STATUS_GROUPS,
    VALIDATION_FAILED,
    BodyError,
    from_json_text,
    js_string,
    list_limit,
    list_query_errors,
    parse_body,
    patch_errors,
    span_errors,
    to_json_text,
    trace_errors,
)

INVALID_API_KEY: Final[Mapping[str, object]] = {"error": "Invalid API key"}
TRACE_NOT_FOUND: Final[Mapping[str, object]] = {"error": "Trace not found"}
TOTAL_COUNT_HEADER: Final = "X-Total-Count"
WriteAnswer = tuple[int, dict[str, str]]
"""A write route's success: its status and JSON body."""
TRACES_PATH: Final = "/api/v1/traces"
TRACE_PATH: Final = TRACES_PATH + "/{trace_id}"
SPANS_PATH: Final = TRACE_PATH + "/spans"
OTLP_TRACES_PATH: Final = "/v1/traces"


class ApiError(Exception):
    """An error answer: raised by a route or dependency, rendered by `api_error_response`."""

    def __init__(self, status_code: int, body: Mapping[str, object]) -> None:
        super().__init__(status_code, body)
        self.status_code = status_code
        self.body = body


def render_json(content: object) -> bytes:
    """A JSON answer's body, byte for byte what Starlette's `JSONResponse` sends."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def error_answer(exc: Exception) -> tuple[int, Mapping[str, object]]:
    """Status and body of an `ApiError`, or of a `BodyError` (a malformed body is a 400)."""
    if isinstance(exc, ApiError):
        return exc.status_code, exc.body
    return 400, {"error": str(exc)}


async def api_error_response(request: Request, exc: Exception) -> JSONResponse:
    """Exception handler for `ApiError` and `BodyError` (a malformed body is a 400)."""
    status_code, body = error_answer(exc)
    return JSONResponse(body, status_code=status_code)


def first_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header `name` (lower case) in ASGI headers, as Starlette reads it."""
    for key, value in headers:
        if key == name:
            return value
    return None


class KeyCheck:
    """Accepts one API key, kept only as its SHA-256 hash, as the service stores keys.

    The last `Authorization` header value that was accepted is remembered, so a client that
    sends the same header on every request costs one constant-time comparison, not a hash.
    (It holds the key in clear, as the process that was given the key does anyway.)
    """

    def __init__(self, api_key: str) -> None:
        self._digest = hashlib.sha256(api_key.encode()).digest()
        self._accepted_authorization: bytes | None = None

    def accepts(self, key: str | None) -> bool:
        """Whether `key` is the configured key (constant-time comparison)."""
        if not key:
            return False
        return hmac.compare_digest(hashlib.sha256(key.encode()).digest(), self._digest)

    def accepts_authorization(self, header: bytes | None) -> bool:
        """Whether a raw `Authorization` header value is `Bearer <the key>`."""
        if not header:
            return False
        accepted = self._accepted_authorization
        if accepted is not None and hmac.compare_digest(header, accepted):
            return True
        if not self.accepts(bearer_key(header.decode("latin-1"))):
            return False
        self._accepted_authorization = header
        return True

    # Async so that, used as a FastAPI dependency, it does not hop to a thread pool.
    async def require_bearer(self, request: Request) -> None:
        """`Authorization: Bearer <key>` (for `/api/v1`), or `ApiError` 401."""
        if not self.accepts_authorization(first_header(request.scope["headers"], b"authorization")):
            raise ApiError(401, INVALID_API_KEY)

    async def require_otlp_key(self, request: Request) -> None:
        """`x-api-key`, else `Authorization: Bearer` (for OTLP ingest), or `ApiError` 401."""
        key = request.headers.get("x-api-key") or bearer_key(
            request.headers.get("authorization", "")
        )
        if not self.accepts(key):
            raise ApiError(401, INVALID_API_KEY)


def bearer_key(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer <key>` value (`None`: not a Bearer value)."""
    return authorization[7:].strip() if authorization.startswith("Bearer ") else None


def _plan_error(exc: AgentLimitReached | TraceLimitReached) -> ApiError:
    if isinstance(exc, TraceLimitReached):
        return ApiError(
            429,
            {
                "error": "Monthly trace limit reached",
                "limit": exc.limit,
                "current": exc.current,
                "upgrade_url": UPGRADE_URL,
            },
        )
    agents = "agent" if exc.max_agents == 1 else "agents"
    return ApiError(
        403,
        {"error": f"Free plan limited to {exc.max_agents} {agents}", "upgrade_url": UPGRADE_URL},
    )


def _json_answer(answer: WriteAnswer) -> JSONResponse:
    status_code, content = answer
    return JSONResponse(content, status_code=status_code)


def _raise_if_invalid(errors: dict[str, str], message: str = VALIDATION_FAILED) -> None:
    if errors:
        raise ApiError(400, {"error": message, "fields": errors})


def trace_json(row: TraceRow) -> dict[str, object]:
    """A trace as `GET /api/v1/traces` lists it (no name: the service leaves it out)."""
    return {
        "id": row.id,
        "agent_name": row.agent_name,
        "status": row.status,
        "started_at": row.started_at,
        "ended_at": row.ended_at,
        "duration_ms": row.duration_ms,
        "span_count": row.span_count,
        "metadata": from_json_text(row.metadata),
    }


def span_json(span: SpanRow) -> dict[str, object]:
    """A span as `GET /api/v1/traces/:id` returns it."""
    return {
        "id": span.id,
        "name": span.name,
        "parent_span_id": span.parent_span_id,
        "status": span.status,
        "started_at": span.started_at,
        "ended_at": span.ended_at,
        "input": from_json_text(span.input),
        "output": from_json_text(span.output),
        "error": span.error,
    }


Endpoint = Callable[[Request], Awaitable[Response]]


def _guarded(check: Callable[[Request], Awaitable[None]], endpoint: Endpoint) -> Endpoint:
    async def guarded(request: Request) -> Response:
        await check(request)
        return await endpoint(request)

    return guarded


class NexusApi:
    """The REST and OTLP handlers over one store.

    They are plain Starlette routes, not FastAPI ones: FastAPI's per-request dependency
    resolution cost about a third of the server's time per span, and these handlers need
    nothing but the request. The write routes (`post_trace`, `patch_trace`, `post_span`)
    are served before the framework by `fast_path.FastWrites`; their routes stay here so
    that the framework's answers around them (405 and its `Allow`) do not change.
    """

    def __init__(self, store: NexusStore, keys: KeyCheck) -> None:
        self.store = store
        self.keys = keys

    def routes(self) -> list[Route]:
        """`/api/v1/...` (Bearer key) and `/v1/traces` (x-api-key or Bearer)."""
        bearer, otlp = self.keys.require_bearer, self.keys.require_otlp_key
        return [
            Route(TRACES_PATH, _guarded(bearer, self.create_trace), methods=["POST"]),
            Route(TRACES_PATH, _guarded(bearer, self.list_traces), methods=["GET"]),
            Route(TRACE_PATH, _guarded(bearer, self.get_trace), methods=["GET"]),
            Route(TRACE_PATH, _guarded(bearer, self.update_trace), methods=["PATCH"]),
            Route(SPANS_PATH, _guarded(bearer, self.create_span), methods=["POST"]),
            Route(OTLP_TRACES_PATH, _guarded(otlp, self.ingest_otlp), methods=["POST"]),
        ]

    # The write routes' work and answers, without the framework: `FastWrites`
    # (fast_path.py) serves them straight from ASGI; the Starlette routes below send the
    # same answers.

    def post_trace(self, raw_body: bytes) -> WriteAnswer:
        """`POST /api/v1/traces`: store the trace → `201 {"trace_id"}`.

        Raises:
            ApiError: invalid fields (400) or a plan limit (403, 429).
            BodyError: the body is not a JSON object.
        """
        body = parse_body(raw_body)
        _raise_if_invalid(trace_errors(body))
        ended_at = body.get("ended_at")
        try:
            trace_id = self.store.create_trace(
                agent_name=str(body["agent_id"]),
                name=str(body["name"]),
                status=str(body["status"]),
                started_at=str(body["started_at"]),
                ended_at=ended_at if isinstance(ended_at, str) else None,
                metadata=to_json_text(body["metadata"]) if "metadata" in body else None,
            )
        except (AgentLimitReached, TraceLimitReached) as exc:
            raise _plan_error(exc) from exc
        return 201, {"trace_id": trace_id}

    def patch_trace(self, trace_id: str, raw_body: bytes) -> WriteAnswer:
        """`PATCH /api/v1/traces/:id`: set its status and/or end → `200 {"trace_id"}`;
        metadata is ignored.

        Raises:
            ApiError: no such trace (404, before any complaint about the body), invalid
                fields or none to update (400).
            BodyError: the body is not a JSON object.
        """
        try:
            body = parse_body(raw_body)
            _raise_if_invalid(patch_errors(body))
            status, ended_at = body.get("status"), body.get("ended_at")
            if not isinstance(status, str) and not isinstance(ended_at, str):
                raise ApiError(400, {"error": "No fields to update"})
        except (ApiError, BodyError):
            self._require_trace(trace_id)
            raise
        updated = self.store.update_trace(
            trace_id,
            status=status if isinstance(status, str) else None,
            ended_at=ended_at if isinstance(ended_at, str) else None,
        )
        if not updated:
            raise ApiError(404, TRACE_NOT_FOUND)
        return 200, {"trace_id": trace_id}

    def post_span(self, trace_id: str, raw_body: bytes) -> WriteAnswer:
        """`POST /api/v1/traces/:id/spans`: store the span → `201 {"span_id"}` (the parent
        is not checked).

        Raises:
            ApiError: no such trace (404, before any complaint about the body) or invalid
                fields (400).
            BodyError: the body is not a JSON object.
        """
        try:
            body = parse_body(raw_body)
            _raise_if_invalid(span_errors(body))
        except (ApiError, BodyError):
            self._require_trace(trace_id)
            raise
        parent, ended_at = body.get("parent_span_id"), body.get("ended_at")
        span = SpanRow(
            id=new_id(),
            name=str(body["name"]),
            parent_span_id=parent if isinstance(parent, str) else None,
            status=str(body["status"]),
            started_at=str(body["started_at"]),
            ended_at=ended_at if isinstance(ended_at, str) else None,
            input=to_json_text(body["input"]) if "input" in body else None,
            output=to_json_text(body["output"]) if "output" in body else None,
            # The service stores `String(error)`: a JSON null comes back as "null".
            error=js_string(body["error"]) if "error" in body else None,
        )
        if not self.store.create_span(trace_id, span):
            raise ApiError(404, TRACE_NOT_FOUND)
        return 201, {"span_id": span.id}

    def _require_trace(self, trace_id: str) -> None:
        if not self.store.trace_exists(trace_id):
            raise ApiError(404, TRACE_NOT_FOUND)

    async def create_trace(self, request: Request) -> Response:
        """`POST /api/v1/traces` (`post_trace`)."""
        return _json_answer(self.post_trace(await request.body()))

    async def update_trace(self, request: Request) -> Response:
        """`PATCH /api/v1/traces/:id` (`patch_trace`)."""
        trace_id = str(request.path_params["trace_id"])
        return _json_answer(self.patch_trace(trace_id, await request.body()))

    async def create_span(self, request: Request) -> Response:
        """`POST /api/v1/traces/:id/spans` (`post_span`)."""
        trace_id = str(request.path_params["trace_id"])
        return _json_answer(self.post_span(trace_id, await request.body()))

    async def list_traces(self, request: Request) -> Response:
        """`GET /api/v1/traces` → a bare array, newest first, with `X-Total-Count`."""
        query = dict(request.query_params)
        _raise_if_invalid(list_query_errors(query), INVALID_QUERY)
        status = query.get("status")
        page_filter = TraceFilter(
            agent_name=query.get("agent_id"),
            statuses=LIST_STATUS_GROUPS[status] if status else None,
            since=query.get("since"),
            until=query.get("until"),
            after=query.get("after"),
            limit=list_limit(query),
        )
        try:
            rows, total = self.store.list_traces(page_filter)
        except CursorNotFound as exc:
            raise ApiError(400, {"error": "Invalid cursor: trace not found"}) from exc
        return JSONResponse(
            [trace_json(row) for row in rows], headers={TOTAL_COUNT_HEADER: str(total)}
        )

    async def get_trace(self, request: Request) -> Response:
        """`GET /api/v1/traces/:id` → the trace and its spans ordered by `started_at`."""
        found = self.store.get_trace(str(request.path_params["trace_id"]))
        if found is None:
            raise ApiError(404, TRACE_NOT_FOUND)
        row, spans = found
        return JSONResponse({**trace_json(row), "spans": [span_json(span) for span in spans]})

    async def ingest_otlp(self, request: Request) -> Response:
        """`POST /v1/traces` (OTLP/HTTP JSON) → `200 {}`."""
        body = parse_body(await request.body())
        resources = parse_export_request(body, datetime.now(timezone.utc))
        try:
            self.store.ingest_otlp(resources)
        except (AgentLimitReached, TraceLimitReached) as exc:
            raise _plan_error(exc) from exc
        return JSONResponse({})
