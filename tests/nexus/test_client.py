"""NexusClient against the fake Nexus: wire format, typed errors, retries, no duplicates."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from nexus_bedrock_tasks.exceptions import (
    NexusAuthError,
    NexusNotFoundError,
    NexusQuotaError,
    NexusValidationError,
)
from nexus_bedrock_tasks.nexus.client import (
    NexusClient,
    NexusUnavailableError,
    TracePage,
    parse_retry_after,
)
from nexus_bedrock_tasks.nexus.records import SpanRecord, TraceRecord
from nexus_bedrock_tasks.settings import NexusSettings
from tests.nexus.conftest import BASE_URL, T0, Sleeps
from tests.nexus.fake_nexus import API_KEY, FakeNexus

MakeClient = Callable[..., NexusClient]


def recording(
    handler: Callable[[httpx.Request], httpx.Response], seen: list[httpx.Request]
) -> httpx.MockTransport:
    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return httpx.MockTransport(record)


def test_create_trace_sends_the_documented_body(fake: FakeNexus, make_client: MakeClient) -> None:
    seen: list[httpx.Request] = []
    client = make_client(transport=recording(fake.handle, seen))
    trace = TraceRecord("invoke: hi", "bedrock-agent", T0, metadata={"turn": 2, "at": T0})

    trace_id = client.create_trace(trace)

    body = json.loads(seen[0].content)
    assert seen[0].url == f"{BASE_URL}/api/v1/traces"
    assert seen[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert body == {
        "agent_id": "bedrock-agent",
        "name": "invoke: hi",
        "status": "running",
        "started_at": "2025-05-01T12:00:00.000Z",
        "metadata": {"turn": 2, "at": str(T0), "nexus_bedrock_trace_id": trace.local_id},
    }
    assert fake.traces[trace_id]["metadata"]["nexus_bedrock_trace_id"] == trace.local_id


def test_create_span_sends_redacted_truncated_json_strings(
    fake: FakeNexus, make_client: MakeClient
) -> None:
    settings = NexusSettings(api_key=API_KEY, base_url=BASE_URL, max_payload_chars=300)
    seen: list[httpx.Request] = []
    client = make_client(settings=settings, transport=recording(fake.handle, seen))
    trace_id = client.create_trace(TraceRecord("t", "a", T0))
    span = SpanRecord(
        "llm:orchestration",
        T0,
        T0 + timedelta(seconds=1),
        input={"prompt": "hi", "key": "AKIAIOSFODNN7EXAMPLE"},
        output="x" * 1000,
        error="plain text",
    )

    span_id = client.create_span(trace_id, span, parent_span_id="s-parent")

    body = json.loads(seen[-1].content)
    assert body["input"] == '{"prompt": "hi", "key": "[REDACTED]"}'
    assert len(body["output"]) == 300 and body["output"].endswith("[truncated, 1000 chars]")
    assert body["error"] == "plain text"
    assert body["parent_span_id"] == "s-parent"
    assert body["ended_at"] == "2025-05-01T12:00:01.000Z"
    assert fake.spans[trace_id][0]["id"] == span_id


def test_root_span_has_no_parent_field_and_no_empty_payloads(
    fake: FakeNexus, make_client: MakeClient
) -> None:
    seen: list[httpx.Request] = []
    client = make_client(transport=recording(fake.handle, seen))
    trace_id = client.create_trace(TraceRecord("t", "a", T0))
    client.create_span(trace_id, SpanRecord("summary", T0, None))
    assert json.loads(seen[-1].content) == {
        "name": "summary",
        "status": "ok",
        "started_at": "2025-05-01T12:00:00.000Z",
    }


def test_update_list_and_get(fake: FakeNexus, make_client: MakeClient) -> None:
    client = make_client()
    ids = [
        client.create_trace(TraceRecord(f"t{n}", "a", T0 + timedelta(minutes=n))) for n in range(3)
    ]
    client.create_span(ids[0], SpanRecord("s", T0, T0))

    assert client.update_trace(ids[0], status="error", ended_at=T0) == ids[0]
    page = client.list_traces(agent_id="a", limit=2)
    rest = client.list_traces(agent_id="a", limit=2, after=page.items[-1]["id"])
    detail = client.get_trace(ids[0])

    assert isinstance(page, TracePage) and page.total == 3
    assert [r["id"] for r in page.items + rest.items] == list(reversed(ids))
    assert detail["status"] == "error" and [s["name"] for s in detail["spans"]] == ["s"]
    with pytest.raises(ValueError):
        client.update_trace(ids[0])


@pytest.mark.parametrize(
    ("status", "body", "headers", "error"),
    [
        (401, {"error": "Invalid API key"}, {}, NexusAuthError),
        (403, {"error": "Forbidden"}, {}, NexusAuthError),
        (403, {"error": "Free plan limited to 1 agent", "upgrade_url": "u"}, {}, NexusQuotaError),
        (429, {"error": "Monthly trace limit reached", "limit": 1000}, {}, NexusQuotaError),
        (404, {"error": "Trace not found"}, {}, NexusNotFoundError),
    ],
)
def test_refusals_raise_typed_errors_without_retry(
    make_client: MakeClient,
    sleeps: Sleeps,
    status: int,
    body: dict[str, object],
    headers: dict[str, str],
    error: type[Exception],
) -> None:
    seen: list[httpx.Request] = []
    client = make_client(
        transport=recording(lambda r: httpx.Response(status, json=body, headers=headers), seen)
    )
    with pytest.raises(error, match=str(body["error"])):
        client.create_trace(TraceRecord("t", "a", T0))
    assert len(seen) == 1 and sleeps == []


def test_validation_error_carries_fields(make_client: MakeClient) -> None:
    body = {"error": "Validation failed", "fields": {"status": "must be ok or error"}}
    client = make_client(transport=httpx.MockTransport(lambda r: httpx.Response(400, json=body)))
    with pytest.raises(NexusValidationError) as caught:
        client.create_span("t1", SpanRecord("s", T0, T0))
    assert caught.value.fields == {"status": "must be ok or error"}
    assert caught.value.status_code == 400


def test_server_messages_are_redacted(make_client: MakeClient) -> None:
    body = {"error": f"bad key {API_KEY}"}
    client = make_client(transport=httpx.MockTransport(lambda r: httpx.Response(401, json=body)))
    with pytest.raises(NexusAuthError) as caught:
        client.get_trace("t1")
    assert API_KEY not in str(caught.value)


def test_503_then_success_is_retried_with_jittered_backoff(
    fake: FakeNexus, make_client: MakeClient, sleeps: Sleeps
) -> None:
    fake.fail_503 = 3
    trace_id = make_client().create_trace(TraceRecord("t", "a", T0))
    assert trace_id in fake.traces
    assert len(sleeps) == 3 and all(0 <= s <= 8 for s in sleeps)


def test_retry_after_is_honoured(fake: FakeNexus, make_client: MakeClient, sleeps: Sleeps) -> None:
    answers = iter([httpx.Response(429, headers={"Retry-After": "2"}, json={"error": "slow"})])

    def handler(request: httpx.Request) -> httpx.Response:
        return next(answers, None) or fake.handle(request)

    make_client(transport=httpx.MockTransport(handler)).create_trace(TraceRecord("t", "a", T0))
    assert sleeps == [2.0]


def test_retry_after_beyond_the_bound_gives_up_at_once(make_client: MakeClient) -> None:
    answer = httpx.Response(429, headers={"Retry-After": "3600"}, json={"error": "later"})
    seen: list[httpx.Request] = []
    client = make_client(transport=recording(lambda r: answer, seen))
    with pytest.raises(NexusUnavailableError) as caught:
        client.create_trace(TraceRecord("t", "a", T0))
    assert caught.value.retry_after == 3600 and len(seen) == 1


def test_retries_are_bounded(fake: FakeNexus, make_client: MakeClient, sleeps: Sleeps) -> None:
    fake.down = True
    with pytest.raises(NexusUnavailableError) as caught:
        make_client().create_trace(TraceRecord("t", "a", T0))
    assert len(sleeps) == 3  # settings.max_retries
    assert caught.value.maybe_sent is False  # connect errors: nothing went out


def test_lost_answer_is_looked_up_instead_of_posted_twice(
    fake: FakeNexus, make_client: MakeClient
) -> None:
    client = make_client()
    fake.reset_after_store = 1
    trace = TraceRecord("t", "a", T0)
    trace_id = client.create_trace(trace)
    fake.reset_after_store = 1
    span = SpanRecord("s", T0, T0 + timedelta(seconds=1))
    span_id = client.create_span(trace_id, span)

    assert list(fake.traces) == [trace_id]
    assert [s["id"] for s in fake.spans[trace_id]] == [span_id]


def test_lookup_ignores_look_alike_spans_already_mapped(
    fake: FakeNexus, make_client: MakeClient
) -> None:
    client = make_client()
    trace_id = client.create_trace(TraceRecord("t", "a", T0))
    span = SpanRecord("s", T0, T0)
    first = client.create_span(trace_id, span)
    assert client.find_span(trace_id, span) == first
    assert client.find_span(trace_id, span, exclude_ids={first}) is None


def test_find_trace_pages_through_newer_traces(fake: FakeNexus, make_client: MakeClient) -> None:
    client = make_client()
    target = TraceRecord("old", "a", T0)
    wanted = client.create_trace(target)
    for n in range(250):
        client.create_trace(TraceRecord(f"new{n}", "a", T0 + timedelta(seconds=n + 1)))
    assert client.find_trace(target) == wanted
    assert client.find_trace(TraceRecord("never", "a", T0)) is None


def test_parse_retry_after() -> None:
    later = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert parse_retry_after("7") == 7.0
    assert 25 < (parse_retry_after(format_datetime(later, usegmt=True)) or 0) <= 30
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_client_without_key_sends_no_authorization(fake: FakeNexus) -> None:
    with NexusClient(NexusSettings(base_url=BASE_URL), transport=fake.transport()) as client:
        with pytest.raises(NexusAuthError):
            client.list_traces()


@pytest.mark.parametrize(
    ("base_url", "verified"), [("https://nexus.example", True), ("http://127.0.0.1:8765", False)]
)
def test_https_is_always_verified_and_plain_http_loads_no_ca_bundle(
    base_url: str, verified: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)

    from nexus_bedrock_tasks.nexus.redact import Redactor
    from nexus_bedrock_tasks.nexus.wire import NexusWire

    wire = NexusWire(
        NexusSettings(base_url=base_url, api_key="nxs_test_key_123"), base_url, None, Redactor()
    )
    context = wire._http._transport._pool._ssl_context  # type: ignore[attr-defined]
    assert (context.verify_mode == ssl.CERT_REQUIRED) is verified
    assert context.check_hostname is verified
    # The write path shares that verified context; over plain http it has none to load.
    assert wire._writes is not None
    assert wire._writes._ssl_context is (context if verified else None)
    wire.close()
