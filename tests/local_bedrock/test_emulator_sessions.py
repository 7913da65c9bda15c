"""Sessions: history, endSession, memoryId memory, idle expiry."""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.local_bedrock.emulator_helpers import answer, demo, drain, function_result, steps


def _first_input_tokens(events: list[dict[str, Any]]) -> int:
    tokens: int = steps(events, "orchestrationTrace", "modelInvocationOutput")[0]["metadata"][
        "usage"
    ]["inputTokens"]
    return tokens


def test_history_is_in_the_prompt_and_can_be_recalled(client: Any, session_id: str) -> None:
    fresh = demo(client, f"{session_id}-fresh", "Where is the Mona Lisa?")
    demo(client, session_id, "What should I pack?")
    second = demo(client, session_id, "Where is the Mona Lisa?")

    prompt = steps(second, "orchestrationTrace", "modelInvocationInput")[0]["text"]
    assert "What should I pack?" in prompt
    assert _first_input_tokens(second) > _first_input_tokens(fresh)

    recall = demo(client, session_id, "What did I ask earlier?")
    expected = 'Earlier you asked: "What should I pack?"; "Where is the Mona Lisa?".'
    assert answer(recall) == expected


def test_end_session_forgets_the_history(client: Any, session_id: str) -> None:
    demo(client, session_id, "What should I pack?", endSession=True)

    recall = demo(client, session_id, "What did I ask earlier?")
    assert not answer(recall).startswith("Earlier you asked")


def test_memory_id_carries_questions_into_later_sessions(client: Any, session_id: str) -> None:
    memory_id = f"mem-{session_id}"
    response = client.invoke_agent(
        agentId="DEMO000001",
        agentAliasId="TSTALIASID",
        sessionId=session_id,
        inputText="Tell me about Tokyo neighbourhoods",
        memoryId=memory_id,
        endSession=True,
    )
    assert response["memoryId"] == memory_id
    drain(response)

    later = demo(client, f"{session_id}-2", "Do you remember what I asked?", memoryId=memory_id)
    assert answer(later) == 'Earlier you asked: "Tell me about Tokyo neighbourhoods".'
    system = steps(later, "orchestrationTrace", "modelInvocationInput")[0]["text"]
    assert "Summary of previous sessions" in system

    other = demo(client, f"{session_id}-3", "Do you remember what I asked?", memoryId="other")
    assert not answer(other).startswith("Earlier you asked")


def _short(client: Any, session_id: str, text: str, **kwargs: Any) -> list[dict[str, Any]]:
    return drain(
        client.invoke_agent(
            agentId="SHORTTTL01",
            agentAliasId="TSTALIASID",
            sessionId=session_id,
            inputText=text,
            enableTrace=True,
            **kwargs,
        )
    )


def test_an_idle_session_expires_with_its_pending_return_control(
    test_client: Any, session_id: str
) -> None:
    control = _short(test_client, session_id, "weather in Oslo")[-1]["returnControl"]
    time.sleep(0.4)

    with pytest.raises(ClientError) as caught:
        _short(test_client, session_id, "", sessionState=function_result(control, "Snow"))
    assert caught.value.response["Error"]["Code"] == "ValidationException"


def test_an_expired_session_is_summarised_into_memory(test_client: Any, session_id: str) -> None:
    memory_id = f"mem-{session_id}"
    _short(test_client, session_id, "Hello, I plan a trip", memoryId=memory_id)
    time.sleep(0.4)

    events = _short(test_client, f"{session_id}-2", "What did I ask last time?", memoryId=memory_id)
    assert answer(events) == 'Earlier you asked: "Hello, I plan a trip".'
