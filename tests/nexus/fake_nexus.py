"""An in-memory Nexus speaking the API of ../shared/NEXUS_API.md, with fault knobs.

One fake for the Nexus boundary: tests reach it through `httpx.MockTransport`
(`transport()`) or over real HTTP (`serve()`), never by mocking the client.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx

API_KEY = "nxs_test_0123456789abcdef"
TRACE_STATUSES = {"running", "success", "error", "timeout"}
SPAN_STATUSES = {"ok", "error"}


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class FakeNexus:
    """Nexus state plus fault knobs (all settable while clients run).

    Knobs:
        down: every request fails to connect.
        fail_503: the next N requests answer 503.
        flap_every: every Nth request answers 503.
        delay: seconds each request takes (before anything is stored).
        reset_after_store: the next N POSTs are stored, then the connection breaks.
        retry_after_429: the next N requests answer 429 with ``Retry-After: 0``.
        reads_503: every GET answers 503 (lookups fail while POSTs work).
        trace_limit: traces accepted before ``429 Monthly trace limit reached``.
        max_payload: span input/output/error longer than this → 400 with fields.
    """

    api_key: str = API_KEY
    down: bool = False
    fail_503: int = 0
    flap_every: int = 0
    delay: float = 0.0
    reset_after_store: int = 0
    retry_after_429: int = 0
    reads_503: bool = False
    trace_limit: int | None = None
    max_payload: int | None = None
    traces: dict[str, dict[str, Any]] = field(default_factory=dict)
    spans: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._requests = itertools.count(1)

    # -- access for assertions -----------------------------------------------------------

    def all_spans(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(s, trace_id=t) for t, spans in self.spans.items() for s in spans]

    def trace_by_local_id(self, local_id: str) -> dict[str, Any] | None:
        with self._lock:
            found = [
                t
                for t in self.traces.values()
                if t["metadata"].get("nexus_bedrock_trace_id") == local_id
            ]
        assert len(found) <= 1, f"trace {local_id} stored {len(found)} times"
        return found[0] if found else None

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no request is being handled (a 'dead' client's last POSTs landed)."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- transports ----------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Serve over real HTTP on a free local port; yields the base URL."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = httpx.Request(
                    self.command,
                    f"http://fake{self.path}",
                    headers=dict(self.headers.items()),
                    content=self.rfile.read(length),
                )
                try:
                    response = fake.handle(request)
                except httpx.TransportError:
                    self.close_connection = True
                    return
                body = response.content
                self.send_response(response.status_code)
                for key, value in response.headers.items():
                    if key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = _any

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join()

    # -- the API -------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.in_flight += 1
        try:
            return self._handle(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handle(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            number = next(self._requests)
            if self.down:
                raise httpx.ConnectError("connection refused", request=request)
            if self.fail_503 > 0:
                self.fail_503 -= 1
                return httpx.Response(503, json={"error": "Service Unavailable"})
            flapped = self.flap_every and number % self.flap_every == 0
            if flapped or (self.reads_503 and request.method == "GET"):
                return httpx.Response(503, json={"error": "Service Unavailable"})
            if self.retry_after_429 > 0:
                self.retry_after_429 -= 1
                return httpx.Response(429, headers={"Retry-After": "0"}, json={"error": "slow"})
        if self.delay:
            time.sleep(self.delay)
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return httpx.Response(401, json={"error": "Invalid API key"})
        path = request.url.path
        with self._lock:
            self.log.append((request.method, path))
            if request.method == "POST" and path == "/api/v1/traces":
                response = self._create_trace(json.loads(request.content))
            elif request.method == "POST" and path.endswith("/spans"):
                response = self._create_span(path.split("/")[4], json.loads(request.content))
            elif request.method == "PATCH":
                response = self._patch(path.split("/")[4], json.loads(request.content))
            elif request.method == "GET" and path == "/api/v1/traces":
                response = self._list(dict(parse_qsl(urlsplit(str(request.url)).query)))
            elif request.method == "GET":
                response = self._get(path.split("/")[4])
            else:
                response = httpx.Response(404, json={"error": "Not found"})
            if request.method == "POST" and response.status_code == 201 and self.reset_after_store:
                self.reset_after_store -= 1
                raise httpx.ReadError("Connection reset by peer", request=request)
        return response

    def _create_trace(self, body: dict[str, Any]) -> httpx.Response:
        fields = {}
        for key in ("agent_id", "name", "started_at"):
            if not isinstance(body.get(key), str):
                fields[key] = "required"
        if body.get("status") not in TRACE_STATUSES:
            fields["status"] = "invalid"
        if fields:
            return httpx.Response(400, json={"error": "Validation failed", "fields": fields})
        if self.trace_limit is not None and len(self.traces) >= self.trace_limit:
            return httpx.Response(
                429,
                json={
                    "error": "Monthly trace limit reached",
                    "limit": self.trace_limit,
                    "current": len(self.traces),
                    "upgrade_url": "https://x/upgrade",
                },
            )
        trace_id = f"t{next(self._ids)}"
        self.traces[trace_id] = {
            "id": trace_id,
            "agent_name": body["agent_id"],
            "name": body["name"],
            "status": body["status"],
            "started_at": body["started_at"],
            "ended_at": body.get("ended_at"),
            "metadata": body.get("metadata") or {},
        }
        self.spans[trace_id] = []
        return httpx.Response(201, json={"trace_id": trace_id})

    def _create_span(self, trace_id: str, body: dict[str, Any]) -> httpx.Response:
        if trace_id not in self.traces:
            return httpx.Response(404, json={"error": "Trace not found"})
        fields = {}
        if body.get("status") not in SPAN_STATUSES:
            fields["status"] = "invalid"
        for key in ("input", "output", "error"):
            value = body.get(key)
            if (
                self.max_payload is not None
                and isinstance(value, str)
                and len(value) > self.max_payload
            ):
                fields[key] = "too long"
        if fields:
            return httpx.Response(400, json={"error": "Validation failed", "fields": fields})
        span_id = f"s{next(self._ids)}"
        row = {"id": span_id, "parent_span_id": body.get("parent_span_id")}
        for key in ("name", "status", "started_at", "ended_at", "input", "output", "error"):
            row[key] = body.get(key)
        self.spans[trace_id].append(row)
        return httpx.Response(201, json={"span_id": span_id})

    def _patch(self, trace_id: str, body: dict[str, Any]) -> httpx.Response:
        if trace_id not in self.traces:
            return httpx.Response(404, json={"error": "Trace not found"})
        update: dict[str, Any] = {k: body[k] for k in ("status", "ended_at") if k in body}
        if not update:
            return httpx.Response(400, json={"error": "No fields to update", "fields": {}})
        self.traces[trace_id].update(update)
        self.traces[trace_id]["patched_after_spans"] = len(self.spans[trace_id])
        return httpx.Response(200, json={"trace_id": trace_id})

    def _row(self, trace: dict[str, Any]) -> dict[str, Any]:
        row = {k: v for k, v in trace.items() if k != "patched_after_spans"}
        row["span_count"] = len(self.spans[trace["id"]])
        row["duration_ms"] = None
        return row

    def _list(self, query: dict[str, str]) -> httpx.Response:
        rows = sorted(self.traces.values(), key=lambda t: _time(t["started_at"]), reverse=True)
        if "agent_id" in query:
            rows = [r for r in rows if r["agent_name"] == query["agent_id"]]
        if "since" in query:
            rows = [r for r in rows if _time(r["started_at"]) >= _time(query["since"])]
        if "until" in query:
            rows = [r for r in rows if _time(r["started_at"]) <= _time(query["until"])]
        total = len(rows)
        if "after" in query:
            ids = [r["id"] for r in rows]
            rows = rows[ids.index(query["after"]) + 1 :] if query["after"] in ids else []
        rows = rows[: int(query.get("limit", "50"))]
        return httpx.Response(
            200, json=[self._row(r) for r in rows], headers={"X-Total-Count": str(total)}
        )

    def _get(self, trace_id: str) -> httpx.Response:
        if trace_id not in self.traces:
            return httpx.Response(404, json={"error": "Trace not found"})
        detail = self._row(self.traces[trace_id])
        detail["spans"] = sorted(self.spans[trace_id], key=lambda s: _time(s["started_at"]))
        return httpx.Response(200, json=detail)
