"""httpx client for exactly the Nexus REST API of ../shared/NEXUS_API.md.

Retry layer: transient failures (connect errors, timeouts, 5xx, 429 with ``Retry-After``)
are retried here, by tenacity in `wire.NexusWire`; everything else is translated into the
typed errors of `nexus_bedrock_tasks.exceptions` and never retried. The exporter does not
retry requests; it only redelivers what is still spooled after the client gave up.

A POST whose outcome is unknown (the connection broke after the request went out) is never
simply re-sent: the next attempt first looks the item up and only posts when Nexus lacks it.

Example:
    >>> with NexusClient(base_url="http://127.0.0.1:8787", api_key="nxs_local") as client:
    ...     trace_id = client.create_trace(TraceRecord("invoke: hi", "bedrock-agent", utcnow()))
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from nexus_bedrock_tasks.exceptions import NexusError
from nexus_bedrock_tasks.nexus.records import SpanRecord, TraceRecord, iso
from nexus_bedrock_tasks.nexus.redact import Redactor, payload_text
from nexus_bedrock_tasks.nexus.wire import (
    NexusUnavailableError,
    NexusWire,
    TransientError,
    id_from,
    json_of,
    parse_retry_after,
)
from nexus_bedrock_tasks.semconv import TraceStatus
from nexus_bedrock_tasks.settings import NexusSettings

__all__ = [
    "TRACE_LOCAL_ID_KEY",
    "NexusClient",
    "NexusUnavailableError",
    "TracePage",
    "parse_retry_after",
    "parse_time",
]

TRACE_LOCAL_ID_KEY = "nexus_bedrock_trace_id"
"""Trace metadata key holding the local trace id: how a trace is found again (dedup)."""
LOOKUP_PAGE_SIZE = 200
LOOKUP_MAX_PAGES = 25


@dataclass(frozen=True, slots=True)
class TracePage:
    """One page of `GET /api/v1/traces`: rows newest first, `X-Total-Count` when sent."""

    items: list[dict[str, Any]]
    total: int | None


def parse_time(value: object) -> datetime | None:
    """A datetime from an ISO-8601 string as Nexus returns it, or None."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _same_time(value: object, ts: datetime | None) -> bool:
    parsed = parse_time(value)
    if ts is None or parsed is None:
        return ts is None and parsed is None
    return iso(parsed) == iso(ts)


class NexusClient:
    """Typed, retrying client of one Nexus service.

    Args:
        settings: connection settings; `NexusSettings()` (the environment) when None.
        base_url: overrides `settings.base_url`.
        api_key: overrides `settings.api_key`.
        transport: an httpx transport (tests pass `httpx.MockTransport`).
        sleep: how the retry loop waits (tests pass a recorder, so nothing sleeps).

    Raises (from every call):
        NexusAuthError: 401, or 403 other than a plan limit.
        NexusQuotaError: a plan limit (403 agent limit, 429 without ``Retry-After``).
        NexusValidationError: 400 (and 413/422), with the server's per-field messages.
        NexusNotFoundError: 404.
        NexusError: any other 4xx, or an answer that is not the documented JSON.
        NexusUnavailableError: transient failures that outlasted the retries.
    """

    def __init__(
        self,
        settings: NexusSettings | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else NexusSettings()
        if api_key is None and self.settings.api_key is not None:
            api_key = self.settings.api_key.get_secret_value()
        self.base_url = (base_url or self.settings.base_url).rstrip("/")
        self.redactor = Redactor(self.settings.redact_patterns, secrets=[api_key or ""])
        self._wire = NexusWire(
            self.settings, self.base_url, api_key, self.redactor, transport=transport, sleep=sleep
        )

    # -- the API -------------------------------------------------------------------------

    def create_trace(self, trace: TraceRecord) -> str:
        """``POST /api/v1/traces``; returns the Nexus trace id.

        The local id travels in ``metadata.nexus_bedrock_trace_id``, which is how
        `find_trace` recognises the trace after a lost answer.
        """
        metadata = self.redactor.redact_value(dict(trace.metadata))
        metadata[TRACE_LOCAL_ID_KEY] = trace.local_id
        body: dict[str, Any] = {
            "agent_id": trace.agent_name,
            "name": self.redactor.redact(trace.name),
            "status": trace.status,
            "started_at": iso(trace.started_at),
            "metadata": metadata,
        }
        if trace.ended_at is not None:
            body["ended_at"] = iso(trace.ended_at)
        return self._create("/api/v1/traces", body, "trace_id", lambda: self.find_trace(trace))

    def update_trace(
        self, trace_id: str, *, status: TraceStatus | None = None, ended_at: datetime | None = None
    ) -> str:
        """``PATCH /api/v1/traces/:id`` (status and/or end; Nexus ignores metadata here)."""
        body: dict[str, Any] = {}
        if status is not None:
            body["status"] = status
        if ended_at is not None:
            body["ended_at"] = iso(ended_at)
        if not body:
            raise ValueError("update_trace needs a status or an ended_at")
        response = self._wire.retry(
            lambda: self._wire.send("PATCH", f"/api/v1/traces/{trace_id}", body)
        )
        return id_from(response, "trace_id")

    def create_span(
        self, trace_id: str, span: SpanRecord, parent_span_id: str | None = None
    ) -> str:
        """``POST /api/v1/traces/:id/spans`` of one complete span; returns the Nexus span id.

        Input, output and error go as redacted JSON strings of at most
        ``settings.max_payload_chars`` characters.
        """
        limit = self.settings.max_payload_chars
        body: dict[str, Any] = {
            "name": span.name,
            "status": span.status,
            "started_at": iso(span.started_at),
        }
        if span.ended_at is not None:
            body["ended_at"] = iso(span.ended_at)
        if parent_span_id is not None:
            body["parent_span_id"] = parent_span_id
        for key in ("input", "output", "error"):
            text = payload_text(getattr(span, key), self.redactor, limit)
            if text is not None:
                body[key] = text
        return self.post_span(
            trace_id, body, lambda: self.find_span(trace_id, span, parent_span_id)
        )

    def post_span(
        self, trace_id: str, body: dict[str, Any], lookup: Callable[[], str | None]
    ) -> str:
        """``POST /api/v1/traces/:id/spans`` of a body already in wire form; the span id.

        For the exporter, whose spooled spans are redacted, truncated and time-stamped
        already (`create_span` would only do that work again on every delivery).

        Args:
            trace_id: the Nexus trace.
            body: the request body, sent as it is.
            lookup: finds the span in Nexus (or None) when an earlier attempt may have
                stored it, so a lost answer never makes a duplicate.
        """
        return self._create(f"/api/v1/traces/{trace_id}/spans", body, "span_id", lookup)

    def list_traces(
        self,
        *,
        agent_id: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> TracePage:
        """``GET /api/v1/traces``: one page, newest first; `after` is the last id seen."""
        params: dict[str, str] = {"limit": str(limit)}
        if agent_id is not None:
            params["agent_id"] = agent_id
        if status is not None:
            params["status"] = status
        if since is not None:
            params["since"] = iso(since)
        if until is not None:
            params["until"] = iso(until)
        if after is not None:
            params["after"] = after
        response = self._wire.retry(lambda: self._wire.send("GET", "/api/v1/traces", params=params))
        items = json_of(response)
        if not isinstance(items, list):
            raise NexusError(response.status_code, "trace list is not a JSON array")
        total = response.header("X-Total-Count")
        return TracePage(items=items, total=int(total) if total and total.isdigit() else None)

    def get_trace(self, trace_id: str) -> dict[str, Any]:
        """``GET /api/v1/traces/:id``: the trace row plus its ``spans``."""
        response = self._wire.retry(lambda: self._wire.send("GET", f"/api/v1/traces/{trace_id}"))
        detail = json_of(response)
        if not isinstance(detail, dict):
            raise NexusError(response.status_code, "trace detail is not a JSON object")
        return detail

    # -- finding items whose POST answer was lost ----------------------------------------

    def find_trace(self, trace: TraceRecord) -> str | None:
        """The Nexus id of a trace posted earlier from `trace`, or None if Nexus lacks it."""
        after: str | None = None
        # One second of slack: `since` may be exclusive or compare at a coarser precision.
        since = trace.started_at - timedelta(seconds=1)
        for _ in range(LOOKUP_MAX_PAGES):
            page = self.list_traces(
                agent_id=trace.agent_name, since=since, limit=LOOKUP_PAGE_SIZE, after=after
            )
            for row in page.items:
                metadata = row.get("metadata")
                if isinstance(metadata, str):
                    try:
                        metadata = json.loads(metadata)
                    except ValueError:
                        continue
                if isinstance(metadata, dict) and metadata.get(TRACE_LOCAL_ID_KEY) == (
                    trace.local_id
                ):
                    return str(row["id"])
            if len(page.items) < LOOKUP_PAGE_SIZE:
                return None
            after = str(page.items[-1]["id"])
        return None

    def find_span(
        self,
        trace_id: str,
        span: SpanRecord,
        parent_span_id: str | None = None,
        *,
        exclude_ids: Collection[str] = (),
    ) -> str | None:
        """The Nexus id of a span posted earlier from `span`, or None if Nexus lacks it.

        Matches name, parent, start and end; `exclude_ids` are ids already known to
        belong to other local spans, so two look-alike spans never claim the same row.
        """
        for row in self.get_trace(trace_id).get("spans") or []:
            if (
                isinstance(row, dict)
                and row.get("name") == span.name
                and (row.get("parent_span_id") or None) == parent_span_id
                and _same_time(row.get("started_at"), span.started_at)
                and _same_time(row.get("ended_at"), span.ended_at)
                and str(row.get("id")) not in exclude_ids
            ):
                return str(row["id"])
        return None

    def close(self) -> None:
        """Close the connection pool."""
        self._wire.close()

    def __enter__(self) -> NexusClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------

    def _create(
        self, path: str, body: dict[str, Any], id_key: str, lookup: Callable[[], str | None]
    ) -> str:
        maybe_sent = False

        def attempt() -> str:
            nonlocal maybe_sent
            if maybe_sent:
                try:
                    found = lookup()
                except NexusUnavailableError as exc:
                    raise NexusUnavailableError(
                        exc.message, status_code=exc.status_code, maybe_sent=True
                    ) from exc
                if found is not None:
                    return found
            try:
                return id_from(self._wire.send("POST", path, body), id_key)
            except TransientError as exc:
                maybe_sent = maybe_sent or exc.sent
                raise

        try:
            return self._wire.retry(attempt)
        except NexusUnavailableError as exc:
            exc.maybe_sent = exc.maybe_sent or maybe_sent
            raise
