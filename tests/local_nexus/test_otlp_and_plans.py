"""OTLP/HTTP JSON ingest and the free-plan emulation (403 agent limit, 429 monthly limit)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from nexus_bedrock_tasks.local.nexus.store import TraceFilter
from nexus_bedrock_tasks.local.nexus.testing import LocalNexus, run_local_nexus
from tests.local_nexus.conftest import Api, trace_body

BASE_NS = 1_777_636_800_000_000_000  # 2026-05-01T12:00:00Z


def attr(key: str, **value: Any) -> dict[str, Any]:
    return {"key": key, "value": value}


def otel_span(trace: str, span: str, name: str, parent: str = "", **extra: Any) -> dict[str, Any]:
    start = BASE_NS + int(span, 16) * 1_000_000
    return {
        "traceId": trace,
        "spanId": span,
        "parentSpanId": parent,
        "name": name,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 2_500_000),
        **extra,
    }


def export(service: str | None, spans: list[dict[str, Any]]) -> dict[str, Any]:
    resource = {"attributes": [attr("service.name", stringValue=service)]} if service else {}
    return {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]}


def post_otlp(nexus: LocalNexus, body: Any) -> httpx.Response:
    with httpx.Client(base_url=nexus.url, trust_env=False) as http:
        return http.post("/v1/traces", json=body, headers={"x-api-key": nexus.api_key})


def test_one_trace_per_otel_trace_id_with_parent_links(
    shared_nexus: LocalNexus, api: Api, agent: str
) -> None:
    spans = [
        otel_span(
            "aa" * 16,
            "0000000000000001",
            "invoke: hello",
            parent="0000000000000000",
            attributes=[attr("session.id", stringValue="s-9"), attr("turn", intValue=2)],
        ),
        otel_span(
            "aa" * 16,
            "0000000000000002",
            "llm:orchestration",
            parent="0000000000000001",
            attributes=[
                attr("tokens", intValue="120"),
                attr("ratio", doubleValue=0.5),
                attr("cached", boolValue=False),
                attr("tags", arrayValue={"values": []}),
            ],
        ),
        otel_span(
            "aa" * 16,
            "0000000000000003",
            "action:calc.add",
            parent="0000000000000002",
            status={"code": 2, "message": "lambda timed out"},
        ),
        otel_span("bb" * 16, "0000000000000004", "invoke: second"),
    ]
    response = post_otlp(shared_nexus, export(agent, spans))
    assert (response.status_code, response.json()) == (200, {})

    rows = api.http.get("/api/v1/traces", params={"agent_id": agent}).json()
    assert [row["span_count"] for row in rows] == [1, 3]
    first = api.detail(rows[1]["id"])
    assert first["status"] == "success"
    assert first["metadata"] == {"session.id": "s-9", "turn": "2"}
    assert (first["started_at"], first["ended_at"]) == (
        "2026-05-01T12:00:00.001Z",
        "2026-05-01T12:00:00.003Z",
    )
    root, llm, action = first["spans"]
    assert (root["name"], root["parent_span_id"]) == ("invoke: hello", None)
    assert (llm["name"], llm["parent_span_id"]) == ("llm:orchestration", root["id"])
    assert llm["input"] == {"tokens": "120", "ratio": "0.5", "cached": "false"}
    assert llm["output"] is None and llm["status"] == "ok"
    assert (action["parent_span_id"], action["status"], action["error"]) == (
        llm["id"],
        "error",
        "lambda timed out",
    )
    stored = shared_nexus.store.get_trace(rows[1]["id"])
    assert stored is not None and stored[0].name == "invoke: hello"


def test_root_error_status_fails_the_trace_and_names_the_error(
    shared_nexus: LocalNexus, api: Api, agent: str
) -> None:
    root = otel_span("cc" * 16, "0000000000000001", "invoke: x", status={"code": 2})
    post_otlp(shared_nexus, export(agent, [root]))
    (row,) = api.http.get("/api/v1/traces", params={"agent_id": agent}).json()
    assert row["status"] == "error"
    assert api.detail(row["id"])["spans"][0]["error"] == "error"


def test_resource_without_service_name_files_under_unknown(shared_nexus: LocalNexus) -> None:
    post_otlp(shared_nexus, export(None, [otel_span("dd" * 16, "0000000000000001", "x")]))
    assert "unknown" in shared_nexus.store.agent_names()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "Missing resourceSpans array"),
        ({"resourceSpans": {}}, "Missing resourceSpans array"),
        (
            export("svc", [{**otel_span("ee" * 16, "01", "x"), "startTimeUnixNano": "soon"}]),
            "Invalid time in unix nanoseconds: 'soon'",
        ),
    ],
)
def test_bad_export_requests_are_400(shared_nexus: LocalNexus, body: Any, message: str) -> None:
    response = post_otlp(shared_nexus, body)
    assert (response.status_code, response.json()) == (400, {"error": message})


def test_agent_limit_is_403_with_upgrade_url() -> None:
    with run_local_nexus(max_agents=1) as nexus, Api(nexus) as api:
        api.new_trace("bedrock-agent")
        invalid = api.http.post("/api/v1/traces", json=trace_body("other", started_at="x"))
        assert invalid.status_code == 400  # validation comes before plan limits
        response = api.http.post("/api/v1/traces", json=trace_body("other"))
        assert response.status_code == 403
        assert response.json() == {
            "error": "Free plan limited to 1 agent",
            "upgrade_url": "/dashboard/billing",
        }
        api.new_trace("bedrock-agent")  # the existing agent keeps working
        otlp = post_otlp(nexus, export("otel-svc", [otel_span("ff" * 16, "01", "x")]))
        assert otlp.status_code == 403


def test_monthly_limit_is_429_without_retry_after() -> None:
    with run_local_nexus(monthly_trace_limit=2) as nexus, Api(nexus) as api:
        api.new_trace("a", started_ms=0)
        api.new_trace("a", started_ms=-40 * 86_400_000)  # back-dated traces count too
        response = api.http.post("/api/v1/traces", json=trace_body("a"))
        assert response.status_code == 429
        assert "Retry-After" not in response.headers
        assert response.json() == {
            "error": "Monthly trace limit reached",
            "limit": 2,
            "current": 2,
            "upgrade_url": "/dashboard/billing",
        }
        otlp = post_otlp(nexus, export("a", [otel_span("ab" * 16, "01", "x")]))
        assert otlp.status_code == 429


def test_otlp_drops_traces_past_the_monthly_limit() -> None:
    with run_local_nexus(monthly_trace_limit=1) as nexus:
        spans = [otel_span("a1" * 16, "01", "kept"), otel_span("b2" * 16, "02", "dropped")]
        response = post_otlp(nexus, export("svc", spans))
        assert (response.status_code, response.json()) == (200, {})
        rows, total = nexus.store.list_traces(TraceFilter())
        assert total == 1 and rows[0].name == "kept"
