"""The Bedrock client's timestamp parser: botocore's instants, without dateutil's cost."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

import pytest
from botocore.parsers import EventStreamJSONParser
from botocore.utils import parse_timestamp as botocore_parse_timestamp

from nexus_bedrock_tasks.bedrock import events
from nexus_bedrock_tasks.bedrock.client import make_client, parse_timestamp
from tests.local_bedrock.emulator_helpers import RECORDINGS

VALUES: list[Any] = [
    "2025-08-26T05:44:17.996697543Z",  # Bedrock's nanoseconds
    "2025-08-11T03:37:27Z",
    "2025-08-11T03:37:27.5+02:00",
    "2025-08-11T03:37:27.5",  # no zone: botocore decides
    "1700000000",
    1700000000.5,
    "Tue, 26 Nov 2026 04:00:00 GMT",
]


@pytest.mark.parametrize("value", VALUES)
def test_same_instant_as_botocore(value: Any) -> None:
    ours, theirs = parse_timestamp(value), botocore_parse_timestamp(value)
    assert ours == theirs
    assert (ours.tzinfo is None) == (theirs.tzinfo is None)


def _events(body: bytes, timestamp_parser: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    monkeypatch.setattr(
        events, "EventStreamJSONParser", lambda: EventStreamJSONParser(timestamp_parser)
    )
    return list(events.decode_completion(body))


@pytest.mark.parametrize("recording", sorted(RECORDINGS.glob("*.eventstream")), ids=str)
def test_recordings_decode_to_the_same_events(
    recording: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = recording.read_bytes()
    stock = _events(body, botocore_parse_timestamp, monkeypatch)
    fast = _events(body, parse_timestamp, monkeypatch)
    assert fast == stock and len(stock) > 0


def test_clients_parse_event_times_with_it(
    emulator_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    client = make_client(region="us-east-1", endpoint_url=emulator_url)
    try:
        response = client.invoke_agent(
            agentId="DEMO000001",
            agentAliasId="TSTALIASID",
            sessionId=uuid.uuid4().hex,
            inputText="Weather in Paris?",
            enableTrace=True,
        )
        times = [
            event["trace"]["eventTime"]
            for event in response["completion"]
            if "trace" in event and "eventTime" in event["trace"]
        ]
    finally:
        client.close()
    assert times and all(isinstance(t, datetime) for t in times)
    # fromisoformat's UTC, not dateutil's tzlocal()/tzutc(): the fast path parsed them.
    assert all(t.tzinfo is timezone.utc for t in times)
