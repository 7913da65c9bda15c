"""The exporter posts spooled spans as they are: the same body `create_span` would send."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx

from nexus_bedrock_tasks.nexus.client import NexusClient
from nexus_bedrock_tasks.nexus.delivery import span_body, span_payload
from nexus_bedrock_tasks.nexus.records import SpanRecord
from nexus_bedrock_tasks.settings import NexusSettings
from tests.nexus.conftest import BASE_URL, T0
from tests.nexus.fake_nexus import API_KEY


def recording_client(settings: NexusSettings) -> tuple[NexusClient, list[dict[str, Any]]]:
    bodies: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(201, json={"span_id": f"s{len(bodies)}"})

    return NexusClient(settings, transport=httpx.MockTransport(answer)), bodies


def test_spooled_span_goes_out_as_create_span_would_send_it() -> None:
    settings = NexusSettings(api_key=API_KEY, base_url=BASE_URL, max_payload_chars=300)
    client, bodies = recording_client(settings)
    spans = [
        SpanRecord(
            "llm:orchestration",
            T0 + timedelta(microseconds=123_456),
            T0 + timedelta(seconds=2, microseconds=999_999),
            status="ok",
            input={"api_key": "abcd1234", "prompt": f"use Bearer tok.en-123 and {API_KEY}"},
            output="x" * 1_000,
        ),
        SpanRecord("summary", T0, None, status="error", error={"message": "boom"}),
        SpanRecord("tool:fx", T0, T0, input="aws_secret_access_key=" + "A" * 40),
    ]
    try:
        for span in spans:
            client.create_span("t1", span, parent_span_id="p1")
            payload = span_payload(span, client.redactor, settings.max_payload_chars)
            # Through the outbox's JSON, as a delivery thread reads it back.
            spooled = json.loads(json.dumps(payload))
            client.post_span("t1", span_body(spooled, "p1", client), lambda: None)
    finally:
        client.close()

    direct, spooled_bodies = bodies[0::2], bodies[1::2]
    assert spooled_bodies == direct
    text = json.dumps(bodies)
    for secret in ("abcd1234", "tok.en-123", API_KEY, "A" * 40):
        assert secret not in text
    assert len(direct[0]["output"]) == 300
    assert "input" not in direct[1] and "ended_at" not in direct[1]


def test_a_payload_that_is_not_text_is_still_redacted() -> None:
    """An outbox row written by other means (not a string payload) is not sent raw."""
    settings = NexusSettings(api_key=API_KEY, base_url=BASE_URL)
    client, _ = recording_client(settings)
    try:
        body = span_body(
            {
                "name": "tool:x",
                "status": "ok",
                "started_at": "2025-05-01T12:00:00.000Z",
                "input": {"password": "hunter2", "n": 1},
            },
            None,
            client,
        )
    finally:
        client.close()
    assert json.loads(body["input"]) == {"password": "[REDACTED]", "n": 1}
    assert "parent_span_id" not in body and "ended_at" not in body
