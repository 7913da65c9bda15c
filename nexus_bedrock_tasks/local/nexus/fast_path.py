"""`FastWrites`: the local Nexus's write routes served straight from ASGI.

An exporter sends thousands of writes a second, and through FastAPI and Starlette (error
and exception middleware, the router, request and response objects) a span POST cost
the server about as much again as its own work. `FastWrites` sits in front of the app
and serves these requests itself::

    POST  /api/v1/traces
    PATCH /api/v1/traces/{trace_id}
    POST  /api/v1/traces/{trace_id}/spans

with the routes' path patterns, the same key check, the same handlers (`NexusApi.post_trace`,
`patch_trace`, `post_span`) and the same error bodies, so every answer is byte for byte the
framework's. Every other request (other methods or paths, the web page, `/health`, OTLP,
`/_faults`, lifespan events) goes to the app as before. Fault injection, when on, wraps
`FastWrites` (see `app.create_app`), so it applies to these routes as to the others.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Final

from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from nexus_bedrock_tasks.local.nexus.api import (
    INVALID_API_KEY,
    SPANS_PATH,
    TRACE_PATH,
    TRACES_PATH,
    ApiError,
    NexusApi,
    WriteAnswer,
    error_answer,
    first_header,
    render_json,
)
from nexus_bedrock_tasks.local.nexus.validation import BodyError

# A status and its JSON body.
Answer = tuple[int, bytes]
# A write route's handler, its path's trace id bound: raw body → its answer; raises
# `ApiError` or `BodyError`.
Route = Callable[[bytes], WriteAnswer]


def _route_pattern(path: str) -> re.Pattern[str]:
    """The regular expression Starlette's `Route` matches `path` with."""
    pattern, _format, _convertors = compile_path(path)
    return pattern


_TRACES: Final = _route_pattern(TRACES_PATH)
_TRACE: Final = _route_pattern(TRACE_PATH)
_SPANS: Final = _route_pattern(SPANS_PATH)
_JSON_CONTENT_TYPE: Final = (b"content-type", b"application/json")
_INVALID_API_KEY_BODY: Final = render_json(INVALID_API_KEY)


class FastWrites:
    """ASGI app: answers the write routes itself and passes every other request to `app`.

    Args:
        api: the handlers (and, as `api.keys`, the key check).
        app: where every other request goes (the FastAPI app).
    """

    def __init__(self, api: NexusApi, app: ASGIApp) -> None:
        self.api = api
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A mounted app (a root path) leaves route matching to the framework.
        if scope["type"] == "http" and not scope.get("root_path"):
            route = self.route(scope["method"], scope["path"])
            if route is not None:
                raw_body = await _read_body(receive)
                if raw_body is None:
                    return  # the client left before sending its body: nobody to answer
                authorization = first_header(scope["headers"], b"authorization")
                status, body = self.answer(route, authorization, raw_body)
                length = (b"content-length", str(len(body)).encode("latin-1"))
                headers = [length, _JSON_CONTENT_TYPE]
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def route(self, method: str, path: str) -> Route | None:
        """The handler and trace id of a write route, or `None` for the framework."""
        if not path.startswith(TRACES_PATH):
            return None
        if method == "POST":
            match = _SPANS.match(path)
            if match is not None:
                return partial(self.api.post_span, match["trace_id"])
            if _TRACES.match(path) is not None:
                return self.api.post_trace
        elif method == "PATCH":
            match = _TRACE.match(path)
            if match is not None:
                return partial(self.api.patch_trace, match["trace_id"])
        return None

    def answer(self, route: Route, authorization: bytes | None, raw_body: bytes) -> Answer:
        """Status and JSON body of a write request: the key check, then the handler.

        Sent with the headers of Starlette's `JSONResponse`, in its order: content-length,
        then content-type.
        """
        if not self.api.keys.accepts_authorization(authorization):
            return 401, _INVALID_API_KEY_BODY
        answer: tuple[int, Mapping[str, object]]
        try:
            answer = route(raw_body)
        except (ApiError, BodyError) as exc:
            answer = error_answer(exc)
        status, content = answer
        return status, render_json(content)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or `None` if the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
