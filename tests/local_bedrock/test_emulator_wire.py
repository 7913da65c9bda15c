"""The bytes on the wire: event-stream framing, headers and error bodies."""

from __future__ import annotations

import base64
import json
from typing import Any

import botocore.session
import httpx
import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import EventStreamError
from botocore.parsers import EventStreamJSONParser

from nexus_bedrock_tasks.local.bedrock.eventstream import (
    encode_message,
    event_message,
    exception_message,
    split_messages,
)
from tests.local_bedrock.emulator_helpers import RECORDINGS, drain

PATH = "/agents/DEMO000001/agentAliases/TSTALIASID/sessions/{}/text"


def _decode(data: bytes) -> list[Any]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return list(buffer)


def _completion_shape() -> Any:
    model = botocore.session.get_session().get_service_model("bedrock-agent-runtime")
    return model.operation_model("InvokeAgent").output_shape.members["completion"]


def test_messages_decode_with_botocore_and_crcs_are_checked() -> None:
    message = encode_message({":event-type": "chunk", "x": "ü"}, b'{"a":1}')

    [decoded] = _decode(message)
    assert decoded.headers == {":event-type": "chunk", "x": "ü"}
    assert decoded.payload == b'{"a":1}'

    corrupt = bytearray(message)
    corrupt[-6] ^= 0xFF
    with pytest.raises(ChecksumMismatch):
        _decode(bytes(corrupt))


def test_events_and_exceptions_parse_like_aws_ones() -> None:
    parser = EventStreamJSONParser()
    shape = _completion_shape()
    [chunk] = _decode(event_message("chunk", {"bytes": base64.b64encode(b"hi").decode()}))
    assert parser.parse(chunk.to_response_dict(), shape) == {"chunk": {"bytes": b"hi"}}

    [error] = _decode(exception_message("throttlingException", "slow down"))
    response = error.to_response_dict()
    assert error.headers[":message-type"] == "exception"
    parsed = parser.parse(response, shape)
    assert parsed["Error"] == {"Code": "throttlingException", "Message": "slow down"}
    assert isinstance(EventStreamError(parsed, "InvokeAgent"), EventStreamError)


def test_recordings_split_into_their_messages() -> None:
    body = (RECORDINGS / "kb_lookup.eventstream").read_bytes()
    messages = split_messages(body)
    assert b"".join(messages) == body
    assert len(messages) == len(_decode(body))
    with pytest.raises(ValueError, match="trailing bytes"):
        split_messages(body[:-3])


def test_response_headers_and_json_payloads(emulator_url: str, session_id: str) -> None:
    response = httpx.post(
        emulator_url + PATH.format(session_id),
        json={"inputText": "What should I pack?", "enableTrace": True},
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert response.headers["x-amzn-bedrock-agent-content-type"] == "application/json"
    assert response.headers["x-amz-bedrock-agent-session-id"] == session_id
    messages = _decode(response.content)
    for message in messages:
        assert message.headers[":message-type"] == "event"
        assert message.headers[":content-type"] == "application/json"
    kinds = [message.headers[":event-type"] for message in messages]
    assert set(kinds) == {"trace", "chunk"}
    chunk = json.loads(messages[-1].payload)
    assert base64.b64decode(chunk["bytes"]).decode().startswith("When you pack")
    assert list(json.loads(messages[0].payload)) == sorted(json.loads(messages[0].payload))


@pytest.mark.parametrize(
    ("path", "body", "status", "error_type"),
    [
        (
            "/agents/NOAGENT/agentAliases/A/sessions/s-1/text",
            {"inputText": "x"},
            404,
            "ResourceNotFoundException",
        ),
        (PATH.format("s-1"), b"{not json", 400, "ValidationException"),
        (PATH.format("s-1"), {"inputText": ""}, 400, "ValidationException"),
        ("/no/such/operation", {}, 404, "UnknownOperationException"),
    ],
)
def test_errors_before_the_stream_are_aws_json_errors(
    emulator_url: str, path: str, body: Any, status: int, error_type: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(emulator_url + path, content=content)

    assert response.status_code == status
    assert response.headers["x-amzn-errortype"].split(":")[0] == error_type
    assert response.json()["message"]


def test_health_lists_served_agents(emulator_url: str) -> None:
    health = httpx.get(emulator_url + "/_emulator/health").json()
    assert health["status"] == "ok"
    assert "DEMO000001/TSTALIASID" in health["agents"]
    assert "G0OUMYARBX" in health["replay"]


def test_the_plugin_client_talks_to_the_plugin_emulator(bedrock_client: Any) -> None:
    response = bedrock_client.invoke_agent(
        agentId="CHAIN00001",
        agentAliasId="TSTALIASID",
        sessionId="plugin-session",
        inputText="hello",
    )
    events = drain(response)
    assert events[-1]["chunk"]["bytes"].decode() == (
        "I'm chain. I could not find anything that helps with that request."
    )
