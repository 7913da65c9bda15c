"""The OTLP/HTTP JSON copy: same span tree, ids in hex, sent once per finished trace."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx

from nexus_bedrock_tasks.nexus.client import NexusClient
from nexus_bedrock_tasks.nexus.exporter import NexusExporter
from nexus_bedrock_tasks.nexus.otlp import OtlpSender, hex_id, to_otlp, unix_nanos
from nexus_bedrock_tasks.nexus.records import SpanRecord, TraceRecord
from nexus_bedrock_tasks.settings import NexusSettings
from tests.nexus.conftest import BASE_URL, T0, make_tree, spool_tree
from tests.nexus.fake_nexus import API_KEY


def recorder(seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    return httpx.MockTransport(answer)


def test_converter_keeps_the_span_tree() -> None:
    trace, spans = make_tree(spans=2)
    body = to_otlp(trace, spans)

    [resource_spans] = body["resourceSpans"]
    attrs = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
    assert attrs["service.name"] == {"stringValue": "bedrock-agent"}
    assert attrs["nexus.metadata.turn"] == {"intValue": "1"}
    otlp_spans = resource_spans["scopeSpans"][0]["spans"]
    by_name = {s["name"]: s for s in otlp_spans}
    assert len(otlp_spans) == len(spans)
    assert {s["traceId"] for s in otlp_spans} == {trace.local_id}
    for span in spans:
        item = by_name[span.name]
        assert len(item["spanId"]) == 16
        parent = next((p for p in spans if p.local_id == span.parent_local_id), None)
        assert item.get("parentSpanId") == (by_name[parent.name]["spanId"] if parent else None)
    tool = by_name["tool:1"]
    assert {"key": "input.value", "value": {"stringValue": '{"n": 1}'}} in tool["attributes"]


def test_error_status_times_and_foreign_parents() -> None:
    trace = TraceRecord("t", "a", T0, local_id="not-hex")
    span = SpanRecord(
        "failure",
        T0,
        T0 + timedelta(seconds=1),
        status="error",
        error="boom",
        parent_local_id="elsewhere",
    )
    [item] = to_otlp(trace, [span])["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert item["status"] == {"code": 2, "message": "boom"}
    assert "parentSpanId" not in item
    assert item["traceId"] == hex_id("not-hex", 32) and len(item["traceId"]) == 32
    assert int(item["endTimeUnixNano"]) - int(item["startTimeUnixNano"]) == 10**9
    assert unix_nanos(T0) == "1746100800000000000"


def test_key_goes_only_to_the_nexus_host() -> None:
    seen: list[httpx.Request] = []
    transport = recorder(seen)
    trace, spans = make_tree(spans=1)
    for endpoint in (f"{BASE_URL}/v1/traces", "http://collector.example/v1/traces"):
        settings = NexusSettings(api_key=API_KEY, base_url=BASE_URL, otlp_endpoint=endpoint)
        sender = OtlpSender(settings, transport=transport)
        sender.send(trace, spans)
        sender.close()
    assert seen[0].headers.get("x-api-key") == API_KEY
    assert "x-api-key" not in seen[1].headers


def test_exporter_sends_one_otlp_copy_per_finished_trace(
    make_client: Callable[..., NexusClient], outbox_path: Path
) -> None:
    seen: list[httpx.Request] = []
    settings = NexusSettings(
        api_key=API_KEY, base_url=BASE_URL, otlp_endpoint=f"{BASE_URL}/v1/traces"
    )
    sender = OtlpSender(settings, transport=recorder(seen))
    exporter = NexusExporter(settings, outbox_path, client=make_client(), otlp=sender)
    exporter.start()
    trace, spans = make_tree(spans=2)
    spool_tree(exporter, trace, spans)
    assert exporter.close(10) == 0
    [request] = seen
    body = json.loads(request.content)
    otlp_spans = body["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert sorted(s["name"] for s in otlp_spans) == sorted(s.name for s in spans)
    resource = {a["key"]: a["value"] for a in body["resourceSpans"][0]["resource"]["attributes"]}
    assert resource["nexus.trace.status"] == {"stringValue": "success"}
