"""Replay mode: recorded bodies come back unchanged through stock boto3."""

from __future__ import annotations

import json
from typing import Any

import botocore.session
import pytest
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import EventStreamError
from botocore.parsers import EventStreamJSONParser

from nexus_bedrock_tasks.local.bedrock.testing import set_session_faults
from tests.local_bedrock.emulator_helpers import RECORDINGS, drain

INDEX = json.loads((RECORDINGS / "index.json").read_text())


def _parsed_recording(file: str) -> list[dict[str, Any]]:
    model = botocore.session.get_session().get_service_model("bedrock-agent-runtime")
    shape = model.operation_model("InvokeAgent").output_shape.members["completion"]
    buffer = EventStreamBuffer()
    buffer.add_data((RECORDINGS / file).read_bytes())
    parser = EventStreamJSONParser()
    return [parser.parse(message.to_response_dict(), shape) for message in buffer]


def _ids(entry: dict[str, Any]) -> tuple[str, str]:
    parts = entry["path"].split("/")
    return parts[2], parts[4]


@pytest.mark.parametrize("entry", INDEX, ids=[entry["file"] for entry in INDEX])
def test_recordings_replay_event_for_event(
    client: Any, session_id: str, entry: dict[str, Any]
) -> None:
    agent_id, alias_id = _ids(entry)
    response = client.invoke_agent(
        agentId=agent_id, agentAliasId=alias_id, sessionId=session_id, inputText="anything"
    )
    assert drain(response) == _parsed_recording(entry["file"])


def test_stream_faults_apply_to_replayed_bodies(
    client: Any, emulator_url: str, session_id: str
) -> None:
    set_session_faults(emulator_url, session_id, stream_error_after=2)
    agent_id, alias_id = _ids(INDEX[0])
    response = client.invoke_agent(
        agentId=agent_id, agentAliasId=alias_id, sessionId=session_id, inputText="anything"
    )
    with pytest.raises(EventStreamError):
        drain(response)
